"""PyTorch peers of `gpt2-jax bench train`: the same shape trained by transformers' GPT-2 (in this
process, steps interleaved with ours) and by nanoGPT's model.py (a checkout the user fetched, run
in a subprocess: `python -m gpt2_jax.bench_peers ...`).

Both sides train on the same random batch with AdamW (betas 0.9/0.95, decay 0.1, clip 1.0). On a
GPU the peers use bf16 autocast when our compute dtype is bfloat16 (fp32 parameters and optimizer
state, as PyTorch mixed precision does) and `torch.compile` unless it is switched off or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np


def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """The (batch_size, seq_len + 1) int32 token batch every side of the bench trains on."""
    return np.random.default_rng(seed).integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)


def _torch_setup(threads: int, dtype: str):
    try:
        import torch
    except ImportError:
        raise RuntimeError("the PyTorch peers need torch: pip install -c constraints.txt torch transformers") from None

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    amp = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    return torch, device, amp


def _train_step(torch, model, forward: Callable, amp, inputs, targets) -> Callable[[], None]:
    """One AdamW step (clip 1.0) of model with loss forward(inputs, targets); returns after loss.item()."""
    cuda = inputs.is_cuda
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)

    def step():
        with amp:
            loss = forward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # waits for the device

    return step


def _compiled_or_eager(torch, forward: Callable, make_step: Callable, compile_mode: str, info: dict):
    """The step built on torch.compile(forward) when asked and it runs, else on forward; runs it once."""
    if compile_mode != "off":
        step = make_step(torch.compile(forward))
        t0 = time.perf_counter()
        try:
            step()
            info.update(compiled=True, first_step_s=time.perf_counter() - t0)
            return step
        except Exception as e:  # e.g. no C++ compiler for inductor: measure eager instead
            if compile_mode == "on":
                raise RuntimeError(f"torch.compile failed for the peer: {type(e).__name__}: {e}") from None
            info["note"] = f"torch.compile failed ({type(e).__name__}); eager"
    step = make_step(forward)
    t0 = time.perf_counter()
    step()
    info.update(compiled=False, first_step_s=time.perf_counter() - t0)
    return step


def hf_torch_stepper(shape: dict[str, int], batch: np.ndarray, dtype: str, compile_mode: str,
                     threads: int) -> tuple[Callable[[], None], dict[str, Any]]:
    """A train step of transformers' GPT2LMHeadModel (SDPA attention) of `shape`, already run once,
    and facts about it (device, compiled, first step time, autocast)."""
    torch, device, amp = _torch_setup(threads, dtype)
    try:
        import transformers
    except ImportError:
        raise RuntimeError("--peer hf-torch needs transformers: pip install -c constraints.txt transformers") from None

    hf_cfg = transformers.GPT2Config(
        vocab_size=shape["vocab_size"], n_positions=shape["n_positions"], n_embd=shape["n_embd"],
        n_layer=shape["n_layer"], n_head=shape["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.GPT2LMHeadModel(hf_cfg).to(device).train()
    ids = torch.from_numpy(batch.astype(np.int64)).to(device)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    vocab = shape["vocab_size"]

    def forward(x, y):
        logits = model(input_ids=x).logits
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))

    info = {"device": device, "threads": torch.get_num_threads(), "autocast": dtype == "bfloat16",
            "attention": "sdpa", "version": f"torch {torch.__version__}, transformers {transformers.__version__}"}
    make = lambda fwd: _train_step(torch, model, fwd, amp, inputs, targets)
    step = _compiled_or_eager(torch, forward, make, compile_mode, info)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return step, info


def torch_peak_memory_bytes() -> int | None:
    """Peak bytes PyTorch allocated on the GPU since the peer's first step (None on CPU)."""
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def nanogpt_model_file(path: str) -> pathlib.Path:
    """model.py of the nanoGPT checkout at path; FileNotFoundError naming the fix if it is missing."""
    model_py = pathlib.Path(path).expanduser() / "model.py"
    if not model_py.is_file():
        raise FileNotFoundError(f"--peer nanogpt {path}: no model.py there; clone karpathy/nanoGPT outside "
                                "this project and pass its folder")
    return model_py


def run_nanogpt(path: str, shape: dict[str, int], batch_size: int, seq_len: int, steps: int, warmup: int,
                dtype: str, compile_mode: str, threads: int) -> dict[str, Any]:
    """Train nanoGPT's GPT (model.py of the checkout at path) on our batch in a subprocess; its report."""
    model_py = nanogpt_model_file(path)
    out = pathlib.Path(os.path.abspath(f"nanogpt_peer_{os.getpid()}.json"))
    cmd = [sys.executable, "-m", "gpt2_jax.bench_peers", "--path", str(model_py.parent), "--out", str(out),
           "--batch-size", str(batch_size), "--seq-len", str(seq_len), "--steps", str(steps),
           "--warmup", str(warmup), "--dtype", dtype, "--compile", compile_mode, "--threads", str(threads),
           "--shape", json.dumps(shape)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the nanoGPT peer failed (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def _nanogpt_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="time nanoGPT train steps (a subprocess of gpt2-jax bench train)")
    for name in ("--path", "--out", "--dtype", "--compile", "--shape"):
        p.add_argument(name, required=True)
    for name in ("--batch-size", "--seq-len", "--steps", "--warmup", "--threads"):
        p.add_argument(name, type=int, required=True)
    a = p.parse_args(argv)
    shape = json.loads(a.shape)
    torch, device, amp = _torch_setup(a.threads, a.dtype)
    spec = importlib.util.spec_from_file_location("nanogpt_model", pathlib.Path(a.path) / "model.py")
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    conf = nanogpt.GPTConfig(block_size=shape["n_positions"], vocab_size=shape["vocab_size"],
                             n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                             dropout=0.0, bias=True)
    model = nanogpt.GPT(conf).to(device).train()
    ids = torch.from_numpy(random_batch(a.batch_size, a.seq_len, shape["vocab_size"]).astype(np.int64)).to(device)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    info = {"device": device, "threads": torch.get_num_threads(), "autocast": a.dtype == "bfloat16",
            "attention": "sdpa" if getattr(model.transformer.h[0].attn, "flash", False) else "explicit",
            "version": f"torch {torch.__version__}, nanoGPT model.py"}
    forward = lambda x, y: model(x, y)[1]
    make = lambda fwd: _train_step(torch, model, fwd, amp, inputs, targets)
    step = _compiled_or_eager(torch, forward, make, a.compile, info)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(max(a.warmup - 1, 0)):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    info.update(times_s=times, peak_memory_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None)
    pathlib.Path(a.out).write_text(json.dumps(info))


if __name__ == "__main__":
    _nanogpt_main()
