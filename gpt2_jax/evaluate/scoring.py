"""Perplexity evaluation: sliding-window NLL of texts, and the unit conversions of its results.

Protocol of `evaluate_texts` (the one `gpt2-jax eval` and `gpt2-jax table` report):
* each text is one document: detokenized (optional), BPE-encoded, and EOS (`<|endoftext|>`) is
  put before it so its first token is scored too; nothing is appended, windows never cross texts;
* a document longer than the context is scored by windows of `context` tokens advancing by
  `stride`: each window scores only the targets no earlier window scored (the first window all of
  them), so every token is scored exactly once, with at least context - stride tokens of context
  after the first window; the last window is moved left to end at the document's end, which
  gives its tokens more context rather than less;
* token perplexity = exp(NLL / scored tokens); word perplexity = exp(NLL / whitespace-separated
  words of the original text) as in the GPT-2 paper and lm-evaluation-harness; bits per byte /
  per character = NLL / ln 2 / UTF-8 bytes / characters of the original text; top-1 / top-5
  accuracy = the fraction of scored tokens that are the argmax / among the 5 highest logits of
  the real vocabulary.

`evaluate_split` (used during training) scores a prepared token split in non-overlapping windows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from gpt2_jax.data import loader
from gpt2_jax.data import tokens as tokens_lib
from gpt2_jax.evaluate import detokenize
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.parallel import sharding


def metrics_from_nll(total_nll: float, num_tokens: float, num_bytes: float) -> dict[str, float]:
    """loss (nats/token), perplexity and bits per byte from summed NLL over scored tokens/bytes."""
    loss = total_nll / max(num_tokens, 1.0)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": total_nll / math.log(2) / max(num_bytes, 1.0),
        "tokens": num_tokens,
    }


def evaluate_split(eval_step: Callable, params, split: tokens_lib.TokenSplit, batch_size: int, seq_len: int,
                   max_batches: int | None = None, progress: bool = False, desc: str = "eval",
                   batch_sharding: jax.sharding.NamedSharding | None = None) -> dict[str, float]:
    """Score every token of `split` once (non-overlapping windows of seq_len) and summarize.

    With batch_sharding, each process reads only the rows of each batch its devices hold and the
    batches are global arrays on that sharding's mesh.

    Bits per byte divide the NLL by the UTF-8 bytes the scored tokens stand for: the split's
    bytes-per-token ratio (from its header) times the number of scored tokens, which is exact
    when the whole split is scored.
    """
    total = num_batches = loader.num_eval_batches(split.tokens, batch_size, seq_len)
    if max_batches is not None:
        total = min(total, max_batches)
    nll_sum, count_sum = 0.0, 0.0
    pending = []
    rows = None if batch_sharding is None else sharding.local_rows(batch_sharding, (batch_size, seq_len + 1))
    batches = loader.eval_batches(split.tokens, batch_size, seq_len, rows=rows)
    for i, (batch, weights) in enumerate(tqdm(batches, total=total, desc=desc, disable=not progress, leave=False)):
        if i >= total:
            break
        if batch_sharding is not None:
            batch = jax.make_array_from_process_local_data(batch_sharding, batch, (batch_size, seq_len + 1))
            weights = jax.make_array_from_process_local_data(batch_sharding, weights, (batch_size, seq_len))
        pending.append(eval_step(params, batch, weights))
        if len(pending) > 2:  # fetch late so the device keeps working while the host waits
            n, c = jax.device_get(pending.pop(0))
            nll_sum, count_sum = nll_sum + float(n), count_sum + float(c)
    for n, c in jax.device_get(pending):
        nll_sum, count_sum = nll_sum + float(n), count_sum + float(c)
    header = split.header
    bytes_per_token = header["num_bytes"] / max(header["num_tokens"], 1)
    out = metrics_from_nll(nll_sum, count_sum, count_sum * bytes_per_token)
    out["complete"] = float(total == num_batches)
    return out


# --------------------------------------------------------------------------- sliding windows

@dataclasses.dataclass(frozen=True)
class Window:
    """Inputs x[start : start+length] predict targets x[start+1 : start+length+1]; the targets at
    window positions first_scored..length-1 are the ones this window scores."""

    start: int
    length: int
    first_scored: int


def sliding_windows(num_tokens: int, context: int, stride: int) -> list[Window]:
    """Windows that score each of the num_tokens - 1 targets of a sequence exactly once (see module doc)."""
    if not 1 <= stride <= context:
        raise ValueError(f"stride {stride} must be between 1 and the context length {context}")
    num_targets = num_tokens - 1
    length = min(context, num_targets)
    windows, scored, start = [], 0, 0
    while scored < num_targets:
        start = min(start, num_targets - length)  # the last window ends at the sequence's end
        windows.append(Window(start, length, scored - start))
        scored = start + length
        start += stride
    return windows


def bucket_length(length: int, context: int) -> int:
    """Row length for a window of `length` tokens: the next power of two (at least 16), at most the
    context, so texts of many lengths compile only a few shapes."""
    return min(context, max(16, 1 << (length - 1).bit_length()))


# --------------------------------------------------------------------------- scoring

class TokenScorer:
    """Per-token NLL and greedy hits of token rows, in fixed-size batches sharded over a mesh.

    The forward is one jax.jit per row length; rows are split over the mesh's batch axes and
    the parameters placed by the mesh's rules (default: every device, data parallel, params
    replicated). Every process passes the same rows; each feeds the rows its devices hold.
    """

    def __init__(self, model: model_lib.GPT2, params, batch_size: int = 8, mesh: jax.sharding.Mesh | None = None,
                 rules=None, progress: bool = False):
        self.model, self.progress = model, progress
        self.mesh = mesh or sharding.make_mesh(sharding.MeshSpec(rules="dp"))
        self.rules = rules or sharding.logical_rules("dp")
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules, ndim=2)
        shards = math.prod(self.mesh.shape[a] for a in sharding.BATCH_AXES
                           if a in (dict(self.rules).get("batch") or ()))
        self.batch_size = -(-batch_size // shards) * shards  # a whole number of rows per batch shard
        boxed = jax.eval_shape(functools.partial(model_lib.init_params, model.cfg, seq_len=1), jax.random.key(0))
        params_sharding = sharding.param_shardings(boxed, self.rules, self.mesh)
        self.params = jax.device_put(params, params_sharding)
        step = jax.jit(functools.partial(_score_step, model),
                       in_shardings=(params_sharding, self.batch_sharding, self.batch_sharding),
                       out_shardings=(self.batch_sharding,) * 3)
        self._step = sharding.with_mesh(step, self.mesh, self.rules)

    def score_rows(self, inputs: np.ndarray, targets: np.ndarray,
                   desc: str = "eval") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(NLL in nats, whether the target is the argmax, the target's rank: how many tokens have a
        higher logit) for every position of int rows (n, L)."""
        n, length = inputs.shape
        b = self.batch_size
        shape = (b, length)
        rows = sharding.local_rows(self.batch_sharding, shape)
        outs = (np.zeros((n, length), np.float32), np.zeros((n, length), bool), np.zeros((n, length), np.int32))
        pending = []

        def collect(first, got):
            count = min(b, n - first)
            for full, x in zip(outs, got):
                full[first:first + count] = _to_host(x)[:count]

        for first in tqdm(range(0, n, b), desc=desc, disable=not self.progress, leave=False):
            batch = [np.zeros(shape, np.int32), np.zeros(shape, np.int32)]
            for full, part in zip(batch, (inputs, targets)):
                full[:min(b, n - first)] = part[first:first + b]
            args = [jax.make_array_from_process_local_data(self.batch_sharding, x[rows], shape) for x in batch]
            pending.append((first, self._step(self.params, *args)))
            if len(pending) > 2:  # fetch late so the device keeps working while the host waits
                collect(*pending.pop(0))
        for item in pending:
            collect(*item)
        return outs


