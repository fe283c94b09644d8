"""Sampling from a GPT-2: temperature and top-k over a fixed-size token buffer, jitted once.

This first version reruns the forward pass over the whole buffer for each new token (no KV
cache); it is exact and compiles once per buffer length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gpt2_jax import model as model_lib


def filter_logits(logits: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """Scale by 1/temperature and keep only the top_k largest logits (top_k <= 0: keep all)."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k"))
def _fill(model: model_lib.GPT2, params, buffer, start, rng, temperature: float, top_k: int):
    def body(pos, carry):
        buffer, rng = carry
        logits = model.apply({"params": params}, buffer)[:, pos - 1]
        if temperature == 0.0:
            nxt = jnp.argmax(logits, axis=-1)
        else:
            rng, key = jax.random.split(rng)
            nxt = jax.random.categorical(key, filter_logits(logits, temperature, top_k), axis=-1)
        return buffer.at[:, pos].set(nxt.astype(buffer.dtype)), rng

    buffer, _ = jax.lax.fori_loop(start, buffer.shape[1], body, (buffer, rng))
    return buffer


def sample(model: model_lib.GPT2, params, prompt_ids: list[int], max_new_tokens: int, rng: jax.Array,
           temperature: float = 1.0, top_k: int = 0, eos_id: int | None = None) -> list[int]:
    """Continue prompt_ids by up to max_new_tokens tokens; returns only the new ones.

    An empty prompt starts from eos_id. Generation stops after the first eos_id produced.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not prompt_ids:
        if eos_id is None:
            raise ValueError("empty prompt and no EOS token to start from; give a prompt")
        prompt_ids = [eos_id]
    context = model.cfg.n_positions
    total = len(prompt_ids) + max_new_tokens
    if total > context:
        raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
                         f"exceeds the model's context of {context} tokens; shorten one of them")
    buffer = jnp.zeros((1, total), jnp.int32).at[0, : len(prompt_ids)].set(jnp.asarray(prompt_ids, jnp.int32))
    out = _fill(model, params, buffer, len(prompt_ids), rng, float(temperature), int(top_k))
    new = [int(t) for t in jax.device_get(out[0, len(prompt_ids):])]
    if eos_id is not None and eos_id in new:
        new = new[: new.index(eos_id)]
    return new
