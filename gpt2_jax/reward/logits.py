"""The logits of G completions of each prompt, with the prompt run through the model once.

A rollout's B x G rows share B prompts: running the (B x G, P + C) rows through the network
computes every prompt G times. Here each prompt fills a KV cache once (B rows), the cache is
copied to its G completions, and the completions attend over it: the same attention, exact up
to float rounding, with (G - 1) x B x P fewer positions in the forward and the backward pass
(~1/3 of them at P=32, C=48, G=8). Gradients flow through the cache into the prompt's keys and
values as they would through the full forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt2_jax.generate import decode
from gpt2_jax.model import gpt2 as model_lib


def completion_logits(model: model_lib.GPT2, params, prompts: jax.Array, completions: jax.Array) -> jax.Array:
    """Logits (B x G, C, V) predicting completions (B x G, C, prompt-major rows) after prompts (B, P)."""
    (b, p), (n, c) = prompts.shape, completions.shape
    g, s = n // b, p + c - 1
    apply = lambda *a, **k: model.apply({"params": params}, *a, method=model_lib.GPT2.decode, **k)
    first, cache = apply(prompts, jnp.broadcast_to(jnp.arange(p), (b, p)), jnp.ones((b, s), bool),
                         decode.init_cache(model.cfg, b, s), 0)
    first = jnp.repeat(first, g, axis=0)[:, None]  # the prompt's last position predicts token 0
    if c == 1:
        return first
    cache = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), cache)
    rest, _ = apply(completions[:, :-1], jnp.broadcast_to(jnp.arange(p, s), (n, c - 1)), jnp.ones((n, s), bool),
                    cache, p, last_only=False)
    return jnp.concatenate([first, rest], axis=1)