def _score_step(model: model_lib.GPT2, params, inputs: jax.Array, targets: jax.Array):
    logits = model.apply({"params": params}, inputs)[..., : model.cfg.vocab_size].astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    rank = jnp.sum(logits > target_logit[..., None], axis=-1, dtype=jnp.int32)
    return nll, jnp.argmax(logits, axis=-1) == targets, rank


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass(frozen=True)
class DocumentScores:
    """Per target of each document (entry i scores document[i + 1]): NLL in nats, whether the
    target was the argmax (top-1), and its rank among the vocabulary (top-5: rank < 5)."""

    nll: list[np.ndarray]
    hit: list[np.ndarray]
    rank: list[np.ndarray]


def document_scores(scorer: TokenScorer, documents: Sequence[np.ndarray], context: int, stride: int,
                    desc: str = "eval") -> DocumentScores:
    """DocumentScores of each token sequence by sliding windows (each target scored once)."""
    if context > scorer.model.cfg.n_positions:
        raise ValueError(f"context {context} exceeds the model's {scorer.model.cfg.n_positions} positions; "
                         f"lower --context")
    by_length: dict[int, list[tuple[int, Window]]] = {}
    for d, ids in enumerate(documents):
        if len(ids) >= 2:
            for w in sliding_windows(len(ids), context, stride):
                by_length.setdefault(bucket_length(w.length, context), []).append((d, w))
    sizes = [max(len(ids) - 1, 0) for ids in documents]
    out = DocumentScores(*([np.zeros(n, dtype) for n in sizes] for dtype in (np.float64, bool, np.int32)))
    for length, items in sorted(by_length.items()):
        inputs, targets = np.zeros((len(items), length), np.int32), np.zeros((len(items), length), np.int32)
        for r, (d, w) in enumerate(items):
            seg = documents[d][w.start:w.start + w.length + 1]
            inputs[r, :w.length], targets[r, :w.length] = seg[:-1], seg[1:]
        got = scorer.score_rows(inputs, targets, desc=f"{desc} ({len(items)} windows of {length})")
        for r, (d, w) in enumerate(items):
            for per_doc, x in zip((out.nll, out.hit, out.rank), got):
                per_doc[d][w.start + w.first_scored:w.start + w.length] = x[r, w.first_scored:w.length]
    return out


