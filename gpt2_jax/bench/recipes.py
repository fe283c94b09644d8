"""`gpt2-jax bench recipes`: the default run's recipe, the recipe it replaced and nanoGPT's CPU recipe,
back to back on one machine, as held-out bits per byte against wall time.

Every recipe runs as its own subprocess, one after another, on the same prepared byte-level split of
Shakespeare's plays (prepared once before the first, untimed). Each line a run prints is stamped with
the seconds since the run started, so its validation points become a curve of (wall seconds, bits per
byte) that counts start-up, compilation, evaluation and checkpoints as a user waits for them.

nanoGPT (a checkout fetched apart, never part of this project) runs the CPU command of its README for
`shakespeare_char`, unchanged but for the data: our byte tokens written as its `train.bin` /
`val.bin` (uint16 ids, vocabulary 257, EOS between plays). Its loss is nats per token = per byte (the
few EOS aside), so its validation points read as bits per byte; its final checkpoint is scored on our
test split in non-overlapping windows of its context (64), ours in windows of theirs (128).
"""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import re
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from gpt2_jax.data import tokenizers
from gpt2_jax.data import tokens as tokens_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = "shakespeare/plays"
NANOGPT_CPU_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                    "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                    "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
_OURS_EVAL = re.compile(r"^step (\d+)/\d+: val loss [\d.]+, bits/byte ([\d.]+)")
_OURS_FINAL = re.compile(r"^(validation|test \(held out\)): loss [\d.]+ nats/token, .*bits/byte ([\d.]+)")
_NANOGPT_EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")


def recipe_list(out: pathlib.Path, data_dir: str, nanogpt: str | None, eval_every: int) -> list[dict[str, Any]]:
    """The recipes in the order they run: each a name, a kind (gpt2_jax | nanogpt), argv and cwd."""
    def ours(name: str, slug: str, experiment: str) -> dict[str, Any]:
        return {"name": name, "kind": "gpt2_jax", "cwd": str(ROOT), "run_dir": str(out / slug),
                "argv": [sys.executable, "-m", "gpt2_jax.cli", "train", "--config", str(ROOT / "experiments" / experiment),
                         f"--config.data.data_dir={data_dir}", f"--config.train.run_dir={out / slug}",
                         f"--config.train.eval_every={eval_every}"]}
    rows = [ours("gpt2_jax default (Muon, 600 steps)", "default", "default.py"),
            ours("gpt2_jax old default (AdamW, 1,800 steps)", "default_adamw", "default_adamw.py")]
    if nanogpt:
        rows.append({"name": "nanoGPT CPU recipe (README: 4 x 128, 2,000 iters)", "kind": "nanogpt", "cwd": nanogpt,
                     "run_dir": str(out / "nanogpt"),
                     "argv": [sys.executable, "train.py", *NANOGPT_CPU_ARGS, f"--dataset={out / 'nanogpt_data'}",
                              f"--out_dir={out / 'nanogpt'}"]})
    return rows


def prepare_byte_splits(data_dir: str) -> dict[str, tokens_lib.TokenSplit]:
    """The default run's byte-level train / validation / test splits, prepared once in data_dir."""
    tok = tokenizers.make_tokenizer("byte")
    out = {}
    for split in ("train", "validation", "test"):
        path = tokens_lib.prepare_split(SOURCE, split, tok, data_dir, show_progress=False)
        out[split] = tokens_lib.load_split(path, tok)
    return out


def write_nanogpt_data(splits: dict[str, tokens_lib.TokenSplit], folder: pathlib.Path) -> pathlib.Path:
    """Our train and validation byte tokens as nanoGPT's train.bin / val.bin (uint16) + meta.pkl."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.bin"), ("validation", "val.bin")):
        np.asarray(splits[split].tokens[:], dtype=np.uint16).tofile(folder / name)
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 257}, f)
    return folder


def parse_line(kind: str, line: str) -> tuple[str, int | None, float] | None:
    """('val', step, bits per byte) for a validation point, ('validation' | 'test', None, bpb) for a
    final score, or None, from one line a run of `kind` printed."""
    if kind == "nanogpt":
        m = _NANOGPT_EVAL.match(line)
        return ("val", int(m.group(1)), float(m.group(2)) / math.log(2)) if m else None
    m = _OURS_EVAL.match(line)
    if m:
        return "val", int(m.group(1)), float(m.group(2))
    m = _OURS_FINAL.match(line)
    return (("validation" if m.group(1) == "validation" else "test"), None, float(m.group(2))) if m else None


def run_recipe(recipe: dict[str, Any], env: dict[str, str], echo: Callable[[str], None],
               clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Runs one recipe to its end; its wall seconds, stamped validation points and final scores."""
    start = clock()
    proc = subprocess.Popen(recipe["argv"], cwd=recipe["cwd"], env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    curve, final, tail = [], {}, []
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-20:]
        point = parse_line(recipe["kind"], line)
        if point and point[0] == "val":
            curve.append({"step": point[1], "seconds": clock() - start, "bpb": point[2]})
            echo(f"    {clock() - start:6.0f} s  step {point[1]}: validation {point[2]:.4f} bits/byte")
        elif point:
            final[point[0]] = point[2]
    rc = proc.wait()
    row = {"name": recipe["name"], "kind": recipe["kind"], "wall_s": clock() - start, "curve": curve, **final}
    if rc != 0:
        raise RuntimeError(f"{recipe['name']} failed (exit {rc}): {' / '.join(tail[-3:])}")
    return row


