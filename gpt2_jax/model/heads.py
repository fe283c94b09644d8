"""Task heads on GPT-2's final hidden states, kept as extra top-level entries of the param tree.

The sequence-classification head is Hugging Face's `GPT2ForSequenceClassification` `score`: a
linear map without bias from the last real token's hidden state (after ln_f) to `num_labels`
logits. Its kernel is stored (n_embd, num_labels) under params['score']['kernel'], with the
logical axes ('embed', None) so it shards like the rest.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.model.gpt2 import GPT2Config

SCORE_KEY = "score"


def init_score(cfg: GPT2Config, num_labels: int, rng: jax.Array) -> dict:
    """Boxed {'kernel': (n_embd, num_labels)} ~ N(0, init_std), as transformers initialises `score`."""
    kernel = cfg.init_std * jax.random.normal(rng, (cfg.n_embd, num_labels), jnp.dtype(cfg.param_dtype))
    return {"kernel": nn.LogicallyPartitioned(kernel, ("embed", None))}


def score_shapes(cfg: GPT2Config, num_labels: int) -> dict:
    """ShapeDtypeStructs of the score head."""
    return {"kernel": jax.ShapeDtypeStruct((cfg.n_embd, num_labels), jnp.dtype(cfg.param_dtype))}


def last_hidden(hidden: jax.Array, lengths: jax.Array) -> jax.Array:
    """hidden (B, T, D) at each row's last real token (index lengths - 1) -> (B, D)."""
    index = jnp.clip(lengths - 1, 0, hidden.shape[1] - 1)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def classify_logits(score: dict, hidden: jax.Array, lengths: jax.Array) -> jax.Array:
    """(B, num_labels) fp32 logits of the last real token's hidden state."""
    h = last_hidden(hidden, lengths).astype(jnp.float32)
    return h @ score["kernel"].astype(jnp.float32)
