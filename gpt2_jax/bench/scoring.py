"""`gpt2-jax bench eval`: sliding-window perplexity throughput, ours beside transformers' loop.

Both sides score the same random token sequence with the same random weights (a transformers GPT-2
of the preset's shape, converted by weights/huggingface.py): ours with evaluate.document_nlls (batched
windows, one jit per shape), transformers with the sliding-window perplexity loop of its
documentation (one window per forward, `labels` masked to the new targets, loss x targets).
tokens/s = targets scored / wall time of one full pass; passes alternate between the two sides.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from gpt2_jax.bench import common
from gpt2_jax.evaluate import scoring as evaluate_lib
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.weights import huggingface as convert


def _hf_loop(hf_model, ids: np.ndarray, context: int, stride: int) -> Callable[[], tuple[float, int]]:
    """transformers' documented sliding-window loop; returns (summed NLL, targets scored)."""
    import torch

    seq = torch.from_numpy(ids.astype(np.int64))[None]

    def run() -> tuple[float, int]:
        total, count, prev_end = 0.0, 0, 0
        with torch.inference_mode():
            for begin in range(0, seq.shape[1], stride):
                end = min(begin + context, seq.shape[1])
                window = seq[:, begin:end]
                labels = window.clone()
                labels[:, :-(end - prev_end)] = -100
                n = int((labels[:, 1:] != -100).sum())  # the model shifts labels left by one
                total += float(hf_model(window, labels=labels).loss) * n
                count, prev_end = count + n, end
                if end == seq.shape[1]:
                    break
        return total, count

    return run


def _our_loop(cfg: model_lib.GPT2Config, params, ids: np.ndarray, context: int, stride: int,
              batch_size: int) -> Callable[[], tuple[float, int]]:
    scorer = evaluate_lib.TokenScorer(model_lib.GPT2(cfg), params, batch_size)

    def run() -> tuple[float, int]:
        [nll] = evaluate_lib.document_nlls(scorer, [ids], context, stride)
        return float(nll.sum()), len(nll)

    return run


def bench_eval(preset: str = "gpt2", seq_len: int = 1024, stride: int = 512, num_tokens: int = 4096,
               batch_size: int = 1, rounds: int = 2, dtype: str = "float32", peer: str = "hf-torch",
               seed: int = 0, vocab_size: int = 50257) -> dict[str, Any]:
    """Time `rounds` full sliding-window passes over num_tokens random tokens on each side (after one
    untimed pass each; ours compiles in it). The report has tokens/s, seconds per pass, mean NLL per
    side (a sanity check: both score the same text, with windows that differ only at the edges)."""
    if peer not in ("none", "hf-torch"):
        raise ValueError(f"peer must be 'none' or 'hf-torch', got {peer!r}")
    if preset not in model_lib.PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(model_lib.PRESETS)}")
    hf_model, hf_cfg = common.hf_random_model(preset, vocab_size, 0.02, seed)
    if seq_len > hf_cfg.n_positions:
        raise ValueError(f"seq_len {seq_len} exceeds preset {preset}'s {hf_cfg.n_positions} positions")
    cfg = convert.config_from_hf(hf_cfg.to_dict(), dtype=dtype)
    params = convert.params_from_hf_state_dict(hf_model.state_dict(), cfg)
    ids = np.random.default_rng(seed).integers(0, vocab_size, num_tokens)
    runners = {"gpt2_jax": _our_loop(cfg, params, ids, seq_len, stride, batch_size)}
    if peer == "hf-torch":
        runners["hf-torch"] = _hf_loop(hf_model, ids, seq_len, stride)
    first_call = {}
    for name, run in runners.items():  # warm-up: ours traces and compiles here
        t0 = time.perf_counter()
        run()
        first_call[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in runners}
    scored: dict[str, tuple[float, int]] = {}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            scored[name] = run()
            times[name].append(time.perf_counter() - t0)
    rows = {name: {"tokens_per_s": scored[name][1] / statistics.median(ts), "s_median": statistics.median(ts),
                   "s_min": min(ts), "targets": scored[name][1], "mean_nll": scored[name][0] / scored[name][1],
                   "first_call_s": first_call[name]} for name, ts in times.items()}
    device = jax.devices()[0]
    report = {"kind": "eval", "preset": preset, "params": model_lib.count_params(model_lib.param_shapes(cfg)),
              "seq_len": seq_len, "stride": stride, "num_tokens": num_tokens, "batch_size": batch_size,
              "rounds": rounds, "dtype": dtype, "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
              "cpu_threads": common.cpu_threads(), "versions": common.versions(), "results": rows}
    if peer == "hf-torch":
        report["ratio_vs_hf_torch"] = rows["gpt2_jax"]["tokens_per_s"] / rows["hf-torch"]["tokens_per_s"]
        # fastest pass over fastest pass: less sensitive to a load spike in one round than the medians
        report["ratio_vs_hf_torch_best"] = rows["hf-torch"]["s_min"] / rows["gpt2_jax"]["s_min"]
    return report


def format_eval_report(r: dict[str, Any]) -> str:
    """A bench_eval report as a text table plus the ratio line."""
    lines = [f"sliding-window eval: preset {r['preset']} ({r['params']:,} params), context {r['seq_len']}, "
             f"stride {r['stride']}, {r['num_tokens']:,} tokens, our batch {r['batch_size']} windows, {r['dtype']}, "
             f"device {r['device']}, {r['rounds']} timed passes",
             f"{'impl':<10} {'tokens/s':>10} {'s/pass med':>11} {'s/pass min':>11} {'targets':>8} {'mean NLL':>9} "
             f"{'1st call s':>11}"]
    for name, row in r["results"].items():
        lines.append(f"{name:<10} {row['tokens_per_s']:>10.1f} {row['s_median']:>11.2f} {row['s_min']:>11.2f} "
                     f"{row['targets']:>8} {row['mean_nll']:>9.4f} {row['first_call_s']:>11.1f}")
    if "ratio_vs_hf_torch" in r:
        lines.append(f"ratio gpt2_jax / hf-torch tokens/s: {r['ratio_vs_hf_torch']:.2f} "
                     f"(fastest passes: {r['ratio_vs_hf_torch_best']:.2f})")
    return "\n".join(lines)
