"""GPT-2 in Flax Linen, exactly as OpenAI's (pre-LayerNorm, fused qkv, GELU-tanh, tied head).

Every parameter carries logical axis names, so how it is sharded is chosen by
`parallel/sharding.py` from the config, never by this file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.model import attention

# Architecture of the published checkpoints (vocab 50257, 1024 positions).
PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    # Small shapes for CPU experiments and tests; the vocab comes from the tokenizer.
    "tiny": dict(n_layer=6, n_head=6, n_embd=192, n_positions=256),
    "nano": dict(n_layer=2, n_head=2, n_embd=64, n_positions=128),
}

REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_IMPLEMENTATIONS = attention.IMPLEMENTATIONS


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Shape and numerics of a GPT-2 model; built from the `model` section of a config."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    # The embedding table has vocab_size rounded up to this multiple; extra rows are masked.
    vocab_multiple: int = 1
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"  # auto | xla | cudnn | blocked (attention.py)
    remat: str = "none"

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table (vocab_size rounded up to vocab_multiple)."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


def config_from_preset(name: str, **overrides: Any) -> GPT2Config:
    """A `GPT2Config` for a named preset, with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return GPT2Config(**{**PRESETS[name], **overrides})


def _init(std: float) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=std)


def _param(module: nn.Module, name: str, init, shape, axes, cfg: GPT2Config):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))


