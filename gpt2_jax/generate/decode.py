"""Decoding with a KV cache: one jitted prefill over the (left-padded) prompts, then a
`lax.while_loop` of one-token steps over a preallocated cache.

Prompt and output lengths are rounded up to buckets, so a call compiles once per (batch,
prompt bucket, output bucket, strategy) and later calls with other lengths in the same buckets
reuse it. Rows are left-padded: each row's positions start at 0 on its first real token and
padded cache slots are masked out, so a row decodes exactly as it would alone.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.generate import processors as sampling
from gpt2_jax.generate import window
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.parallel import sharding

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Generation:
    """Output of `generate`: per row (prompt x sample), the new token ids (cut at the first stop
    token, which is not included) and, when asked, each token's log-probability under the model."""

    tokens: list[list[int]]
    logprobs: list[list[float]] | None
    finished: list[bool]  # True where a stop token ended the row (False: it ran out of tokens)


def shard_params(model: model_lib.GPT2, params, mesh: jax.sharding.Mesh, rules):
    """params placed on mesh by the model's logical axis names and rules (for sharded decoding)."""
    boxed = jax.eval_shape(functools.partial(model_lib.init_params, model.cfg, seq_len=1), jax.random.key(0))
    return jax.device_put(params, sharding.param_shardings(boxed, rules, mesh))


