"""`gpt2-jax bench sweep`: every training-speed figure BENCHMARKS.md asks of a GPU, in one command.

Each row is one `gpt2-jax bench train` in its own subprocess (a fresh device, its own peak memory,
its own XLA flags). Rows are written to <out>/sweep.json and <out>/sweep.md as they finish; run
the same command again and finished rows are kept, so a sweep cut short resumes. A row that fails
(out of memory, an unsupported kernel) is recorded with the last line of its error.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any, Callable

from gpt2_jax.bench import train as bench_train

_GPT2 = ["--preset", "gpt2", "--seq-len", "1024", "--vocab-size", "50257", "--steps", "20", "--warmup", "3",
         "--rounds", "1"]
_FAST = ["--dtype", "bfloat16", "--attention", "cudnn", "--vocab-multiple", "128", "--loss-chunk", "128"]
_NO_FLAGS = {"GPT2_JAX_GPU_FLAGS": "0"}


def _gpu_plan(nanogpt: str | None) -> list[dict[str, Any]]:
    """gpt2 at T=1024: optimizations switched on in turn, variants, batch search, peers, larger presets."""
    rows = []
    cumulative = [
        ("fp32, xla attention, vocab 50257, whole-batch loss, no XLA flags", ["--dtype", "float32", "--attention", "xla"]),
        ("+ bf16 compute (fp32 params and Adam)", ["--dtype", "bfloat16", "--attention", "xla"]),
        ("+ cuDNN flash attention", ["--dtype", "bfloat16", "--attention", "cudnn"]),
        ("+ vocab padded to 50304", ["--dtype", "bfloat16", "--attention", "cudnn", "--vocab-multiple", "128"]),
        ("+ chunked cross-entropy (128 positions)", _FAST),
    ]
    for name, args in cumulative:
        rows.append({"name": name, "args": [*_GPT2, "--batch-size", "16", *args], "env": _NO_FLAGS})
    fast = [*_GPT2, *_FAST]
    rows += [
        {"name": "+ XLA GPU flags (cli.GPU_XLA_FLAGS)", "args": [*fast, "--batch-size", "16"]},
        {"name": "variant: all-bf16 (params and Adam moments bf16)",
         "args": [*fast, "--batch-size", "16", "--param-dtype", "bfloat16"]},
        {"name": "variant: remat dots (saveable)", "args": [*fast, "--batch-size", "16", "--remat", "dots"]},
        {"name": "variant: remat full", "args": [*fast, "--batch-size", "16", "--remat", "full"]},
        {"name": "variant: + --xla_gpu_enable_triton_gemm=false", "args": [*fast, "--batch-size", "16"],
         "env": {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}},
    ]
    for batch in (32, 48, 64, 96, 128):  # the largest batch that fits: the last row that does not fail
        rows.append({"name": f"largest batch search: {batch}", "args": [*fast, "--batch-size", str(batch)],
                     "stop_group": "batch"})
    peers = ["--peer", "hf-torch"] + (["--peer", "nanogpt", nanogpt] if nanogpt else [])
    rows.append({"name": "side by side: transformers + torch.compile" + (", nanoGPT" if nanogpt else ""),
                 "args": [*fast, "--batch-size", "16", "--steps", "20", "--rounds", "2", *peers]})
    big = ["--seq-len", "1024", "--vocab-size", "50257", "--steps", "10", "--warmup", "2", "--rounds", "1", *_FAST]
    rows += [
        {"name": "gpt2-medium", "args": ["--preset", "gpt2-medium", *big, "--batch-size", "16"]},
        {"name": "gpt2-medium remat dots", "args": ["--preset", "gpt2-medium", *big, "--batch-size", "32",
                                                     "--remat", "dots"]},
        {"name": "gpt2-xl remat full", "args": ["--preset", "gpt2-xl", *big, "--batch-size", "8", "--remat", "full"]},
        {"name": "gpt2-xl remat full, all-bf16", "args": ["--preset", "gpt2-xl", *big, "--batch-size", "16",
                                                          "--remat", "full", "--param-dtype", "bfloat16"]},
        {"name": "gpt2-xl fsdp over all devices, remat full", "args": ["--preset", "gpt2-xl", *big, "--batch-size",
                                                                       "16", "--remat", "full", "--mesh", "1,-1,1"]},
    ]
    return rows


def _cpu_switches_plan(nanogpt: str | None) -> list[dict[str, Any]]:
    """The switches a CPU can show, one at a time from fp32 on the tiny preset with GPT-2's vocabulary."""
    base = ["--preset", "tiny", "--seq-len", "128", "--batch-size", "16", "--vocab-size", "50257", "--steps", "6",
            "--warmup", "1", "--rounds", "1"]
    switches = [("fp32, whole-batch loss", []), ("loss chunk 32", ["--loss-chunk", "32"]),
                ("vocab padded to 50304", ["--vocab-multiple", "128"]), ("remat dots", ["--remat", "dots"]),
                ("remat full", ["--remat", "full"]), ("bf16 compute", ["--dtype", "bfloat16"]),
                ("all-bf16", ["--dtype", "bfloat16", "--param-dtype", "bfloat16"])]
    return [{"name": name, "args": [*base, *args]} for name, args in switches]