def _layer_norm(cfg: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


# Inspection (gpt2_jax/interpret) reads what the model sows into this collection.
INTERMEDIATES = "intermediates"


def sow(module: nn.Module, name: str, value_fn) -> None:
    """Store value_fn() under `name` in the intermediates collection, only when the caller applies
    the model with that collection mutable: otherwise nothing is computed or traced."""
    if module.is_mutable_collection(INTERMEDIATES):
        module.sow(INTERMEDIATES, name, value_fn())


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused (D, 3, H, hd) qkv kernel."""

    cfg: GPT2Config

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, kv=None, index=None):
        """Returns the attention output, and with a (k, v) cache also the cache with this chunk written
        at slot `index` (queries then attend over the whole cache, masked by `mask`)."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        d, h, hd = cfg.n_embd, cfg.n_head, cfg.head_dim
        proj_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        w_qkv = _param(self, "qkv_kernel", _init(cfg.init_std), (d, 3, h, hd), ("embed", None, "heads", "kv"), cfg)
        b_qkv = _param(self, "qkv_bias", nn.initializers.zeros, (3, h, hd), (None, "heads", "kv"), cfg)
        w_out = _param(self, "out_kernel", _init(proj_std), (h, hd, d), ("heads", "kv", "embed"), cfg)
        b_out = _param(self, "out_bias", nn.initializers.zeros, (d,), ("embed",), cfg)

        # (B, T, 3, H, hd): slicing q, k, v off axis 2 lets XLA fuse the bias and skip a transpose.
        qkv = jnp.einsum("btd,dshk->btshk", x.astype(dtype), w_qkv.astype(dtype)) + b_qkv.astype(dtype)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        if kv is not None:
            kv = tuple(nn.with_logical_constraint(
                jax.lax.dynamic_update_slice(c, new.transpose(0, 2, 1, 3).astype(c.dtype), (0, 0, index, 0)),
                ("batch", "heads", "length", "kv")) for c, new in zip(kv, (k, v)))
            y = attention.cached_attention(q, kv[0].astype(dtype), kv[1].astype(dtype), mask)
            y = jnp.einsum("bthk,hkd->btd", y, w_out.astype(dtype)) + b_out.astype(dtype)
            return y, kv
        sow(self, "attention", lambda: attention.causal_probs(q, k, mask))
        if cfg.attn_dropout > 0 and not deterministic:
            y = self._attention_with_dropout(q, k, v, mask)
        else:
            y = attention.causal_attention(q, k, v, mask, cfg.attention)
        y = jnp.einsum("bthk,hkd->btd", y, w_out.astype(dtype)) + b_out.astype(dtype)
        return y

    def _attention_with_dropout(self, q, k, v, mask):
        """Explicit softmax attention: jax.nn.dot_product_attention has no dropout."""
        probs = attention.causal_probs(q, k, mask).astype(q.dtype)
        probs = nn.Dropout(self.cfg.attn_dropout)(probs, deterministic=False)
        return jnp.einsum("bhqs,bshk->bqhk", probs, v)


class MLP(nn.Module):
    """Position-wise feed-forward: D -> 4D -> GELU(tanh) -> D."""

    cfg: GPT2Config

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        d, f = cfg.n_embd, 4 * cfg.n_embd
        proj_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        w_fc = _param(self, "fc_kernel", _init(cfg.init_std), (d, f), ("embed", "mlp"), cfg)
        b_fc = _param(self, "fc_bias", nn.initializers.zeros, (f,), ("mlp",), cfg)
        w_proj = _param(self, "proj_kernel", _init(proj_std), (f, d), ("mlp", "embed"), cfg)
        b_proj = _param(self, "proj_bias", nn.initializers.zeros, (d,), ("embed",), cfg)
        # Rows flattened to 2-D: XLA:CPU then runs the weight-gradient matmuls as fast GEMMs (measured).
        rows = lambda a: a.reshape(-1, a.shape[-1])
        hdn = (rows(x.astype(dtype)) @ w_fc.astype(dtype) + b_fc.astype(dtype)).reshape(*x.shape[:-1], f)
        hdn = nn.with_logical_constraint(hdn, ("batch", "length", "mlp"))
        hdn = jax.nn.gelu(hdn, approximate=True)
        return (rows(hdn) @ w_proj.astype(dtype) + b_proj.astype(dtype)).reshape(x.shape)


class Block(nn.Module):
    """One pre-LayerNorm transformer block."""

    cfg: GPT2Config

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, kv=None, index=None):
        cfg = self.cfg
        y = CausalSelfAttention(cfg, name="attn")(_layer_norm(cfg, "ln_1")(x), mask, deterministic, kv, index)
        if kv is not None:
            y, kv = y
        x = x + nn.Dropout(cfg.resid_dropout)(y, deterministic=deterministic)
        y = MLP(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x))
        x = x + nn.Dropout(cfg.resid_dropout)(y, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x if kv is None else (x, kv)


def _block_class(cfg: GPT2Config):
    if cfg.remat == "none":
        return Block
    policy = None if cfg.remat == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    # Argument 3 (`deterministic`) picks Python branches, so it must be static.
    return nn.remat(Block, policy=policy, static_argnums=(3,))


class GPT2(nn.Module):
    """GPT-2 language model. Returns logits (B, T, padded_vocab); padded ids get the dtype's minimum."""

    cfg: GPT2Config

    def setup(self):
        cfg = self.cfg
        pdt = jnp.dtype(cfg.param_dtype)
        embed_init = lambda axes: nn.with_logical_partitioning(_init(cfg.init_std), axes)
        self.wte = nn.Embed(cfg.padded_vocab_size, cfg.n_embd, dtype=jnp.dtype(cfg.dtype), param_dtype=pdt,
                            embedding_init=embed_init(("vocab", "embed")))
        self.wpe = nn.Embed(cfg.n_positions, cfg.n_embd, dtype=jnp.dtype(cfg.dtype), param_dtype=pdt,
                            embedding_init=embed_init(("positions", "embed")))
        block = _block_class(cfg)
        self.blocks = [block(cfg, name=f"h_{i}") for i in range(cfg.n_layer)]
        self.ln_f = _layer_norm(cfg, "ln_f")
        self.drop = nn.Dropout(cfg.embd_dropout)

    def hidden(self, tokens, positions=None, attention_mask=None, deterministic: bool = True):
        """Final hidden states (B, T, D) after ln_f.

        Applied with `mutable=[INTERMEDIATES]`, it also sows the residual stream before the first
        block and after every block ("residual") and each layer's attention probabilities ("attention").

        positions: (B, T) int, default 0..T-1 (give them for left-padded batches).
        attention_mask: (B, T) bool/int, 1 where a token may be attended to.
        """
        t = tokens.shape[1]
        if positions is None:
            positions = jnp.arange(t)[None, :]
        x = self.wte(tokens) + self.wpe(positions)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x = self.drop(x, deterministic=deterministic)
        mask = None
        if attention_mask is not None:
            causal = jnp.tril(jnp.ones((t, t), bool))
            mask = causal[None, None] & attention_mask.astype(bool)[:, None, None, :]
        sow(self, "residual", lambda: x)  # entry 0: the embeddings; entry i: after block i - 1
        for block in self.blocks:
            x = block(x, mask, deterministic)
            sow(self, "residual", lambda: x)
        return self.ln_f(x)

    def decode(self, tokens, positions, key_valid, cache, index, last_only: bool = True):
        """One chunk of cached decoding: the prompt (prefill) or the next token of every row.

        tokens, positions: (B, Tc) ids and their positions; they fill cache slots index..index+Tc-1.
        key_valid: (B, S) bool, False for slots that hold left padding. cache: one (k, v) pair per
        layer, each (B, n_head, S, head_dim): separate buffers per layer, heads before slots, so a
        decode loop updates them in place and attends without transposing them. Returns (logits of the last position (B, V), or of all positions (B, Tc, V)
        when last_only is False; the updated cache).
        """
        tc, s = tokens.shape[1], key_valid.shape[1]
        causal = jnp.arange(s)[None, :] <= index + jnp.arange(tc)[:, None]
        mask = (causal[None] & key_valid[:, None, :])[:, None]  # (B, 1, Tc, S)
        x = self.wte(tokens) + self.wpe(positions)
        new_cache = []
        for block, kv in zip(self.blocks, cache):
            x, kv = block(x, mask, True, kv, index)
            new_cache.append(kv)
        x = self.ln_f(x[:, -1] if last_only else x)
        return self.logits_from_hidden(x), tuple(new_cache)

    def logits_from_hidden(self, x):
        """Tied LM head: hidden (..., D) -> logits (..., padded_vocab), padded ids masked."""
        logits = self.wte.attend(x)
        if self.cfg.padded_vocab_size != self.cfg.vocab_size:
            valid = jnp.arange(self.cfg.padded_vocab_size) < self.cfg.vocab_size
            logits = jnp.where(valid, logits, jnp.finfo(logits.dtype).min)
        return logits

    def __call__(self, tokens, positions=None, attention_mask=None, deterministic: bool = True):
        return self.logits_from_hidden(self.hidden(tokens, positions, attention_mask, deterministic))


def init_params(cfg: GPT2Config, rng: jax.Array, seq_len: int | None = None):
    """Randomly initialized parameters, as a boxed (logically partitioned) pytree."""
    t = min(seq_len or cfg.n_positions, cfg.n_positions)
    return GPT2(cfg).init(rng, jnp.zeros((1, t), jnp.int32))["params"]


def param_shapes(cfg: GPT2Config):
    """Parameter shapes and dtypes (unboxed ShapeDtypeStructs), computed without allocating."""
    boxed = jax.eval_shape(functools.partial(init_params, cfg, seq_len=1), jax.random.key(0))
    return nn.meta.unbox(boxed)


def count_params(tree) -> int:
    """Total number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def non_embedding_params(cfg: GPT2Config) -> int:
    """Parameters excluding token and position embeddings, on the unpadded vocabulary."""
    return count_params(param_shapes(dataclasses.replace(cfg, vocab_multiple=1))) - (
        cfg.vocab_size + cfg.n_positions) * cfg.n_embd


def flops_per_token(cfg: GPT2Config, seq_len: int) -> int:
    """Training FLOPs per token: 6*N + 12*L*T*d, N = parameters other than the position embedding.

    The token embedding stays in N because the tied LM head multiplies by it (Kaplan et al. 2020,
    the count nanoGPT and llm.c report MFU with); N is taken on the real vocabulary, so rows
    padded for speed (vocab_multiple) never raise MFU. 12*L*T*d is causal attention's QK^T and
    PV, forward and backward, counted over the whole T x T square.
    """
    n = non_embedding_params(cfg) + cfg.vocab_size * cfg.n_embd
    return 6 * n + 12 * cfg.n_layer * seq_len * cfg.n_embd
