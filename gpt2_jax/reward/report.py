"""What a reward run writes beside the loss curve: samples tables (samples.md, one per evaluation,
the policy's completions beside the reference's) and the reward and KL curves (reward_curves.png)."""

from __future__ import annotations

import pathlib

from gpt2_jax.train import metrics as metrics_lib


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " / ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def samples_table(samples: list[dict], reference: list[dict]) -> str:
    """A markdown table: prompt, the policy's completion and reward, the reference's."""
    lines = ["| prompt | policy | reward | reference | reward |", "|---|---|---|---|---|"]
    for s, r in zip(samples, reference):
        lines.append(f"| {_cell(s['prompt'], 60)} | {_cell(s['completion'])} | {s['reward']:.3f} | "
                     f"{_cell(r['completion'])} | {r['reward']:.3f} |")
    return "\n".join(lines)


def append_samples(path: pathlib.Path, title: str, samples: list[dict], reference: list[dict]) -> None:
    """Append one evaluation's samples table to path (created with the run dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(f"## {title}\n\n{samples_table(samples, reference)}\n\n")


def plot_curves(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """reward_curves.png: mean training reward and validation reward (left), KL to the reference (right),
    against step; returns [its path] (nothing when metrics.jsonl holds no reward yet)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics_lib.read_metrics(run_dir)
    series = lambda key: [(r["step"], r[key]) for r in rows if isinstance(r.get(key), float)]
    reward, val_reward, kl, val_kl = (series(k) for k in ("reward_mean", "val_reward", "kl", "val_kl"))
    if not reward and not val_reward:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, train, val, name in ((left, reward, val_reward, "reward"), (right, kl, val_kl, "KL to the reference")):
        if train:
            ax.plot(*zip(*train), label="train (rollouts)", lw=1.2)
        if val:
            ax.plot(*zip(*val), "o-", label="validation prompts", lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel(name + (" (nats per completion)" if name.startswith("KL") else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(pathlib.Path(run_dir).resolve().name)
    fig.tight_layout()
    out = pathlib.Path(run_dir) / "reward_curves.png"
    fig.savefig(out)
    plt.close(fig)
    return [out]
