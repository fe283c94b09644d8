"""`gpt2-jax bench`: train-step throughput of a preset, side by side with a peer implementation.

Both sides train the same shape (layers, width, heads, vocab, batch, sequence length) with AdamW
on random tokens; their timed steps are interleaved in rounds so that a change in machine load
hits both alike. FLOPs per token follow model.flops_per_token (6N + 12*L*T*d).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from gpt2_jax import model as model_lib
from gpt2_jax import optim, train

# Dense bf16 peak FLOP/s by device kind (per chip); MFU is not reported where the peak is unknown.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_peak_flops(device: jax.Device) -> float | None:
    """Assumed peak FLOP/s of device (None for CPUs and unknown kinds)."""
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if name in kind:
            return peak
    return None


def _jax_stepper(cfg: model_lib.GPT2Config, batch: np.ndarray) -> tuple[Callable[[], None], float]:
    model = model_lib.GPT2(cfg)
    # The project's optimizer (clip 1.0, AdamW, masked decay): the same work as the torch peer's step.
    optimizer = optim.make_optimizer(lr=3e-4, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0)
    step_fn = jax.jit(train.make_train_step(model, optimizer, lambda s: 3e-4), donate_argnums=(0,))
    state = jax.jit(lambda: train.init_state(model, optimizer, jax.random.key(0), batch.shape[-1] - 1))()
    dev_batch = jax.device_put(batch[None])
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, dev_batch).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def step():
        box["state"], m = compiled(box["state"], dev_batch)
        jax.block_until_ready(m["loss"])

    return step, compile_s


def _torch_stepper(cfg: model_lib.GPT2Config, batch: np.ndarray, threads: int) -> Callable[[], None]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.padded_vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.GPT2LMHeadModel(hf_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.from_numpy(batch.astype(np.int64))
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step():
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()

    return step


def _time(step: Callable[[], None], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def bench_train(preset: str, batch_size: int, seq_len: int, steps: int = 10, vocab_size: int = 257,
                peer: str = "none", dtype: str = "float32", warmup: int = 2, rounds: int = 2,
                threads: int | None = None, attention: str = "auto") -> dict[str, Any]:
    """Time `steps` train steps (after `warmup`) of preset at (batch_size, seq_len); optional peer."""
    cfg = model_lib.config_from_preset(preset, vocab_size=vocab_size, dtype=dtype, attention=attention,
                                       n_positions=max(seq_len, model_lib.PRESETS[preset].get("n_positions", 1024)))
    batch = np.random.default_rng(0).integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    steppers = {}
    jax_step, compile_s = _jax_stepper(cfg, batch)
    steppers["gpt2_jax"] = jax_step
    if peer == "hf-torch":
        steppers["hf-torch"] = _torch_stepper(cfg, batch, threads or _cpu_threads())
    for fn in steppers.values():
        _time(fn, warmup)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    per_round = max(1, steps // rounds)
    for _ in range(rounds):  # interleave so load changes hit both sides alike
        for name, fn in steppers.items():
            times[name] += _time(fn, per_round)
    tokens = batch_size * seq_len
    flops_tok = model_lib.flops_per_token(cfg, seq_len)
    device = jax.devices()[0]
    peak = device_peak_flops(device)
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {
            "tokens_per_s": tokens / med, "step_ms_min": 1e3 * min(ts), "step_ms_median": 1e3 * med,
            "tflops": flops_tok * tokens / med / 1e12,
            "mfu": flops_tok * tokens / med / peak if peak and name == "gpt2_jax" else None,
        }
    report = {
        "preset": preset, "attention": attention, "batch_size": batch_size, "seq_len": seq_len, "vocab_size": vocab_size, "dtype": dtype,
        "params": model_lib.count_params(model_lib.param_shapes(cfg)), "flops_per_token": flops_tok,
        "flops_formula": "6*N(non-embedding incl. tied head) + 12*L*T*d", "peak_flops": peak,
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "host": platform.processor() or platform.machine(),
        "jax_compile_s": compile_s, "steps": per_round * rounds, "results": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if "hf-torch" in rows:
        report["ratio_vs_hf_torch"] = rows["gpt2_jax"]["tokens_per_s"] / rows["hf-torch"]["tokens_per_s"]
    return report


def _cpu_threads() -> int:
    return len(os.sched_getaffinity(0))


def format_report(r: dict[str, Any]) -> str:
    """The report as an aligned text table plus a ratio line."""
    lines = [f"train step: preset {r['preset']} ({r['params']:,} params), attention {r['attention']}, "
             f"batch {r['batch_size']} x {r['seq_len']}, "
             f"vocab {r['vocab_size']}, {r['dtype']}, device {r['device']}, {r['steps']} timed steps",
             f"FLOPs/token {r['flops_per_token']:,} = {r['flops_formula']}; peak "
             + (f"{r['peak_flops'] / 1e12:.0f} TFLOP/s" if r["peak_flops"] else "unknown (no MFU)"),
             f"{'impl':<10} {'tokens/s':>10} {'step ms min':>12} {'median':>8} {'TFLOP/s':>8} {'MFU':>6}"]
    for name, row in r["results"].items():
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] else "-"
        lines.append(f"{name:<10} {row['tokens_per_s']:>10.0f} {row['step_ms_min']:>12.1f} {row['step_ms_median']:>8.1f} "
                     f"{row['tflops']:>8.3f} {mfu:>6}")
    lines.append(f"jax compile {r['jax_compile_s']:.1f} s; peak host RSS {r['peak_rss_mb']:.0f} MB")
    if "ratio_vs_hf_torch" in r:
        lines.append(f"ratio gpt2_jax / hf-torch tokens/s: {r['ratio_vs_hf_torch']:.2f}")
    return "\n".join(lines)
