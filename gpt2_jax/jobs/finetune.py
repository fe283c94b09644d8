"""The `gpt2-jax finetune` job: one classification experiment run in several arms side by side, each
a full `gpt2-jax train` run in <out>/<arm>, and one table of what each trains and scores.

Arms: (a) `pretrained`: the experiment as written (its checkpoint.init_from); (b) `random`: the same
model and steps from random init; (c) `baseline`: TF-IDF character n-grams + logistic regression
on the same passages and splits; (d) `frozen`: the pretrained body frozen, only the head trained;
(e) `lora`: LoRA adapters on every block's kernels plus the head, base weights frozen.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable

from gpt2_jax import config as config_lib
from gpt2_jax.checkpoint import export as export_lib
from gpt2_jax.data import tokenizers
from gpt2_jax.jobs import pretrain
from gpt2_jax.posttrain import baseline
from gpt2_jax.posttrain import build as task_build

# arm -> (what it is, the overrides it adds to the experiment)
ARMS = {
    "pretrained": ("(a) fine-tuned from the pretrained checkpoint", []),
    "random": ("(b) the same model and steps from random init", ["checkpoint.init_from=''"]),
    "baseline": ("(c) TF-IDF char 2-5-grams + logistic regression", []),
    "frozen": ("(d) pretrained body frozen, head only (lr x10)", ["finetune.freeze=body"]),
    "lora": ("(e) LoRA r=8 on qkv, attn out, MLP + head (lr x3)", ["finetune.lora.rank=8"]),
}
LR_FACTOR = {"frozen": 10.0, "lora": 3.0}  # fewer trained weights take a larger step


def arm_config(config_path: str, overrides: list[str], arm: str, out: pathlib.Path):
    """The validated config of one arm, running in out/arm."""
    cfg = config_lib.load_config(config_path, overrides)
    extra = [*ARMS[arm][1], f"train.run_dir={str(out / arm)!r}"]
    if arm in LR_FACTOR:
        extra.append(f"optim.lr={cfg.optim.lr * LR_FACTOR[arm]!r}")
    return config_lib.load_config(config_path, [*overrides, *extra])


def _check(config_path: str, overrides: list[str], arms: list[str]) -> None:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    cfg = config_lib.load_config(config_path, overrides)
    if cfg.task.kind != "classify":
        raise ValueError(f"{config_path} has task.kind={cfg.task.kind!r}; gpt2-jax finetune compares classifiers")
    if set(arms) & {"pretrained", "frozen", "lora"}:
        if not cfg.checkpoint.init_from:
            raise ValueError("the pretrained, frozen and lora arms need checkpoint.init_from; pass --init-from RUN_DIR")
        export_lib.open_source(cfg.checkpoint.init_from)  # fails now, not after the first arm, if it is missing


def run_baseline(cfg, say: Callable[..., None]) -> dict:
    """The TF-IDF + logistic regression row on the experiment's own passages and splits."""
    t0 = time.perf_counter()
    splits, names = task_build.task_splits(cfg, tokenizers.make_tokenizer(cfg.data.tokenizer), say)
    get = lambda role: (splits[role].texts, splits[role].arrays["labels"])
    r = baseline.tfidf_logreg(get("train"), get("eval"), get("test") if "test" in splits else None, names)
    trained = r["features"] * len(names) + len(names)
    say(f"baseline: C={r['C']}, {r['features']:,} features; validation accuracy {r['val_accuracy']:.4f}; test "
        f"accuracy {r.get('test_accuracy', float('nan')):.4f}, macro-F1 {r.get('test_macro_f1', float('nan')):.4f}",
        flush=True)
    return {**r, "params": {"trained": trained, "frozen": 0, "optimizer_state_bytes": None},
            "seconds": time.perf_counter() - t0}


def _row(arm: str, r: dict) -> dict:
    es = r.get("early_stopping") or {}
    return {"arm": arm, "what": ARMS[arm][0], "trained": r["params"]["trained"], "frozen": r["params"]["frozen"],
            "optimizer_state_bytes": r["params"]["optimizer_state_bytes"], "steps": r.get("step"),
            "best_step": r.get("evaluated_step", r.get("step")), "stopped_early": bool(es.get("stopped")),
            "seconds": r["seconds"], **{k: r.get(k) for k in ("val_accuracy", "test_accuracy", "test_macro_f1")}}


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a markdown table."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = ["| arm | trained params | optimizer state (bytes) | steps (best) | wall s | val accuracy | "
             "test accuracy | test macro-F1 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        steps = "-" if r["steps"] is None else f"{r['steps']} ({r['best_step']})"
        lines.append(f"| {r['what']} | {r['trained']:,} | {fmt(r['optimizer_state_bytes'], ',')} | {steps} | "
                     f"{r['seconds']:.0f} | {fmt(r['val_accuracy'], '.4f')} | {fmt(r['test_accuracy'], '.4f')} | "
                     f"{fmt(r['test_macro_f1'], '.4f')} |")
    return "\n".join(lines)


def run(config_path: str, overrides: list[str], arms: list[str], out: str | None,
        say: Callable[..., None] = print) -> list[dict]:
    """Run each arm (a full training run, or the baseline) in out/<arm> (default: train.run_dir + '_arms'),
    writing out/table.{md,json} after each; returns the rows."""
    _check(config_path, overrides, arms)
    out_dir = pathlib.Path(out or config_lib.load_config(config_path, overrides).train.run_dir + "_arms").expanduser()
    rows = []
    for arm in arms:
        say(f"== arm {arm}: {ARMS[arm][0]}", flush=True)
        cfg = arm_config(config_path, overrides, arm, out_dir)
        if arm == "baseline":
            r = {**run_baseline(cfg, say), "step": None}
        else:
            t0 = time.perf_counter()
            r = pretrain.run(cfg, say)
            r["seconds"] = time.perf_counter() - t0
        rows.append(_row(arm, r))
        out_dir.mkdir(parents=True, exist_ok=True)  # written after every arm: a killed run keeps what it measured
        (out_dir / "table.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "table.md").write_text(markdown_table(rows) + "\n")
    say(markdown_table(rows), flush=True)
    return rows
