"""One forward pass that collects what the model sows, and what follows from it.

`inspect_ids` applies the model once, jitted, with the intermediates collection mutable: the
model (model/gpt2.py) sows into it only then, so training and decoding never compute any of
this. It runs whichever attention implementation the model's config names: the residual stream
comes out of the kernels training uses, and the attention probabilities are the softmax those
kernels compute, written out (`attention.causal_probs`). Everything derived from the
vocabulary-sized logits (entropy, top-k, the logit lens, per-token loss) is reduced inside the
jit, one layer at a time, so only small arrays come back to the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.model import gpt2 as model_lib

LN2 = math.log(2)
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}  # whitespace drawn so a label is never blank


def token_label(tokenizer, token_id: int) -> str:
    """A readable label of one token: whitespace made visible, EOS as <eos>, a byte that is only
    part of a character as <0xNN>."""
    if token_id == tokenizer.eos_id:
        return "<eos>"
    raw = tokenizer.decode_bytes([token_id])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in raw)
    return "".join(_VISIBLE.get(c, c) for c in text) or f"<{token_id}>"


def check_index(kind: str, index: int, size: int) -> int:
    """index if 0 <= index < size, else a one-line ValueError naming the valid range."""
    if not 0 <= index < size:
        raise ValueError(f"{kind} {index} is out of range: the model has {size} {kind}s, numbered 0 to {size - 1}")
    return index


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare fields yourself
class Inspection:
    """What one forward pass over T tokens shows (numpy arrays; a position indexes the input).

    attention (L, H, T, T): probabilities per layer, head, query and key. residual (L+1, T, D):
    entry 0 is the embeddings, entry i the stream after block i. entropy (T,): of the next-token
    distribution at each position, in nats (`entropy_bits`). top_ids/top_probs (T, k): the k most
    likely next tokens. lens_* (L+1, ...): the same read off each residual entry through the final
    LayerNorm and the tied head (the logit lens; entry L is the model's own output); lens_true_prob
    is the probability of the true next token. loss (T,): -log p(true next token), nats. The last
    position has no next token: NaN there. truncated_from: the input's length when it was cut.
    """

    ids: np.ndarray
    tokens: list[str]
    attention: np.ndarray
    residual: np.ndarray
    entropy: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    lens_top_ids: np.ndarray
    lens_top_probs: np.ndarray
    lens_true_prob: np.ndarray
    loss: np.ndarray
    tokenizer: Any = dataclasses.field(repr=False, default=None)
    truncated_from: int | None = None

    def __repr__(self) -> str:
        cut = f", cut from {self.truncated_from}" if self.truncated_from is not None else ""
        return (f"Inspection({len(self.tokens)} tokens{cut}; {self.n_layer} layers x {self.n_head} heads, "
                f"width {self.residual.shape[-1]}, top {self.top_ids.shape[-1]})")

    @property
    def n_layer(self) -> int:
        """Transformer blocks of the model."""
        return self.attention.shape[0]

    @property
    def n_head(self) -> int:
        """Attention heads per block."""
        return self.attention.shape[1]

    @property
    def entropy_bits(self) -> np.ndarray:
        """Next-token entropy per position in bits."""
        return self.entropy / LN2

    @property
    def lens_layers(self) -> list[str]:
        """Row labels of the logit lens: 'embed', then the block after which the stream is read."""
        return ["embed"] + [f"block {i}" for i in range(self.n_layer)]

    def label(self, token_id: int) -> str:
        """The readable label of a token id (token_label)."""
        return token_label(self.tokenizer, int(token_id))

    def top_tokens(self) -> list[list[str]]:
        """Labels of the top-k next tokens at each position."""
        return [[self.label(i) for i in row] for row in self.top_ids]

    def attention_map(self, layer: int, head: int) -> np.ndarray:
        """(query, key) probabilities of one head; a one-line error for an index out of range."""
        return self.attention[check_index("layer", layer, self.n_layer), check_index("head", head, self.n_head)]

    def to_dict(self, attention_digits: int = 5) -> dict:
        """The numbers as JSON-able lists (NaN as null); the residual stream is left out (see report)."""
        return {
            "ids": self.ids.tolist(), "tokens": self.tokens, "truncated_from": self.truncated_from,
            "entropy_nats": _json(self.entropy), "entropy_bits": _json(self.entropy_bits),
            "loss_nats": _json(self.loss),
            "top_k": [{"tokens": toks, "probs": _json(p)} for toks, p in zip(self.top_tokens(), self.top_probs)],
            "logit_lens": {"layers": self.lens_layers,
                           "top_tokens": [[self.label(i) for i in row] for row in self.lens_top_ids[:, :, 0]],
                           "top_probs": _json(self.lens_top_probs[:, :, 0]),
                           "true_next_prob": _json(self.lens_true_prob)},
            "attention": np.round(self.attention.astype(np.float64), attention_digits).tolist(),
        }


def _json(x: np.ndarray) -> list:
    x = np.asarray(x, np.float64)
    return np.where(np.isnan(x), None, x).tolist()


def encode(tokenizer, text_or_ids: str | Sequence[int] | np.ndarray, context: int, *, prepend_eos: bool = True,
           truncate: bool = False) -> tuple[np.ndarray, int | None]:
    """(ids (T,), the input's length if it was cut else None) of a text (EOS in front when
    prepend_eos, so its first token is predicted too) or of token ids taken as they are.

    A text longer than the context is an error, or with truncate=True keeps its first `context` tokens.
    """
    if isinstance(text_or_ids, str):
        if not text_or_ids:
            raise ValueError("the text to inspect is empty; give at least one character")
        ids = ([tokenizer.eos_id] if prepend_eos else []) + tokenizer.encode(text_or_ids)
    else:
        arr = np.asarray(text_or_ids)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) and arr.size:
            raise ValueError(f"token ids to inspect must be one sequence of ints, got shape {arr.shape} of "
                             f"{arr.dtype}; inspect one text at a time")
        ids = arr.astype(np.int64).tolist()
        if not ids:
            raise ValueError("no token ids to inspect; give at least one")
        bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {tokenizer.vocab_size} ids")
    if len(ids) <= context:
        return np.asarray(ids, np.int32), None
    if not truncate:
        raise ValueError(f"the input is {len(ids)} tokens, more than the model's context of {context}; shorten "
                         f"it, or pass truncate=True (gpt2-jax inspect --truncate) to inspect its first {context}")
    return np.asarray(ids[:context], np.int32), len(ids)


def _lens_logits(module: model_lib.GPT2, x):
    """A residual-stream entry read through the final LayerNorm and the tied head."""
    return module.logits_from_hidden(module.ln_f(x))


def _next_token_stats(logits, targets, has_next, vocab_size: int, top_k: int) -> dict:
    """Entropy, top-k and the true next token's probability and NLL of logits (T, V) in fp32."""
    logp = jax.nn.log_softmax(logits[:, :vocab_size].astype(jnp.float32), axis=-1)
    probs = jnp.exp(logp)
    top_probs, top_ids = jax.lax.top_k(probs, top_k)
    true_logp = jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]
    return {"entropy": -jnp.sum(probs * logp, axis=-1), "top_probs": top_probs, "top_ids": top_ids,
            "true_prob": jnp.where(has_next, jnp.exp(true_logp), jnp.nan),
            "loss": jnp.where(has_next, -true_logp, jnp.nan)}