def bucket(n: int) -> int:
    """n rounded up to a power of two, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length())


def init_cache(cfg: model_lib.GPT2Config, batch: int, length: int):
    """Zero KV cache: per layer a (k, v) pair, each (batch, n_head, length, head_dim) in the compute dtype."""
    shape = (batch, cfg.n_head, length, cfg.head_dim)
    return tuple((jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)) for _ in range(cfg.n_layer))


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, length) int32 with each prompt right-aligned, pad (B,) = number of pad slots per row)."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    pad = np.zeros((len(prompts),), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = p
        pad[i] = length - len(p)
    return tokens, pad


def _seen(tokens, valid, vocab):
    """(B, vocab) bool: which ids occur among the valid (non-pad) tokens of each row."""
    ids = jnp.where(valid, tokens, vocab)  # pad slots point past the end and are dropped
    return jnp.zeros((tokens.shape[0], vocab), bool).at[jnp.arange(tokens.shape[0])[:, None], ids].set(
        True, mode="drop")


def _positions(pad, start, length):
    """Positions of cache slots start..start+length-1 for rows with `pad` leading pad slots."""
    return jnp.maximum(start + jnp.arange(length)[None, :] - pad[:, None], 0)


def _prefill(model, params, tokens, pad, out_len: int):
    """Run the left-padded prompts into a fresh cache of prompt + out_len slots.

    Returns (last-position logits, cache, key_valid (B, S): False on padding slots)."""
    b, p = tokens.shape
    key_valid = jnp.arange(p + out_len)[None, :] >= pad[:, None]
    logits, cache = model.apply({"params": params}, tokens, _positions(pad, 0, p), key_valid,
                                init_cache(model.cfg, b, p + out_len), 0, method=model_lib.GPT2.decode)
    return logits, cache, key_valid


def _step(model, params, nxt, pad, key_valid, cache, slot):
    """Feed one token per row (nxt (B,)) at cache slot `slot`; returns (next logits, cache)."""
    return model.apply({"params": params}, nxt[:, None], _positions(pad, slot, 1), key_valid, cache, slot,
                       method=model_lib.GPT2.decode)


def _choose(model, logits, seen, settings, key, greedy: bool):
    """The next token of every row: argmax, or a sample from the processed logits."""
    scores = sampling.process_logits(logits, seen, settings, model.cfg.vocab_size)
    return (jnp.argmax(scores, -1) if greedy else jax.random.categorical(key, scores, -1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "out_len", "greedy", "return_logprobs", "repeats"))
def _sample_loop(model, params, tokens, pad, num_new, rng, settings, stop_ids, done, *, out_len: int, greedy: bool,
                 return_logprobs: bool, repeats: int = 1):
    """Prefill tokens (B, P), then decode B x repeats rows (prompt-major; done has that many)."""
    b, p = tokens.shape
    logits, cache, key_valid = _prefill(model, params, tokens, pad, out_len)
    seen = _seen(tokens, key_valid[:, :p], logits.shape[-1])
    if repeats > 1:  # each prompt is prefilled once and its cache copied to its samples
        logits, cache, key_valid, seen, pad = jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=0),
                                                           (logits, cache, key_valid, seen, pad))
        b *= repeats
    carry = dict(t=jnp.int32(0), cache=cache, logits=logits, out=jnp.zeros((b, out_len), jnp.int32),
                 logprobs=jnp.zeros((b, out_len), jnp.float32), done=done, seen=seen, rng=rng)

    def cond(c):
        return (c["t"] < num_new) & ~jnp.all(c["done"])

    def body(c):
        rng, key = jax.random.split(c["rng"])
        nxt = jnp.where(c["done"], stop_ids[0], _choose(model, c["logits"], c["seen"], settings, key, greedy))
        out = c["out"].at[:, c["t"]].set(nxt)
        logprobs = c["logprobs"]
        if return_logprobs:
            lp = jax.nn.log_softmax(c["logits"].astype(jnp.float32), -1)
            logprobs = logprobs.at[:, c["t"]].set(jnp.take_along_axis(lp, nxt[:, None], -1)[:, 0])
        done = c["done"] | jnp.any(nxt[:, None] == stop_ids[None, :], -1)
        seen = c["seen"].at[jnp.arange(b), nxt].set(True)
        logits, cache = _step(model, params, nxt, pad, key_valid, c["cache"], p + c["t"])
        return dict(t=c["t"] + 1, cache=cache, logits=logits, out=out, logprobs=logprobs, done=done, seen=seen,
                    rng=rng)

    c = jax.lax.while_loop(cond, body, carry)
    return c["out"], c["logprobs"], c["done"], c["t"], c["rng"]


def generate(model: model_lib.GPT2, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             rng: jax.Array | int = 0, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0, repetition_penalty: float = 1.0, num_samples: int = 1,
             stop_ids: Sequence[int] = (), eos_id: int | None = None, return_logprobs: bool = False,
             truncate: str = "slide", mesh: jax.sharding.Mesh | None = None, rules=None) -> Generation:
    """Sample (temperature > 0) or greedily decode (temperature 0) continuations of token prompts.

    An empty prompt starts from eos_id. Each prompt is decoded num_samples times (rows are
    prompt-major). A row stops after eos_id or any of stop_ids; the stop token is not returned.
    Past the context the window slides (truncate='slide', generate/window.py): the first
    `context - longest prompt` tokens come from one cache, then each window re-prefills every
    row's last tokens (the repetition penalty then sees the window's tokens only).
    With a mesh, params should be laid out on it (`shard_params`); the rows and the KV cache are
    split over the mesh axes of the 'batch' rule and the heads over those of 'heads'.
    """
    settings = sampling.Settings.checked(temperature, top_k, top_p, min_p, repetition_penalty)
    stops = list(dict.fromkeys(([eos_id] if eos_id is not None else []) + list(stop_ids)))
    context = model.cfg.n_positions
    prompts = [list(p) if len(p) else _start(eos_id) for p in prompts]
    prompts = window.check_lengths(prompts, max_new_tokens, context, truncate)
    rows = [p for p in prompts for _ in range(num_samples)]
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    stop_arr, arrays = jnp.asarray(stops or [-1], jnp.int32), settings.arrays()

    def decode(windows, n, out_len, rng, done):
        tokens, pad = left_pad(windows, bucket(max(map(len, windows))))
        with sharding.mesh_context(mesh, rules):
            got = _sample_loop(model, params, tokens, pad, jnp.int32(n), rng, arrays, stop_arr, jnp.asarray(done),
                               out_len=out_len, greedy=settings.greedy, return_logprobs=return_logprobs)
        out, logprobs, done, steps, rng = got
        out, logprobs, done, steps = jax.device_get((out, logprobs, done, steps))
        return out[:, :steps], logprobs[:, :steps], done, rng

    n = window.first_window(rows, max_new_tokens, context)
    out, logprobs, done, rng = decode(rows, n, bucket(n), rng, np.zeros(len(rows), bool))
    outs, lps, sequences = [out], [logprobs], [r + o for r, o in zip(rows, out.tolist())]
    made, step = out.shape[1], window.slide_step(context)
    while made < max_new_tokens and not done.all():  # the window slides: re-prefill each row's last tokens
        out, logprobs, done, rng = decode(window.next_prompts(sequences, context), min(step, max_new_tokens - made),
                                          bucket(step), rng, done)
        outs, lps = outs + [out], lps + [logprobs]
        sequences = [s + o for s, o in zip(sequences, out.tolist())]
        made += out.shape[1]
    out = np.concatenate(outs, 1)
    return _collect(out, np.concatenate(lps, 1) if return_logprobs else None, done, made, stops)


def _start(eos_id: int | None) -> list[int]:
    if eos_id is None:
        raise ValueError("empty prompt and no EOS token to start from; give a prompt")
    return [eos_id]


def _collect(out, logprobs, done, steps, stops) -> Generation:
    tokens, lps, finished = [], [] if logprobs is not None else None, []
    for i, row in enumerate(out[:, :steps].tolist()):
        end = next((j for j, t in enumerate(row) if t in stops), len(row))
        tokens.append(row[:end])
        finished.append(end < len(row))
        if lps is not None:
            lps.append([float(x) for x in logprobs[i, :end]])
    return Generation(tokens, lps, finished)


def stream(model: model_lib.GPT2, params, prompt: Sequence[int], max_new_tokens: int, rng: jax.Array | int = 0,
           *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
           repetition_penalty: float = 1.0, stop_ids: Sequence[int] = (), eos_id: int | None = None,
           truncate: str = "slide") -> Iterator[int]:
    """Yield the new token ids of one prompt as they are decoded (one jitted step per token); past
    the context the window slides as in `generate`, which gives the same tokens."""
    settings = sampling.Settings.checked(temperature, top_k, top_p, min_p, repetition_penalty)
    stops = set(([eos_id] if eos_id is not None else []) + list(stop_ids))
    context = model.cfg.n_positions
    sequence = window.check_lengths([list(prompt) or _start(eos_id)], max_new_tokens, context, truncate)[0]
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    room, used = window.first_window([sequence], max_new_tokens, context), 0
    tokens, pad = left_pad([sequence], bucket(len(sequence)))
    state = _stream_prefill(model, params, tokens, pad, out_len=bucket(room))
    for _ in range(max_new_tokens):
        if used == room:  # the cache is full: re-prefill the text's last tokens into a fresh one
            room, used, prompt = window.slide_step(context), 0, window.next_prompts([sequence], context)[0]
            tokens, pad = left_pad([prompt], bucket(len(prompt)))
            state = _stream_prefill(model, params, tokens, pad, out_len=bucket(room))
        rng, key = jax.random.split(rng)
        nxt, state = _stream_step(model, params, state, pad, jnp.int32(tokens.shape[1] + used), key, settings.arrays(),
                                  greedy=settings.greedy)
        token = int(nxt[0])
        if token in stops:
            return
        used += 1
        sequence.append(token)
        yield token


@functools.partial(jax.jit, static_argnames=("model", "out_len"))
def _stream_prefill(model, params, tokens, pad, *, out_len: int):
    logits, cache, key_valid = _prefill(model, params, tokens, pad, out_len)
    seen = _seen(tokens, key_valid[:, :tokens.shape[1]], logits.shape[-1])
    return dict(logits=logits, cache=cache, seen=seen, key_valid=key_valid)


@functools.partial(jax.jit, static_argnames=("model", "greedy"), donate_argnames=("state",))
def _stream_step(model, params, state, pad, slot, key, settings, *, greedy: bool):
    nxt = _choose(model, state["logits"], state["seen"], settings, key, greedy)
    logits, cache = _step(model, params, nxt, pad, state["key_valid"], state["cache"], slot)
    seen = state["seen"].at[jnp.arange(pad.shape[0]), nxt].set(True)
    return nxt, dict(logits=logits, cache=cache, seen=seen, key_valid=state["key_valid"])


def sample(model: model_lib.GPT2, params, prompt_ids: list[int], max_new_tokens: int, rng: jax.Array,
           temperature: float = 1.0, top_k: int = 0, eos_id: int | None = None) -> list[int]:
    """New token ids continuing one prompt (the training loop's end-of-run sample)."""
    return generate(model, params, [prompt_ids], max_new_tokens, rng, temperature=temperature, top_k=top_k,
                    eos_id=eos_id).tokens[0]


@dataclasses.dataclass(frozen=True)
class Beams:
    """Output of `beam_search`: per prompt, the best sequences (new ids, cut before EOS) and their scores
    (summed log-probability divided by length ** length_penalty), best first."""

    tokens: list[list[list[int]]]
    scores: list[list[float]]


def beam_search(model: model_lib.GPT2, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                num_beams: int = 4, *, length_penalty: float = 1.0, early_stopping: bool | str = False,
                eos_id: int | None = None, num_return: int = 1, truncate: str = "slide",
                mesh: jax.sharding.Mesh | None = None, rules=None) -> Beams:
    """Beam search with the conventions of transformers' `generate(num_beams=k)`.

    Each step keeps the 2k best continuations of all beams; those ending in EOS (or at the
    length limit) become finished hypotheses scored by length-normalized log-probability, the
    best k unfinished ones continue. early_stopping: True stops a prompt once k hypotheses are
    finished; False (default) stops when no running beam can beat the worst finished one at the
    current length; 'never' assumes the best case at the maximum length.
    """
    if num_beams < 1 or not 1 <= num_return <= num_beams:
        raise ValueError(f"need num_beams >= 1 and 1 <= num_return <= num_beams, got {num_beams}, {num_return}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    prompts = [list(p) if len(p) else _start(eos_id) for p in prompts]
    prompts = window.check_lengths(prompts, max_new_tokens, model.cfg.n_positions, truncate, can_slide=False)
    tokens, pad = left_pad([p for p in prompts for _ in range(num_beams)], bucket(max(map(len, prompts))))
    with sharding.mesh_context(mesh, rules):
        seqs, scores = _beam_loop(model, params, tokens, pad, jnp.int32(max_new_tokens),
                                  jnp.float32(length_penalty), jnp.int32(-1 if eos_id is None else eos_id),
                                  out_len=bucket(max_new_tokens), num_beams=num_beams, early_stopping=early_stopping)
    seqs, scores = jax.device_get((seqs, scores))
    out = [[_cut(row[:max_new_tokens].tolist(), eos_id) for row in beams[:num_return]] for beams in seqs]
    return Beams(out, [[float(s) for s in row[:num_return]] for row in scores])


def _cut(row: list[int], eos_id: int | None) -> list[int]:
    return row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row


def _gather(x, idx):
    """x (B, K, ...) gathered along axis 1 by idx (B, J)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnames=("model", "out_len", "num_beams", "early_stopping"))
def _beam_loop(model, params, tokens, pad, num_new, length_penalty, eos_id, *, out_len: int, num_beams: int,
               early_stopping):
    rows, p = tokens.shape
    b, k = rows // num_beams, num_beams
    keep = 2 * k  # continuations kept per step: enough that k stay unfinished after EOS
    logits, cache, key_valid = _prefill(model, params, tokens, pad, out_len)
    neg = jnp.float32(-1e9)
    carry = dict(
        t=jnp.int32(0), cache=cache, logits=logits,
        run_seq=jnp.zeros((b, k, out_len), jnp.int32), run_score=jnp.zeros((b, k)).at[:, 1:].set(neg),
        fin_seq=jnp.zeros((b, k, out_len), jnp.int32), fin_score=jnp.full((b, k), neg),
        fin_done=jnp.zeros((b, k), bool), improvable=jnp.ones((b, 1), bool), go=jnp.bool_(True))
    top_k_mask = jnp.arange(keep) < k

    def body(c):
        t = c["t"]
        vocab = c["logits"].shape[-1]
        logp = jax.nn.log_softmax(jnp.where(jnp.arange(vocab) < model.cfg.vocab_size,
                                            c["logits"].astype(jnp.float32), -jnp.inf), -1)
        total = (logp.reshape(b, k, vocab) + c["run_score"][:, :, None]).reshape(b, k * vocab)
        cand_score, cand = jax.lax.top_k(total, keep)
        parent, token = cand // vocab, cand % vocab
        cand_seq = _gather(c["run_seq"], parent).at[:, :, t].set(token)
        hits = (token == eos_id) | (t + 1 >= num_new)
        # the k best candidates that did not just finish keep running
        running_score = cand_score + neg * hits
        next_idx = jax.lax.top_k(running_score, k)[1]
        run_seq, run_score = _gather(cand_seq, next_idx), _gather(running_score, next_idx)
        run_parent = _gather(parent, next_idx)
        # finished candidates among the top k compete with the finished set, length-normalized
        new_score = cand_score / (t + 1).astype(jnp.float32) ** length_penalty
        if early_stopping is True:
            new_score += neg * jnp.all(c["fin_done"], -1, keepdims=True)
        just_done = hits & top_k_mask[None, :]
        new_score += neg * ~c["improvable"] + neg * ~just_done
        merged_score = jnp.concatenate([c["fin_score"], new_score], 1)
        best = jax.lax.top_k(merged_score, k)[1]
        fin_seq = _gather(jnp.concatenate([c["fin_seq"], cand_seq], 1), best)
        fin_score = _gather(merged_score, best)
        fin_done = _gather(jnp.concatenate([c["fin_done"], just_done], 1), best)
        # reorder the cache rows to follow their beams, then feed each beam's new token
        rows_from = (jnp.arange(b)[:, None] * k + run_parent).reshape(-1)
        cache = jax.tree.map(lambda x: x[rows_from], c["cache"])
        logits, cache = _step(model, params, run_seq[:, :, t].reshape(-1), pad, key_valid, cache, p + t)
        best_len = (t + 1).astype(jnp.float32)
        if early_stopping == "never":  # a positive length penalty favours the longest possible beam
            best_len = jnp.where(length_penalty > 0, num_new.astype(jnp.float32), best_len)
        best_running = run_score[:, :1] / best_len ** length_penalty
        worst_done = jnp.where(fin_done, jnp.min(fin_score, 1, keepdims=True), neg)
        improvable = c["improvable"] & jnp.any(best_running > worst_done, -1, keepdims=True)
        go = jnp.any(improvable) & ~jnp.all(hits)
        if early_stopping is True:
            go &= ~jnp.all(fin_done)
        return dict(t=t + 1, cache=cache, logits=logits, run_seq=run_seq, run_score=run_score, fin_seq=fin_seq,
                    fin_score=fin_score, fin_done=fin_done, improvable=improvable, go=go)

    c = jax.lax.while_loop(lambda c: c["go"] & (c["t"] < num_new), body, carry)
    return c["fin_seq"], c["fin_score"]


def sample_arrays(model: model_lib.GPT2, params, tokens: jax.Array, rng: jax.Array, settings: dict,
                  num_samples: int, out_len: int, eos_id: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Traceable sampling for use inside jit: prompts (B, P) of real tokens -> (B * num_samples, out_len)
    continuations (prompt-major rows) and their mask (1 up to and including a sampled eos_id, else 0).

    settings is `processors.Settings(...).arrays()`; every row decodes with the KV cache for exactly
    out_len steps unless all rows stopped, as `generate` would decode it alone.
    """
    pad = jnp.zeros((tokens.shape[0],), jnp.int32)
    stops = jnp.asarray([-1 if eos_id is None else eos_id], jnp.int32)
    out, _, _, _, _ = _sample_loop(model, params, tokens, pad, jnp.int32(out_len), rng, settings, stops,
                                   jnp.zeros((tokens.shape[0] * num_samples,), bool), out_len=out_len, greedy=False,
                                   return_logprobs=False, repeats=num_samples)
    stopped = jnp.cumsum(out == stops[0], axis=1)  # 1 from the first EOS on; the tokens after it are filler
    mask = (stopped - (out == stops[0]) == 0).astype(jnp.float32)
    return out, mask