def score_nanogpt(checkout: str, ckpt_path: pathlib.Path, splits: dict[str, tokens_lib.TokenSplit],
                  batch: int = 32) -> dict[str, float]:
    """Bits per byte of nanoGPT's checkpoint (loaded once) on each of `splits`: non-overlapping
    windows of its context."""
    import contextlib
    import importlib.util
    import io

    import torch

    from gpt2_jax.data import loader

    spec = importlib.util.spec_from_file_location("nanogpt_model", pathlib.Path(checkout) / "model.py")
    model_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_py)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints the parameter count
        model = model_py.GPT(model_py.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    context = ckpt["model_args"]["block_size"]
    scores = {}
    with torch.no_grad():
        for name, split in splits.items():
            total = 0.0
            for tokens, weights in loader.eval_batches(np.asarray(split.tokens[:]), batch, context):
                x, y = torch.from_numpy(tokens[:, :-1]).long(), torch.from_numpy(tokens[:, 1:]).long()
                logits, _ = model(x, y)  # with targets nanoGPT returns logits at every position
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
                total += float((nll * torch.from_numpy(weights)).sum())
            scores[name] = total / math.log(2) / split.header["num_bytes"]
    return scores


def bench_recipes(out_dir: str, data_dir: str, nanogpt: str | None = None, eval_every: int = 100,
                  env: dict[str, str] | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepares the data, then runs every recipe back to back; the report (`gpt2-jax bench recipes`
    writes it to <out_dir>/recipes.json)."""
    if nanogpt and not (pathlib.Path(nanogpt) / "train.py").is_file():
        raise FileNotFoundError(f"--nanogpt {nanogpt}: no train.py there; clone karpathy/nanoGPT outside the "
                                "project and pass its folder")
    out = pathlib.Path(out_dir).resolve()
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    splits = prepare_byte_splits(data_dir)
    if nanogpt:
        write_nanogpt_data(splits, out / "nanogpt_data")
    rows = []
    for recipe in recipe_list(out, data_dir, nanogpt and os.path.abspath(nanogpt), eval_every):
        echo(f"{recipe['name']}: {' '.join(recipe['argv'][1:])}")
        row = run_recipe(recipe, dict(env if env is not None else os.environ), echo)
        if recipe["kind"] == "nanogpt":
            row.update(score_nanogpt(recipe["cwd"], pathlib.Path(recipe["run_dir"]) / "ckpt.pt",
                                     {k: splits[k] for k in ("validation", "test")}))
        echo(f"    done in {row['wall_s']:.0f} s: test {row.get('test', float('nan')):.4f} bits/byte")
        rows.append(row)
    return {"data_dir": data_dir, "eval_every": eval_every, "rows": rows}


def format_report(report: dict[str, Any]) -> str:
    """The recipes as one markdown table: wall time, final validation and test bits per byte."""
    lines = ["| recipe | wall s | validation bits/byte | test bits/byte |", "|---|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['name']} | {r['wall_s']:.0f} | {r.get('validation', float('nan')):.4f} | "
                     f"{r.get('test', float('nan')):.4f} |")
    return "\n".join(lines)


def plot_recipes(report: dict[str, Any], path: str) -> str:
    """Validation bits per byte against wall seconds, one line per recipe (its test score in the label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in report["rows"]:
        pts = [p for p in r["curve"] if p["step"]]  # step 0 (nanoGPT's untrained model) would flatten the plot
        ax.plot([p["seconds"] for p in pts], [p["bpb"] for p in pts], marker="o", markersize=3,
                label=f"{r['name']}: test {r.get('test', float('nan')):.3f} in {r['wall_s']:.0f} s")
    ax.set(xlabel="wall seconds since the command started", ylabel="validation bits per byte",
           title="Shakespeare's plays, byte level, 2 CPU cores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
