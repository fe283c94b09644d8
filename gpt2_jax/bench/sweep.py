"""`gpt2-jax bench sweep`: every speed figure BENCHMARKS.md asks of a GPU, in one command.

Each row is one `gpt2-jax bench train|decode|eval` in its own subprocess (a fresh device, its own
peak memory, its own XLA flags) with a time budget (its timeout). The GPU plan puts the headline
rows first (gpt2 T=1024 in its best configuration with MFU, the same beside transformers +
torch.compile, batch-1 and batch-32 decoding and evaluation beside transformers), then the
sweeps, so a short GPU ration delivers the headline numbers. Rows are written to <out>/sweep.json
and <out>/sweep.md as they finish; run the same command again and finished rows are kept, so a
sweep cut short resumes. `--budget S` runs only the rows whose budgets fit in S seconds (the rest
wait for the next call); `--dry-run` prints the order and budgets without running anything. A row
that fails (out of memory, an unsupported kernel) is recorded with the last line of its error.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable

from gpt2_jax.bench import train as bench_train

_GPT2 = ["--preset", "gpt2", "--seq-len", "1024", "--vocab-size", "50257", "--steps", "20", "--warmup", "3",
         "--rounds", "1"]
_FAST = ["--dtype", "bfloat16", "--attention", "cudnn", "--vocab-multiple", "128", "--loss-chunk", "128"]
_NO_FLAGS = {"GPT2_JAX_GPU_FLAGS": "0"}


def _headline_rows(fast: list[str], nanogpt: str | None) -> list[dict[str, Any]]:
    """The numbers a short GPU ration must deliver first, each with a budget in seconds."""
    peers = ["--peer", "hf-torch"] + (["--peer", "nanogpt", nanogpt] if nanogpt else [])
    decode = ["--preset", "gpt2", "--prompt-len", "128", "--new-tokens", "256", "--dtype", "bfloat16", "--rounds", "3",
              "--peer", "hf-torch"]
    return [
        {"name": "headline: gpt2 T=1024 bf16, cuDNN, vocab 50304, chunked loss, XLA flags, batch 16",
         "args": [*fast, "--batch-size", "16"], "budget_s": 120},
        {"name": "headline: side by side with transformers + torch.compile" + (", nanoGPT" if nanogpt else ""),
         "args": [*fast, "--batch-size", "16", "--steps", "20", "--rounds", "2", *peers], "budget_s": 200},
        {"name": "headline: greedy decode batch 1 vs transformers", "kind": "decode",
         "args": [*decode, "--batch-size", "1"], "budget_s": 90},
        {"name": "headline: greedy decode batch 32 vs transformers", "kind": "decode",
         "args": [*decode, "--batch-size", "32"], "budget_s": 90},
        {"name": "headline: sliding-window eval (T=1024, stride 512) vs transformers", "kind": "eval",
         "args": ["--preset", "gpt2", "--seq-len", "1024", "--stride", "512", "--eval-tokens", "32768",
                  "--eval-batch", "8", "--dtype", "bfloat16", "--rounds", "3", "--peer", "hf-torch"], "budget_s": 90},
    ]


def _gpu_plan(nanogpt: str | None) -> list[dict[str, Any]]:
    """gpt2 at T=1024: the headline rows, then optimizations switched on in turn, variants, batch
    search, larger presets."""
    fast = [*_GPT2, *_FAST]
    rows = _headline_rows(fast, nanogpt)
    cumulative = [
        ("fp32, xla attention, vocab 50257, whole-batch loss, no XLA flags", ["--dtype", "float32", "--attention", "xla"]),
        ("+ bf16 compute (fp32 params and Adam)", ["--dtype", "bfloat16", "--attention", "xla"]),
        ("+ cuDNN flash attention", ["--dtype", "bfloat16", "--attention", "cudnn"]),
        ("+ vocab padded to 50304", ["--dtype", "bfloat16", "--attention", "cudnn", "--vocab-multiple", "128"]),
        ("+ chunked cross-entropy (128 positions)", _FAST),
    ]
    for name, args in cumulative:
        rows.append({"name": name, "args": [*_GPT2, "--batch-size", "16", *args], "env": _NO_FLAGS, "budget_s": 100})
    rows += [
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
    big = ["--seq-len", "1024", "--vocab-size", "50257", "--steps", "10", "--warmup", "2", "--rounds", "1", *_FAST]
    rows += [
        {"name": "gpt2-medium", "args": ["--preset", "gpt2-medium", *big, "--batch-size", "16"]},
        {"name": "gpt2-medium remat dots", "args": ["--preset", "gpt2-medium", *big, "--batch-size", "32",
                                                     "--remat", "dots"]},
        {"name": "gpt2-xl remat full", "args": ["--preset", "gpt2-xl", *big, "--batch-size", "8", "--remat", "full"],
         "budget_s": 240},
        {"name": "gpt2-xl remat full, all-bf16", "args": ["--preset", "gpt2-xl", *big, "--batch-size", "16",
                                                          "--remat", "full", "--param-dtype", "bfloat16"],
         "budget_s": 240},
        {"name": "gpt2-xl fsdp over all devices, remat full", "args": ["--preset", "gpt2-xl", *big, "--batch-size",
                                                                       "16", "--remat", "full", "--mesh", "1,-1,1"],
         "budget_s": 240},
    ]
    for row in rows:
        row.setdefault("budget_s", 120)
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
    return [{"name": "nano, chunked cross-entropy", "env": _NO_FLAGS, "budget_s": 300,
             "args": ["--preset", "nano", "--batch-size", "2", "--seq-len", "32", "--steps", "2", "--warmup", "1",
                      "--rounds", "1", "--loss-chunk", "8"]}]


PLANS: dict[str, Callable[[str | None], list[dict[str, Any]]]] = {
    "gpu": _gpu_plan, "cpu-switches": _cpu_switches_plan, "smoke": _smoke_plan}


def plan_rows(plan: str, nanogpt: str | None = None) -> list[dict[str, Any]]:
    """The rows of `plan`, each with its kind (default train) and budget (default 1200 s)."""
    if plan not in PLANS:
        raise ValueError(f"--plan {plan!r} is not one of {', '.join(PLANS)}")
    return [{"kind": "train", "budget_s": 1200, **row} for row in PLANS[plan](nanogpt)]


def _run_row(row: dict[str, Any], out: pathlib.Path, base_env: dict[str, str], index: int) -> dict[str, Any]:
    report_path = out / f"row{index:02d}.json"
    cmd = [sys.executable, "-m", "gpt2_jax.cli", "bench", row["kind"], *row["args"], "--json",
           str(report_path)]
    env = {**base_env, **row.get("env", {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=row["budget_s"])
    except subprocess.TimeoutExpired:
        return {**row, "status": "failed", "error": f"over its budget of {row['budget_s']} s"}
    (out / f"row{index:02d}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        oom = "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr.lower()
        return {**row, "status": "failed", "error": "out of memory" if oom else lines[-1][:300]}
    return {**row, "status": "ok", "report": json.loads(report_path.read_text())}


def plan_lines(plan: str, nanogpt: str | None = None, budget_s: float | None = None) -> list[str]:
    """The dry run: each row in order with its command, its budget and the running total."""
    lines, total = [], 0.0
    for i, row in enumerate(plan_rows(plan, nanogpt)):
        total += row["budget_s"]
        over = " (after --budget: next call)" if budget_s is not None and total > budget_s else ""
        lines.append(f"[{i + 1:2d}] {row['budget_s']:4.0f} s  total {total / 60:5.1f} min{over}  "
                     f"{row['name']}: gpt2-jax bench {row['kind']} {' '.join(row['args'])}")
    return lines


def run_sweep(plan: str, out_dir: str, nanogpt: str | None = None, base_env: dict[str, str] | None = None,
              echo: Callable[[str], None] = print, budget_s: float | None = None,
              clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    """Run plan's rows not yet in <out_dir>/sweep.json, in order, while their budgets fit in
    budget_s seconds (None: all); returns every row (kept, new, and 'waiting' for a later call)."""
    plan_of_rows = plan_rows(plan, nanogpt)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "sweep.json"
    done = ({r["name"]: r for r in json.loads(saved.read_text()) if r["status"] != "waiting"}
            if saved.is_file() else {})
    rows, stopped, start = [], set(), clock()
    for i, row in enumerate(plan_of_rows):
        if row["name"] in done:
            result = done[row["name"]]
        elif row.get("stop_group") in stopped:
            result = {**row, "status": "skipped", "error": "a smaller batch already failed"}
        elif budget_s is not None and clock() - start + row["budget_s"] > budget_s:
            result = {**row, "status": "waiting", "error": "outside this call's --budget; run again to resume"}
        else:
            echo(f"[{i + 1}] {row['name']}: gpt2-jax bench {row['kind']} {' '.join(row['args'])}")
            result = _run_row(row, out, dict(base_env or {}), i)
            echo(f"    {result['status']}" + (f": {result['error']}" if result["status"] != "ok" else ""))
            if result["status"] == "ok":
                echo(markdown_table([result]))
        if result["status"] not in ("ok", "waiting") and row.get("stop_group"):
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


def _ratio(r: dict[str, Any]) -> str:
    return f"{r['ratio_vs_hf_torch']:.2f}x" if "ratio_vs_hf_torch" in r else "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Train rows as one markdown table (peers of a row get their own lines, with the ratio), then
    decode and eval rows as a second one (tokens/s of ours and of the peer)."""
    head = ("| row | impl | preset | batch x T | compute / params | attention | vocab | loss chunk | remat | "
            "tokens/s | step ms (median) | MFU | peak GiB per device | compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    other = ["", "| row | kind | preset | batch | ours tokens/s | transformers tokens/s | ours / transformers |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        kind = row.get("kind", "train")
        if row["status"] != "ok":
            target, cells = (lines, 11) if kind == "train" else (other, 5)
            target.append(f"| {row['name']} | - | {row['status']}: {row.get('error', '')} |" + " |" * cells)
            continue
        r = row["report"]
        if kind != "train":
            ours, peer = r["results"]["gpt2_jax"], r["results"].get("hf-torch")
            peer_tps = f"{peer['tokens_per_s']:,.0f}" if peer else "-"
            other.append(f"| {row['name']} | {kind} | {r['preset']} | {r['batch_size']} | {ours['tokens_per_s']:,.0f} "
                         f"| {peer_tps} | {_ratio(r)} |")
            continue
        for impl in r["results"]:
            ratio = f" (ours {r[bench_train.ratio_key(impl)]:.2f}x)" if impl != "gpt2_jax" else ""
            lines.append(f"| {row['name']} | {impl}{ratio} | {r['preset']} | {r['batch_size']} x {r['seq_len']} | "
                         f"{r['dtype']} / {r['param_dtype']} | {r['attention_resolved']} | {r['padded_vocab_size']} | "
                         f"{r['loss_chunk'] or '-'} | {r['remat']} | " + " | ".join(_cells(row, impl)) + " |")
    return "\n".join(lines + (other if len(other) > 3 else []))