def _smoke_plan(nanogpt: str | None) -> list[dict[str, Any]]:
    """One tiny row that exercises the machinery on a CPU in seconds."""
    return [{"name": "nano, chunked cross-entropy", "env": _NO_FLAGS,
             "args": ["--preset", "nano", "--batch-size", "2", "--seq-len", "32", "--steps", "2", "--warmup", "1",
                      "--rounds", "1", "--loss-chunk", "8"]}]


PLANS: dict[str, Callable[[str | None], list[dict[str, Any]]]] = {
    "gpu": _gpu_plan, "cpu-switches": _cpu_switches_plan, "smoke": _smoke_plan}


def _run_row(row: dict[str, Any], out: pathlib.Path, base_env: dict[str, str], index: int) -> dict[str, Any]:
    report_path = out / f"row{index:02d}.json"
    cmd = [sys.executable, "-m", "gpt2_jax.cli", "bench", "train", *row["args"], "--json", str(report_path)]
    env = {**base_env, **row.get("env", {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=row.get("timeout", 1200))
    except subprocess.TimeoutExpired:
        return {**row, "status": "failed", "error": "timed out"}
    (out / f"row{index:02d}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        oom = "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr.lower()
        return {**row, "status": "failed", "error": "out of memory" if oom else lines[-1][:300]}
    return {**row, "status": "ok", "report": json.loads(report_path.read_text())}


def run_sweep(plan: str, out_dir: str, nanogpt: str | None = None, base_env: dict[str, str] | None = None,
              echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run plan's rows not yet in <out_dir>/sweep.json; returns every row (kept and new)."""
    if plan not in PLANS:
        raise ValueError(f"--plan {plan!r} is not one of {', '.join(PLANS)}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "sweep.json"
    done = {r["name"]: r for r in json.loads(saved.read_text())} if saved.is_file() else {}
    rows, stopped = [], set()
    for i, row in enumerate(PLANS[plan](nanogpt)):
        if row["name"] in done:
            result = done[row["name"]]
        elif row.get("stop_group") in stopped:
            result = {**row, "status": "skipped", "error": "a smaller batch already failed"}
        else:
            echo(f"[{i + 1}] {row['name']}: gpt2-jax bench train {' '.join(row['args'])}")
            result = _run_row(row, out, dict(base_env or {}), i)
            echo(f"    {result['status']}" + (f": {result['error']}" if result["status"] != "ok" else ""))
        if result["status"] != "ok" and row.get("stop_group"):
            stopped.add(row["stop_group"])
        rows.append(result)
        saved.write_text(json.dumps(rows, indent=2))
        (out / "sweep.md").write_text(markdown_table(rows) + "\n")
    return rows


def _cells(row: dict[str, Any], impl: str) -> list[str]:
    r = row["report"]
    res = r["results"][impl]
    mem = res["peak_memory_bytes"]
    return [f"{res['tokens_per_s']:,.0f}", f"{res['step_ms_median']:.1f}",
            f"{100 * res['mfu']:.1f}%" if res["mfu"] else "-", f"{mem / 2**30:.1f}" if mem else "-",
            f"{res['compile_s']:.0f}"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as one markdown table (peers of a row get their own lines, with the ratio)."""
    head = ("| row | impl | preset | batch x T | compute / params | attention | vocab | loss chunk | remat | "
            "tokens/s | step ms (median) | MFU | peak GiB per device | compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | - | {row['status']}: {row.get('error', '')} |" + " |" * 11)
            continue
        r = row["report"]
        for impl in r["results"]:
            ratio = f" (ours {r[bench_train.ratio_key(impl)]:.2f}x)" if impl != "gpt2_jax" else ""
            lines.append(f"| {row['name']} | {impl}{ratio} | {r['preset']} | {r['batch_size']} x {r['seq_len']} | "
                         f"{r['dtype']} / {r['param_dtype']} | {r['attention_resolved']} | {r['padded_vocab_size']} | "
                         f"{r['loss_chunk'] or '-'} | {r['remat']} | " + " | ".join(_cells(row, impl)) + " |")
    return "\n".join(lines)
