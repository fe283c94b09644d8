"""`load()` a trained run for notebooks and scripts: params, config, tokenizer, generate, perplexity."""

from __future__ import annotations

import codecs
import dataclasses
import pathlib
from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from gpt2_jax import checkpoint as ckpt
from gpt2_jax import config as config_lib
from gpt2_jax import experiment, generate, train
from gpt2_jax import model as model_lib
from gpt2_jax.data import tokenizers


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated continuation: its text, token ids, per-token log-probabilities (if asked) and
    whether EOS or a stop string ended it (False: it ran out of tokens; None for beam search)."""

    text: str
    tokens: list[int]
    logprobs: list[float] | None = None
    finished: bool | None = None

    def __str__(self) -> str:
        return self.text


def _completion(tokenizer, tokens: list[int], logprobs, finished, stop: Sequence[str]) -> Completion:
    text = tokenizer.decode(tokens)
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut < 0:
        return Completion(text, tokens, logprobs, finished)
    n = next(n for n in range(len(tokens) + 1) if len(tokenizer.decode(tokens[:n])) > cut)
    keep = max(n - 1, 0)  # the tokens before the one that reaches into the stop string
    return Completion(text[:cut], tokens[:keep], logprobs[:keep] if logprobs else logprobs, True)


def stream_text(tokenizer, ids: Iterable[int], stop: Sequence[str] = ()) -> Iterator[str]:
    """Text pieces of a token stream, decoded incrementally (a character split across tokens is held
    back until complete); stops before the first stop string."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""  # text that might be the start of a stop string
    longest = max((len(s) for s in stop), default=0)
    for token in ids:
        held += decoder.decode(tokenizer.decode_bytes([token]))
        hits = [i for i in (held.find(s) for s in stop if s) if i >= 0]
        if hits:
            if min(hits):
                yield held[: min(hits)]
            return
        safe = len(held) - max(longest - 1, 0)
        if safe > 0:
            yield held[:safe]
            held = held[safe:]
    held += decoder.decode(b"", final=True)
    if held:
        yield held


@dataclasses.dataclass
class LoadedModel:
    """A model restored from a checkpoint, on this process's devices."""

    config: config_dict.ConfigDict
    model: model_lib.GPT2
    params: Any
    tokenizer: Any
    step: int
    meta: dict

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 100, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 num_samples: int = 1, num_beams: int = 1, length_penalty: float = 1.0, stop: Sequence[str] = (),
                 seed: int = 0, return_logprobs: bool = False, truncate: str = "error"):
        """Continue one prompt (returns a Completion, or a list of num_samples) or a list of prompts
        (returns a list with one entry per prompt). temperature 0 is greedy; num_beams > 1 is beam
        search (its completions are the best beams). Generation ends at EOS, and the text at the
        first of the `stop` strings (not included). The prompt is not repeated in the output.
        """
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        ids = [self.tokenizer.encode(t) for t in texts]
        eos = self.tokenizer.eos_id
        if num_beams > 1:
            beams = generate.beam_search(self.model, self.params, ids, max_new_tokens, num_beams,
                                         length_penalty=length_penalty, eos_id=eos, num_return=num_samples,
                                         truncate=truncate)
            rows = [[_completion(self.tokenizer, t, None, None, stop) for t in per] for per in beams.tokens]
        else:
            out = generate.generate(self.model, self.params, ids, max_new_tokens, seed, temperature=temperature,
                                    top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                    num_samples=num_samples, eos_id=eos, return_logprobs=return_logprobs,
                                    truncate=truncate)
            flat = [_completion(self.tokenizer, t, out.logprobs[i] if out.logprobs else None, out.finished[i], stop)
                    for i, t in enumerate(out.tokens)]
            rows = [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(texts))]
        per_prompt = [r[0] if num_samples == 1 else r for r in rows]
        return per_prompt[0] if single else per_prompt

    def stream(self, prompt: str, max_new_tokens: int = 100, *, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, stop: Sequence[str] = (),
               seed: int = 0, truncate: str = "error") -> Iterator[str]:
        """Yield the continuation's text piece by piece as tokens are decoded (never a broken character)."""
        ids = generate.stream(self.model, self.params, self.tokenizer.encode(prompt), max_new_tokens, seed,
                              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, eos_id=self.tokenizer.eos_id,
                              truncate=truncate)
        yield from stream_text(self.tokenizer, ids, stop)

    def logits(self, ids) -> jax.Array:
        """Logits (B, T, vocab) for token ids (B, T) or (T,)."""
        ids = jnp.atleast_2d(jnp.asarray(ids, jnp.int32))
        return self.model.apply({"params": self.params}, ids)[..., : self.model.cfg.vocab_size]

    def perplexity(self, text: str) -> float:
        """Token perplexity of text (EOS prepended so the first token is scored too)."""
        ids = [self.tokenizer.eos_id] + self.tokenizer.encode(text)
        ctx = self.model.cfg.n_positions
        if len(ids) > ctx + 1:
            raise ValueError(f"text is {len(ids) - 1} tokens, longer than the {ctx}-token context; "
                             "use gpt2-jax eval for long texts")
        batch = jnp.asarray([ids], jnp.int32)
        nll, count = train.make_eval_step(self.model)(self.params, batch, jnp.ones((1, len(ids) - 1)))
        return float(np.exp(nll / count))

    def summary(self) -> str:
        """One paragraph: parameter count, dtype, step and the run's final metrics."""
        n = model_lib.count_params(self.params)
        metrics = self.meta.get("metrics", {})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        c = self.model.cfg
        return (f"GPT-2 {c.n_layer}L x {c.n_embd}d x {c.n_head}h, {n:,} params ({c.param_dtype}), "
                f"vocab {c.vocab_size}, context {c.n_positions}; step {self.step}; {shown}")


def load(path: str | pathlib.Path, step: str | int = "latest") -> LoadedModel:
    """Load the checkpoint at `step` ('latest' | 'best' | int) of a run directory onto this host's devices."""
    manager = ckpt.make_manager(path, read_only=True)
    step = ckpt.resolve_step(manager, step)
    saved_cfg, meta = ckpt.restore_json(manager, step)
    cfg = config_lib.from_dict(saved_cfg)
    tokenizer = tokenizers.from_spec(meta["tokenizer"])
    mcfg = model_lib.GPT2Config(**meta["model"]) if "model" in meta else config_lib.model_config(cfg, tokenizer.vocab_size)
    model = model_lib.GPT2(mcfg)
    _, optimizer = experiment.optimizer_from_config(cfg)
    abstract = jax.eval_shape(lambda: train.init_state(model, optimizer, jax.random.key(0), 1))
    state = ckpt.restore_state(manager, step, ckpt.abstract_like(abstract))
    manager.close()
    return LoadedModel(cfg, model, state.params, tokenizer, step, meta)
