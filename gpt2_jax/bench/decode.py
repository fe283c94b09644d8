"""`gpt2-jax bench decode`: decoding throughput beside transformers.

bench_decode: greedy KV-cache decoding of the same random weights (built by transformers, converted
with weights/huggingface.py) by generate.generate and by transformers' `generate`, calls interleaved
in rounds so that a change in machine load hits both alike.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from gpt2_jax.bench import common
from gpt2_jax.generate import decode as generate_lib
from gpt2_jax.model import gpt2 as model_lib


def _jax_decoder(cfg: model_lib.GPT2Config, params, prompts: list[list[int]], new_tokens: int):
    model = model_lib.GPT2(cfg)
    params = jax.device_put(params)

    def run() -> list[list[int]]:
        out = generate_lib.generate(model, params, prompts, new_tokens, 0, temperature=0.0)
        return out.tokens  # host lists: generate has already waited for the device

    return run


def _torch_decoder(hf_model, prompts: np.ndarray):
    import torch

    ids = torch.from_numpy(prompts.astype(np.int64))
    mask = torch.ones_like(ids)

    def run(new_tokens: int) -> list[list[int]]:
        with torch.inference_mode():
            out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, num_beams=1, use_cache=True, pad_token_id=0, eos_token_id=None)
        return out[:, ids.shape[1]:].tolist()

    return run


def _compile_and_wall_s(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds JAX spent tracing, lowering and compiling during fn(), fn's wall time)."""
    spent = []

    def listen(event: str, duration: float, **_):
        if event.startswith("/jax/core/compile/"):
            spent.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return sum(spent), wall


