"""Knowledge distillation as a task: the teacher's forward inside the one jitted train step.

loss = (1 - alpha) * CE(student, data) + alpha * T^2 * KL(teacher_T || student_T)
       + hidden_weight * mean(1 - cos(student residual after block i, teacher's after block map[i]))

The teacher's params are the step's frozen inputs (train/tasks.py): an argument of the jitted step,
sharded by the student's logical rules, never differentiated, donated or in the optimizer state.
Both models' logits are computed `chunk` positions at a time under remat (as
steps.chunked_cross_entropy), so neither model's whole-batch logits exist; the KL runs over the
real vocabulary only, so either side may pad its table (vocab_multiple) to another size.
Batches, evaluation and reports are the language-model task's (the student is scored alone).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.posttrain import teacher as teacher_lib
from gpt2_jax.train import steps as step_lib
from gpt2_jax.train import tasks


def kl_sum(student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, temperature: float,
           vocab_size: int) -> jax.Array:
    """Summed (weighted) KL(teacher_T || student_T) per position, over the first vocab_size ids, in fp32."""
    s = student_logits[..., :vocab_size].astype(jnp.float32) / temperature
    t = teacher_logits[..., :vocab_size].astype(jnp.float32) / temperature
    log_ps, log_pt = jax.nn.log_softmax(s, axis=-1), jax.nn.log_softmax(t, axis=-1)
    return jnp.sum(jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1) * weights)


def kd_sums(student: model_lib.GPT2, params, hidden: jax.Array, teacher: model_lib.GPT2, teacher_params,
            teacher_hidden: jax.Array, targets: jax.Array, weights: jax.Array | None = None, temperature: float = 1.0,
            chunk: int = 0, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Summed data CE, KL and teacher CE (and the summed weights, 'count') of hidden states (B, T, D_s)
    and (B, T, D_t), `chunk` positions at a time (0: the whole sequence in one chunk)."""
    b, t = targets.shape
    chunk = chunk or t
    if weights is None:
        weights = jnp.ones((b, t), jnp.float32)
    n = -(-t // chunk)
    pad = n * chunk - t
    xs = (hidden, teacher_hidden, targets, weights)
    if pad:
        xs = tuple(jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)) for x in xs)

    def split(x):  # (n, B, chunk, ...): the scan walks the sequence, the batch axis keeps its sharding
        names = (None, "batch", "length", "embed")[: x.ndim + 1]
        return nn.with_logical_constraint(jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0), names)

    vocab = student.cfg.vocab_size
    logits = lambda model, p, h: model.apply({"params": p}, h, method=model_lib.GPT2.logits_from_hidden)

    @jax.checkpoint
    def chunk_sums(params, teacher_params, h, th, tgt, w):
        s_logits = logits(student, params, h)
        ce, count = step_lib.cross_entropy(s_logits, tgt, w, vocab_size=vocab, label_smoothing=label_smoothing)
        t_logits = jax.lax.stop_gradient(logits(teacher, teacher_params, th))
        t_ce, _ = step_lib.cross_entropy(t_logits, tgt, w, vocab_size=vocab)
        return {"ce": ce, "kl": kl_sum(s_logits, t_logits, w, temperature, vocab), "teacher_ce": t_ce, "count": count}

    def body(carry, xs):
        return jax.tree.map(jnp.add, carry, chunk_sums(params, teacher_params, *xs)), None

    zero = {k: jnp.zeros((), jnp.float32) for k in ("ce", "kl", "teacher_ce", "count")}
    return jax.lax.scan(body, zero, tuple(split(x) for x in xs))[0]


def hidden_cosine(student_residual, teacher_residual, pairs, weights: jax.Array) -> jax.Array:
    """Mean over the (student block, teacher block) pairs and weighted positions of 1 - cosine between
    the residual streams after those blocks (sown entry i + 1 is after block i)."""
    total = 0.0
    for i, j in pairs:
        s = student_residual[i + 1].astype(jnp.float32)
        t = jax.lax.stop_gradient(teacher_residual[j + 1]).astype(jnp.float32)
        cos = jnp.sum(s * t, -1) / jnp.maximum(jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1), 1e-8)
        total = total + jnp.sum((1.0 - cos) * weights) / jnp.sum(weights)
    return total / len(pairs)


@dataclasses.dataclass(frozen=True)
class DistillTask(tasks.LMTask):
    """Language modeling of the student against a frozen teacher (see the module docstring)."""

    teacher_cfg: model_lib.GPT2Config | None = None
    read_teacher: object = None  # abstract params with shardings -> the teacher's params (Teacher.read)
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 0.0
    layers: tuple[int, ...] | None = None  # student_init: the teacher blocks copied (None: random init)
    hidden_pairs: tuple[tuple[int, int], ...] = ()  # (student block, teacher block) of the hidden loss
    teacher_meta: dict = dataclasses.field(default_factory=dict)
    kind: str = "distill"

    def frozen_shapes(self):
        """The teacher's boxed abstract params (placed by the student's logical rules)."""
        return jax.eval_shape(lambda k: model_lib.init_params(self.teacher_cfg, k, 1), jax.random.key(0))

    def load_frozen(self, target):
        """The teacher's params read onto target's shardings."""
        return self.read_teacher(target)

    def start_params(self, params, teacher_params):
        """Random init, or the embeddings, ln_f and the named teacher blocks copied (student_init=layers:...)."""
        if self.layers is None:
            return params
        body = teacher_lib.copy_layers(self.model_params(params), teacher_params, self.layers,
                                       self.teacher_cfg.vocab_size)
        return {**params, **body}

    def loss(self, params, model, batch, rng, teacher_params):
        """The distillation loss of a (B, T+1) window batch; metrics ce, kl, teacher_ce (and hidden)."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        teacher = teacher_lib.teacher_model(self.teacher_cfg, model.cfg)
        collect = {"mutable": [model_lib.INTERMEDIATES]} if self.hidden_weight > 0 else {}
        rngs = {"dropout": rng} if rng is not None else {}
        body = self.model_params(params)
        s_out = model.apply({"params": body}, inputs, deterministic=rng is None, rngs=rngs,
                            method=model_lib.GPT2.hidden, **collect)
        t_out = teacher.apply({"params": jax.lax.stop_gradient(teacher_params)}, inputs,
                              method=model_lib.GPT2.hidden, **collect)
        hidden, t_hidden = (s_out[0], t_out[0]) if collect else (s_out, t_out)
        sums = kd_sums(model, body, hidden, teacher, teacher_params, t_hidden, targets,
                       temperature=self.temperature, chunk=self.loss_chunk, label_smoothing=self.label_smoothing)
        ce, kl, t_ce = (sums[k] / sums["count"] for k in ("ce", "kl", "teacher_ce"))
        loss = (1.0 - self.alpha) * ce + self.alpha * self.temperature ** 2 * kl
        metrics = {"ce": ce, "kl": kl, "teacher_ce": t_ce}
        if self.hidden_weight > 0:
            get = lambda out: out[1][model_lib.INTERMEDIATES]["residual"]
            metrics["hidden"] = hidden_cosine(get(s_out), get(t_out), self.hidden_pairs,
                                              jnp.ones(targets.shape, jnp.float32))
            loss = loss + self.hidden_weight * metrics["hidden"]
        return loss, metrics

    def describe(self) -> dict:
        """Checkpoint meta: the teacher and the loss weights."""
        return {**super().describe(), "kind": self.kind, "teacher": self.teacher_meta, "alpha": self.alpha,
                "temperature": self.temperature, "hidden_weight": self.hidden_weight,
                "student_init": list(self.layers) if self.layers is not None else "random"}
