"""Pictures of a run: the loss curve (train and validation) from its metrics.jsonl."""

from __future__ import annotations

import pathlib

from gpt2_jax.train import metrics as metrics_lib


def plot_loss_curve(run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write train/validation loss (nats/token) against step to a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; notebooks display the PNG or call this on their own axes
    import matplotlib.pyplot as plt

    rows = metrics_lib.read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), float)]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), float)]
    if not train and not val:
        raise ValueError(f"{run_dir}/metrics.jsonl has no loss values yet; train first")
    out = pathlib.Path(out) if out else pathlib.Path(run_dir) / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(pathlib.Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