def _leading_agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def bench_decode(preset: str = "gpt2", batch_size: int = 1, prompt_len: int = 128, new_tokens: int = 256,
                 rounds: int = 2, dtype: str = "float32", peer: str = "hf-torch", seed: int = 0,
                 vocab_size: int = 50257, init_std: float = 0.02, n_layer: int | None = None) -> dict[str, Any]:
    """Greedy decode throughput of generate.generate (KV cache, one jitted while_loop) beside
    transformers' `generate` (PyTorch, KV cache) on the same random weights and prompts.

    Each side decodes batch_size random prompts of prompt_len tokens to exactly new_tokens new
    tokens (no EOS), `rounds` times, interleaved (ours, HF, ours, HF, ...) after one warm-up call
    each (ours compiles in it; both decode the full length). tokens/s = batch_size * new_tokens /
    median call time; a call includes the prefill. The weights are a transformers GPT-2 initialized
    with normal(0, init_std) under torch.manual_seed(seed), converted with
    convert.params_from_hf_state_dict (peer='none' needs no torch: model.init_params, same
    distribution, jax.random.key(seed)); HF runs in fp32, ours in `dtype`. tokens_match is the
    smallest number of leading new tokens on which both sides agree, over rows: random weights give
    flat logits where last-bit differences may flip a later argmax, so only the first few are
    expected to match (raise init_std for peakier logits, as the tests do with tiny models).
    n_layer: blocks instead of the preset's (e.g. a distilled student's depth at the teacher's width).
    """
    from gpt2_jax.weights import huggingface as convert

    if peer not in ("none", "hf-torch"):
        raise ValueError(f"peer must be 'none' or 'hf-torch', got {peer!r}")
    if preset not in model_lib.PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(model_lib.PRESETS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if peer == "hf-torch":
        hf_model, hf_cfg = common.hf_random_model(preset, vocab_size, init_std, seed, n_layer)
        cfg = convert.config_from_hf(hf_cfg.to_dict(), dtype=dtype, param_dtype=dtype)
        params = convert.params_from_hf_state_dict(hf_model.state_dict(), cfg)
    else:  # no torch needed: the project's own initializer, same distribution
        depth = {"n_layer": n_layer} if n_layer else {}
        cfg = model_lib.config_from_preset(preset, vocab_size=vocab_size, init_std=init_std, dtype=dtype,
                                           param_dtype=dtype, **depth)
        params = nn.meta.unbox(model_lib.init_params(cfg, jax.random.key(seed), seq_len=1))
    prompts = np.random.default_rng(seed).integers(0, vocab_size, (batch_size, prompt_len), dtype=np.int32)
    jax_run = _jax_decoder(cfg, params, prompts.tolist(), new_tokens)
    del params
    compile_s, first_call_s = _compile_and_wall_s(jax_run)
    runners: dict[str, Callable[[], list[list[int]]]] = {"gpt2_jax": jax_run}
    if peer == "hf-torch":
        import torch

        hf_run = _torch_decoder(hf_model, prompts)
        # A full-length warm-up: after a 4-token one, the first full call (gpt2, batch 32, 128 + 256
        # tokens) took 80 s and the next ones 62-64 s on a quiet 2-core CPU.
        hf_run(new_tokens)
        runners["hf-torch"] = lambda: hf_run(new_tokens)
    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(rounds):  # interleaved so load changes hit both sides alike
        for name, run in runners.items():
            t0 = time.perf_counter()
            tokens[name] = run()
            times[name].append(time.perf_counter() - t0)
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"tokens_per_s": batch_size * new_tokens / med, "s_median": med, "s_min": min(ts),
                      "ms_per_step_median": 1e3 * med / new_tokens, "times_s": ts}
    device = jax.devices()[0]
    report = {
        "kind": "decode", "preset": preset, "n_layer": cfg.n_layer, "params": model_lib.count_params(model_lib.param_shapes(cfg)),
        "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens, "rounds": rounds,
        "dtype": dtype, "peer_dtype": "float32", "vocab_size": vocab_size, "init_std": init_std, "seed": seed,
        "strategy": "greedy, KV cache, no EOS",
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "host": platform.processor() or platform.machine(), "cpu_threads": common.cpu_threads(),
        "versions": common.versions(),
        # The warm-up call traces, compiles (compile_s: JAX's own compile-event durations) and decodes once.
        "first_call_s": first_call_s, "compile_s": compile_s,
        "results": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if peer == "hf-torch":
        report["peer_device"] = f"torch cpu, {torch.get_num_threads()} threads, attn sdpa"
        report["ratio_vs_hf_torch"] = rows["gpt2_jax"]["tokens_per_s"] / rows["hf-torch"]["tokens_per_s"]
        # fastest call over fastest call: less sensitive to a load spike in one round than the medians
        report["ratio_vs_hf_torch_best"] = rows["hf-torch"]["s_min"] / rows["gpt2_jax"]["s_min"]
        agree = [_leading_agreement(a, b) for a, b in zip(tokens["gpt2_jax"], tokens["hf-torch"])]
        report["tokens_match"] = min(agree)
        report["tokens_match_per_row"] = agree
    return report


def format_decode_report(r: dict[str, Any]) -> str:
    """A bench_decode report as an aligned text table plus compile, agreement and ratio lines."""
    lines = [f"greedy decode: preset {r['preset']} ({r.get('n_layer', '?')} layers, {r['params']:,} params), batch {r['batch_size']}, "
             f"prompt {r['prompt_len']} + {r['new_tokens']} new tokens, vocab {r['vocab_size']}, {r['dtype']} "
             f"(peer {r['peer_dtype']}), device {r['device']}, {r['rounds']} timed rounds",
             f"{'impl':<10} {'tokens/s':>10} {'s median':>9} {'s min':>8} {'ms/token step':>14}"]
    for name, row in r["results"].items():
        lines.append(f"{name:<10} {row['tokens_per_s']:>10.1f} {row['s_median']:>9.3f} {row['s_min']:>8.3f} "
                     f"{row['ms_per_step_median']:>14.2f}")
    lines.append(f"jax first call {r['first_call_s']:.1f} s, of which compile {r['compile_s']:.1f} s; "
                 f"peak host RSS {r['peak_rss_mb']:.0f} MB")
    if "ratio_vs_hf_torch" in r:
        lines.append(f"greedy tokens agreeing from the start (min over rows): {r['tokens_match']} of {r['new_tokens']}")
        lines.append(f"ratio gpt2_jax / hf-torch tokens/s: {r['ratio_vs_hf_torch']:.2f} "
                     f"(fastest calls: {r['ratio_vs_hf_torch_best']:.2f})")
    return "\n".join(lines)