def document_nlls(scorer: TokenScorer, documents: Sequence[np.ndarray], context: int, stride: int,
                  desc: str = "eval") -> list[np.ndarray]:
    """Per-target NLL of each token sequence (target i is document[i + 1]) by sliding windows."""
    return document_scores(scorer, documents, context, stride, desc).nll


def token_nlls(model: model_lib.GPT2, params, ids: Sequence[int], *, context: int | None = None,
               stride: int | None = None, batch_size: int = 8) -> np.ndarray:
    """Per-target NLL (nats) of one token sequence by sliding windows: entry i scores ids[i + 1]."""
    context, stride = resolve_context(model, context, stride)
    scorer = TokenScorer(model, params, batch_size)
    return document_nlls(scorer, [np.asarray(ids, np.int64)], context, stride)[0]


# --------------------------------------------------------------------------- texts

def text_counts(texts: Sequence[str]) -> dict[str, int]:
    """Whitespace-separated words, UTF-8 bytes and characters of the texts."""
    return {"words": sum(len(t.split()) for t in texts), "bytes": sum(len(t.encode("utf-8")) for t in texts),
            "chars": sum(len(t) for t in texts)}


def text_metrics(total_nll: float, num_tokens: int, counts: dict[str, int]) -> dict[str, float]:
    """Token and word perplexity, bits per byte and per character from summed NLL (nats) and counts."""
    out = metrics_from_nll(total_nll, num_tokens, counts["bytes"])
    bits = total_nll / math.log(2)
    out.update(word_ppl=math.exp(min(total_nll / max(counts["words"], 1), 700.0)),
               bpc=bits / max(counts["chars"], 1), nll=total_nll, **counts)
    return out


def encode_documents(texts: Sequence[str], tokenizer, detokenizer: str = "none",
                     prepend_eos: bool = True) -> list[np.ndarray]:
    """Token ids of each (detokenized) text, with EOS in front when prepend_eos."""
    detok = detokenize.get(detokenizer)
    prefix = [tokenizer.eos_id] if prepend_eos else []
    return [np.asarray(prefix + tokenizer.encode(detok(t)), np.int64) for t in texts]


def protocol(context: int, stride: int, detokenizer: str = "none", prepend_eos: bool = True) -> str:
    """One line stating how `evaluate_texts` scored a dataset."""
    if stride == context:
        windows = f"non-overlapping windows of {context} tokens"
    else:
        windows = (f"windows of {context} tokens every {stride} (each token scored once, with >= "
                   f"{context - stride} tokens of context after the first window)")
    start = "EOS before each text (its first token scored)" if prepend_eos else "first token of each text unscored"
    return (f"{windows}; {start}; windows within one text; detokenizer {detokenizer}; "
            f"words/bytes/chars of the original text")


def resolve_context(model: model_lib.GPT2, context: int | None, stride: int | None) -> tuple[int, int]:
    """(context, stride) with defaults: the model's positions, and stride = context."""
    context = context or model.cfg.n_positions
    if not 1 <= context <= model.cfg.n_positions:
        raise ValueError(f"context {context} must be between 1 and the model's {model.cfg.n_positions} positions")
    stride = stride or context
    if not 1 <= stride <= context:
        raise ValueError(f"stride {stride} must be between 1 and the context {context}")
    return context, stride


def evaluate_texts(model: model_lib.GPT2, params, texts: Sequence[str], tokenizer, *, context: int | None = None,
                   stride: int | None = None, batch_size: int = 8, detokenizer: str = "none",
                   prepend_eos: bool = True, scorer: TokenScorer | None = None, progress: bool = False,
                   desc: str = "eval") -> dict:
    """NLL of `texts` by sliding windows (module doc) and its metrics: loss (nats/token), ppl,
    word_ppl, bpb, bpc, next-token top-1 / top-5 accuracy (fractions of the scored tokens), with
    the counts they divide by and the protocol line.

    Defaults: context = the model's positions, stride = context. A scorer built once can be
    passed to reuse its compiled shapes across calls.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("no texts to evaluate; pass at least one non-empty text")
    context, stride = resolve_context(model, context, stride)
    scorer = scorer or TokenScorer(model, params, batch_size, progress=progress)
    documents = encode_documents(texts, tokenizer, detokenizer, prepend_eos)
    scores = document_scores(scorer, documents, context, stride, desc)
    num_tokens = sum(len(x) for x in scores.nll)
    if num_tokens == 0:
        raise ValueError("the texts encode to no scorable tokens; pass longer texts")
    out = text_metrics(float(sum(x.sum() for x in scores.nll)), num_tokens, text_counts(texts))
    out.update(top1=sum(int(x.sum()) for x in scores.hit) / num_tokens,
               top5=sum(int((x < 5).sum()) for x in scores.rank) / num_tokens,
               context=context, stride=stride, protocol=protocol(context, stride, detokenizer, prepend_eos))
    return out
