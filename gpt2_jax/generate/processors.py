"""Next-token logits processing: repetition penalty, temperature, top-k, top-p (nucleus), min-p.

Each filter has the semantics of the transformers logits processor of the same name, applied in
the same order (repetition penalty, then temperature, top-k, top-p, min-p), so the same settings
give the same distribution. Values are traced arrays (changing them does not recompile); which
filters are on is static.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sampling settings; temperature 0 is greedy decoding."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @classmethod
    def checked(cls, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0) -> "Settings":
        """Settings, or a one-line ValueError naming the bad value and its valid range."""
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")
        if not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 keeps every token), got {min_p}")
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 is none), got {repetition_penalty}")
        return cls(float(temperature), int(top_k), float(top_p), float(min_p), float(repetition_penalty))

    @property
    def greedy(self) -> bool:
        """Whether decoding takes the argmax (temperature 0)."""
        return self.temperature == 0

    def arrays(self) -> dict:
        """The values as arrays, plus static on/off flags (as Python bools) under 'on'."""
        on = _Flags(self.repetition_penalty != 1.0, not self.greedy and self.top_k > 0,
                    not self.greedy and self.top_p < 1.0, not self.greedy and self.min_p > 0.0)
        return {"temperature": jnp.float32(self.temperature or 1.0), "top_k": jnp.int32(self.top_k),
                "top_p": jnp.float32(self.top_p), "min_p": jnp.float32(self.min_p),
                "repetition_penalty": jnp.float32(self.repetition_penalty), "on": on}


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Flags:
    repetition: bool
    top_k: bool
    top_p: bool
    min_p: bool


def repetition_penalty(logits, seen, penalty):
    """Divide positive (multiply negative) logits of already-seen tokens by penalty."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def top_k_filter(logits, k):
    """Keep the k largest logits (ties with the k-th kept), -inf elsewhere; k is a traced int >= 1."""
    kth = jax.lax.dynamic_index_in_dim(jnp.sort(logits, axis=-1), logits.shape[-1] - k, axis=-1)
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits, p):
    """Keep the smallest set of most likely tokens whose probability reaches p (always at least one)."""
    order = jnp.argsort(logits, axis=-1)  # ascending, as transformers' TopPLogitsWarper
    ascending = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    drop_sorted = (cumulative <= 1 - p).at[..., -1].set(False)
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    return jnp.where(drop, -jnp.inf, logits)


def min_p_filter(logits, min_p):
    """Drop tokens whose probability is below min_p times the most likely token's (keeps the top one)."""
    probs = jax.nn.softmax(logits, axis=-1)
    drop = probs < min_p * jnp.max(probs, axis=-1, keepdims=True)
    drop = drop & (logits < jnp.max(logits, axis=-1, keepdims=True))
    return jnp.where(drop, -jnp.inf, logits)


def process_logits(logits, seen, settings: dict, vocab_size: int):
    """fp32 scores to sample from (or argmax), from raw logits (B, V) and the seen-token mask (B, V)."""
    on = settings["on"]
    x = logits.astype(jnp.float32)
    x = jnp.where(jnp.arange(x.shape[-1]) < vocab_size, x, -jnp.inf)  # padded ids never win
    if on.repetition:
        x = repetition_penalty(x, seen, settings["repetition_penalty"])
    x = x / settings["temperature"]
    if on.top_k:
        x = top_k_filter(x, jnp.minimum(settings["top_k"], x.shape[-1]))
    if on.top_p:
        x = top_p_filter(x, settings["top_p"])
    if on.min_p:
        x = min_p_filter(x, settings["min_p"])
    return x
