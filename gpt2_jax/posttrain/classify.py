"""Sequence classification as a task: GPT-2's last real token's final hidden state -> a linear head
without bias (Hugging Face's GPT2ForSequenceClassification), cross-entropy over `num_labels`,
optionally plus lambda x the language-model loss on the same text (the GPT-1 fine-tuning objective).

Batches: {'tokens' (B, T) right-padded, 'lengths' (B,), 'labels' (B,)}. Metrics: accuracy,
macro-F1, per-class recall, the confusion matrix (a PNG per held-out split in the run directory).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt2_jax.data import loader
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import heads
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.posttrain import metrics as metrics_lib
from gpt2_jax.train import steps as step_lib
from gpt2_jax.train import tasks


def hidden_states(model: model_lib.GPT2, body: dict, tokens: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Final hidden states (B, T, D); dropout on when rng is given."""
    rngs = {"dropout": rng} if rng is not None else {}
    return model.apply({"params": body}, tokens, deterministic=rng is None, rngs=rngs, method=model_lib.GPT2.hidden)


def lm_loss_on_texts(model: model_lib.GPT2, body: dict, hidden: jax.Array, tokens: jax.Array,
                     lengths: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over each row's real tokens (the auxiliary objective)."""
    logits = model.apply({"params": body}, hidden[:, :-1], method=model_lib.GPT2.logits_from_hidden)
    weights = (jnp.arange(tokens.shape[1] - 1)[None, :] < (lengths[:, None] - 1)).astype(jnp.float32)
    total, count = step_lib.cross_entropy(logits, tokens[:, 1:], weights, vocab_size=model.cfg.vocab_size)
    return total / jnp.maximum(count, 1.0)


@dataclasses.dataclass(frozen=True)
class ClassifyTask:
    """Classification of whole texts into id2label's classes (see the module docstring)."""

    id2label: tuple[str, ...]
    pad_id: int
    aux_lm_weight: float = 0.0
    lora: lora_lib.LoraSpec | None = None
    kind: str = "classify"
    train_ndims = {"tokens": 2, "lengths": 1, "labels": 1}
    eval_ndims = train_ndims

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.id2label)

    def init_params(self, cfg, rng, seq_len=None):
        """GPT-2 params (+ adapters) and params['score'] = {'kernel': (n_embd, num_labels)}."""
        params, head_rng = tasks.init_with_adapters(cfg, rng, seq_len, self.lora)
        params[heads.SCORE_KEY] = heads.init_score(cfg, self.num_labels, head_rng)
        return params

    def model_params(self, params):
        """The GPT-2 params (adapters merged, head left out)."""
        return tasks.body_params(params, self.lora, extra=(heads.SCORE_KEY,))

    def logits(self, params, model, tokens, lengths, rng=None):
        """(class logits (B, num_labels) fp32, final hidden states)."""
        body = self.model_params(params)
        hidden = hidden_states(model, body, tokens, rng)
        return heads.classify_logits(params[heads.SCORE_KEY], hidden, lengths), hidden

    def loss(self, params, model, batch, rng):
        """Mean cross-entropy over the batch (+ aux_lm_weight x the texts' LM loss); train accuracy."""
        logits, hidden = self.logits(params, model, batch["tokens"], batch["lengths"], rng)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))
        metrics = {"accuracy": jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)),
                   "class_loss": ce}
        if not self.aux_lm_weight:
            return ce, metrics
        lm = lm_loss_on_texts(model, self.model_params(params), hidden, batch["tokens"], batch["lengths"])
        return ce + self.aux_lm_weight * lm, {**metrics, "lm_loss": lm}

    def eval_step(self, params, model, batch):
        """Class logits (B, num_labels)."""
        return self.logits(params, model, batch["tokens"], batch["lengths"])[0]

    def train_batch(self, split, seed, step, batch_size, seq_len, rows=None):
        """Rows of the batch of `step`: examples in a fresh seeded order each epoch."""
        return split.rows(loader.example_indices(seed, step, batch_size, len(split), rows),
                          pad={"tokens": self.pad_id, "lengths": 1})

    def predict(self, eval_fn, params, split, batch_size, max_batches=None, batch_sharding=None,
                progress=False, desc="eval") -> tuple[np.ndarray, np.ndarray]:
        """(example indices, class logits) of the split's examples in order."""
        make = lambda idx: split.rows(idx, pad={"tokens": self.pad_id, "lengths": 1})
        index, logits = [], []
        for idx, out in tasks.example_batches(eval_fn, params, make, len(split), batch_size, batch_sharding,
                                              max_batches, progress, desc):
            keep = idx >= 0
            index.append(idx[keep])
            logits.append(np.asarray(out)[keep])
        return np.concatenate(index), np.concatenate(logits)

    def evaluate(self, eval_fn, params, split, batch_size, seq_len, max_batches=None, batch_sharding=None,
                 progress=False, desc="eval"):
        """loss, accuracy, macro_f1, recall_<class>, confusion of the split (or its first max_batches)."""
        index, logits = self.predict(eval_fn, params, split, batch_size, max_batches, batch_sharding, progress, desc)
        return metrics_lib.from_logits(split.arrays["labels"][index], logits, self.id2label)

    def describe(self) -> dict:
        """Checkpoint meta: what load() and the exports need to rebuild the head."""
        return {"kind": self.kind, "num_labels": self.num_labels, "id2label": list(self.id2label),
                "pad_token_id": self.pad_id, "aux_lm_weight": self.aux_lm_weight,
                "lora": self.lora.to_dict() if self.lora else None}

    def report(self, run_dir, results) -> list[pathlib.Path]:
        """confusion_<split>.png for each held-out split in results."""
        out = []
        for prefix, name in (("val", "validation"), ("test", "test")):
            if f"{prefix}_confusion" in results:
                title = (f"{name}: accuracy {results[f'{prefix}_accuracy']:.3f}, "
                         f"macro-F1 {results[f'{prefix}_macro_f1']:.3f}")
                out.append(metrics_lib.plot_confusion(results[f"{prefix}_confusion"], self.id2label,
                                                      pathlib.Path(run_dir) / f"confusion_{name}.png", title))
        return out
