"""Prompt->completion fine-tuning (SFT) as a task: next-token cross-entropy on the completion's tokens
and the EOS that ends them only; the prompt is context, never a target.

Batches: {'tokens' (B, T+1) = EOS + prompt + completion + EOS, right-padded; 'weights' (B, T),
1 where the target is a completion token} (posttrain/examples.py: one example per row).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gpt2_jax.data import loader
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.train import steps as step_lib
from gpt2_jax.train import tasks


def completion_loss(model: model_lib.GPT2, body: dict, inputs: jax.Array, targets: jax.Array,
                    weights: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(summed NLL of the weighted targets, their number) for inputs/targets (B, T)."""
    rngs = {"dropout": rng} if rng is not None else {}
    logits = model.apply({"params": body}, inputs, deterministic=rng is None, rngs=rngs)
    return step_lib.cross_entropy(logits, targets, weights, vocab_size=model.cfg.vocab_size)


@dataclasses.dataclass(frozen=True)
class SFTTask:
    """Prompt->completion language modeling (see the module docstring)."""

    lora: lora_lib.LoraSpec | None = None
    kind: str = "sft"
    train_ndims = {"tokens": 2, "weights": 2}
    eval_ndims = train_ndims

    def init_params(self, cfg, rng, seq_len=None):
        """GPT-2 params (+ adapters)."""
        return tasks.init_with_adapters(cfg, rng, seq_len, self.lora)[0]

    def model_params(self, params):
        """Adapters merged."""
        return tasks.body_params(params, self.lora)

    def loss(self, params, model, batch, rng):
        """Mean NLL per completion token of the batch."""
        tokens = batch["tokens"]
        total, count = completion_loss(model, self.model_params(params), tokens[:, :-1], tokens[:, 1:],
                                       batch["weights"], rng)
        return total / jnp.maximum(count, 1.0), {"completion_tokens": count}

    def eval_step(self, params, model, batch):
        """(summed NLL, completion tokens) of the batch."""
        tokens = batch["tokens"]
        return completion_loss(model, self.model_params(params), tokens[:, :-1], tokens[:, 1:], batch["weights"])

    def train_batch(self, split, seed, step, batch_size, seq_len, rows=None):
        """Rows of the batch of `step`: examples in a fresh seeded order each epoch."""
        return split.rows(loader.example_indices(seed, step, batch_size, len(split), rows))

    def evaluate(self, eval_fn, params, split, batch_size, seq_len, max_batches=None, batch_sharding=None,
                 progress=False, desc="eval"):
        """loss (nats per completion token), ppl and the number of completion tokens scored."""
        nll = count = 0.0
        for _, (n, c) in tasks.example_batches(eval_fn, params, split.rows, len(split), batch_size, batch_sharding,
                                               max_batches, progress, desc):
            nll, count = nll + float(n), count + float(c)
        loss = nll / max(count, 1.0)
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}

    def describe(self) -> dict:
        """Checkpoint meta."""
        return {"kind": self.kind, "lora": self.lora.to_dict() if self.lora else None}

    def report(self, run_dir, results) -> list:
        """Nothing beyond the loss curve."""
        return []
