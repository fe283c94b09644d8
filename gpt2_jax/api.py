"""`load()` a trained run for notebooks and scripts: params, config, tokenizer, generate, perplexity."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from gpt2_jax import checkpoint as ckpt
from gpt2_jax import config as config_lib
from gpt2_jax import experiment, generate, train
from gpt2_jax import model as model_lib
from gpt2_jax.data import tokenizers


@dataclasses.dataclass
class LoadedModel:
    """A model restored from a checkpoint, on this process's devices."""

    config: config_dict.ConfigDict
    model: model_lib.GPT2
    params: Any
    tokenizer: Any
    step: int
    meta: dict

    def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0) -> str:
        """Continuation of prompt (text only; the prompt is not repeated)."""
        ids = self.tokenizer.encode(prompt)
        new = generate.sample(self.model, self.params, ids, max_new_tokens, jax.random.key(seed),
                              temperature=temperature, top_k=top_k, eos_id=self.tokenizer.eos_id)
        return self.tokenizer.decode(new)

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
