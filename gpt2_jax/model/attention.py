"""Causal self-attention kernels, chosen by `model.attention` in the config.

`xla` and `cudnn` are `jax.nn.dot_product_attention`. `blocked` is ours, for XLA:CPU: queries
are split into blocks that multiply only against the keys up to their own end (skipping the
masked upper triangle), and the backward pass is written by hand, because the automatic
gradient of a masked softmax materializes several full-size score tensors on the CPU
(measured: ~2x faster attention forward+backward at T=128-256, BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "blocked")
_MASKED = -1e9  # finite: a causal row always keeps its diagonal, so no row is all masked


def resolve_implementation(name: str, dtype) -> str:
    """'auto' -> cudnn on GPU with half precision, blocked on CPU, xla elsewhere."""
    if name != "auto":
        return name
    backend = jax.default_backend()
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "blocked" if backend == "cpu" else "xla"


def default_num_blocks(seq_len: int) -> int:
    """About one query block per 64 positions, at most 8, dividing seq_len."""
    n = max(1, min(8, seq_len // 64))
    while seq_len % n:
        n -= 1
    return n


def _block_forward(q, k, v, num_blocks):
    """q, k, v: (B, N, T, H), q pre-scaled. Returns the output and each block's probabilities."""
    size = q.shape[2] // num_blocks
    outs, probs = [], []
    for i in range(num_blocks):
        lo, hi = i * size, (i + 1) * size
        s = jnp.einsum("bnqh,bnkh->bnqk", q[:, :, lo:hi], k[:, :, :hi]).astype(jnp.float32)
        keep = jnp.arange(hi)[None, :] <= jnp.arange(lo, hi)[:, None]
        s = jnp.where(keep, s, _MASKED)
        e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        p = (e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))).astype(v.dtype)
        probs.append(p)
        outs.append(jnp.einsum("bnqk,bnkh->bnqh", p, v[:, :, :hi]))
    return jnp.concatenate(outs, axis=2), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked(q, k, v, num_blocks):
    return _block_forward(q, k, v, num_blocks)[0]


def _blocked_fwd(q, k, v, num_blocks):
    out, probs = _block_forward(q, k, v, num_blocks)
    return out, (q, k, v, probs)


def _blocked_bwd(num_blocks, residuals, d_out):
    q, k, v, probs = residuals
    size = q.shape[2] // num_blocks
    dqs, dk, dv = [], jnp.zeros_like(k), jnp.zeros_like(v)
    for i in range(num_blocks):
        lo, hi = i * size, (i + 1) * size
        p, do = probs[i], d_out[:, :, lo:hi]
        dv = dv.at[:, :, :hi].add(jnp.einsum("bnqk,bnqh->bnkh", p, do))
        dp = jnp.einsum("bnqh,bnkh->bnqk", do, v[:, :, :hi]).astype(jnp.float32)
        # softmax backward in closed form: ds = p * (dp - sum(dp * p))
        pf = p.astype(jnp.float32)
        ds = (pf * (dp - jnp.sum(dp * pf, axis=-1, keepdims=True))).astype(q.dtype)
        dqs.append(jnp.einsum("bnqk,bnkh->bnqh", ds, k[:, :, :hi]))
        dk = dk.at[:, :, :hi].add(jnp.einsum("bnqk,bnqh->bnkh", ds, q[:, :, lo:hi]))
    return jnp.concatenate(dqs, axis=2), dk, dv


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_causal_attention(q, k, v, num_blocks: int | None = None):
    """Causal softmax attention, (B, T, N, H) in and out; exact, with a hand-written backward."""
    t, h = q.shape[1], q.shape[3]
    num_blocks = num_blocks or default_num_blocks(t)
    if t % num_blocks:
        raise ValueError(f"sequence length {t} is not divisible by num_blocks={num_blocks}")
    to_bnth = lambda x: x.transpose(0, 2, 1, 3)
    out = _blocked(to_bnth(q * (1.0 / math.sqrt(h))), to_bnth(k), to_bnth(v), num_blocks)
    return to_bnth(out)


def causal_attention(q, k, v, mask=None, implementation: str = "auto"):
    """Causal self-attention of (B, T, N, H) q, k, v; mask (B, 1, T, T) for padded batches."""
    impl = resolve_implementation(implementation, q.dtype)
    if impl == "blocked" and mask is None:
        return blocked_causal_attention(q, k, v)
    if impl == "blocked":
        impl = "xla"  # padding masks are rare (scoring, sampling): the general kernel handles them
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def causal_probs(q, k, mask=None):
    """Softmax attention probabilities (B, N, T, T) in fp32 of (B, T, N, H) q and k, causal, under an
    optional (B, 1, T, T) mask: what every implementation multiplies v by, written out."""
    t = q.shape[1]
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    if mask is None:
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    return jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1)


def cached_attention(q, k_cache, v_cache, mask):
    """Attention of new queries q (B, T, N, H) over a KV cache laid out (B, N, S, H), under mask
    (B, 1, T, S). The cache layout keeps the batched matmuls free of transposes of the whole cache."""
    scores = jnp.einsum("btnh,bnsh->bnts", q * (1.0 / math.sqrt(q.shape[-1])), k_cache).astype(jnp.float32)
    probs = jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1).astype(v_cache.dtype)
    return jnp.einsum("bnts,bnsh->btnh", probs, v_cache)