def bucket_length(length: int, context: int) -> int:
    """Compiled length for `length` tokens: the next power of two (at least 16), at most the context.
    Attention is causal, so tokens padded after the text change nothing before them."""
    return min(context, max(16, 1 << (length - 1).bit_length()))


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _forward(model: model_lib.GPT2, params, ids, length, *, top_k: int) -> dict:
    logits, state = model.apply({"params": params}, ids[None], mutable=[model_lib.INTERMEDIATES])
    sown = state[model_lib.INTERMEDIATES]
    targets = jnp.roll(ids, -1)  # position t predicts ids[t + 1]; the text's last one has no target
    has_next = jnp.arange(ids.shape[0]) < length - 1
    stats = functools.partial(_next_token_stats, targets=targets, has_next=has_next, vocab_size=model.cfg.vocab_size,
                              top_k=top_k)
    residual = jnp.stack([r[0] for r in sown["residual"]])
    # One layer's (T, vocab) logits at a time: the lens never holds all layers' logits at once.
    lens = jax.lax.map(lambda r: stats(model.apply({"params": params}, r, method=_lens_logits)), residual)
    return {"attention": jnp.stack([sown[f"h_{i}"]["attn"]["attention"][0][0] for i in range(model.cfg.n_layer)]),
            "residual": residual, "final": stats(logits[0]), "lens": lens}


def inspect_ids(model: model_lib.GPT2, params, ids: np.ndarray, tokenizer, *, top_k: int = 5,
                truncated_from: int | None = None) -> Inspection:
    """The Inspection of one token sequence (T,) with T <= the model's context, params on any devices.

    The forward runs on the ids padded to bucket_length, so texts of many lengths share a few
    compiled shapes; everything is cut back to the T real positions."""
    vocab, t = model.cfg.vocab_size, len(ids)
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k={top_k} must be between 1 and the vocabulary size {vocab}")
    padded = np.zeros(bucket_length(t, model.cfg.n_positions), np.int32)
    padded[:t] = ids
    out = jax.device_get(_forward(model, params, jnp.asarray(padded), jnp.int32(t), top_k=top_k))
    final, lens = out["final"], out["lens"]
    return Inspection(
        ids=np.asarray(ids), tokens=[token_label(tokenizer, int(i)) for i in ids],
        attention=out["attention"][:, :, :t, :t], residual=out["residual"][:, :t], entropy=final["entropy"][:t],
        top_ids=final["top_ids"][:t], top_probs=final["top_probs"][:t], lens_top_ids=lens["top_ids"][:, :t],
        lens_top_probs=lens["top_probs"][:, :t], lens_true_prob=lens["true_prob"][:, :t], loss=final["loss"][:t],
        tokenizer=tokenizer, truncated_from=truncated_from)
