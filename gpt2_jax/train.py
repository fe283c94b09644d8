"""Training state, the jitted train/eval steps, and the loss; pure functions of their inputs."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from gpt2_jax import model as model_lib


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes; what a checkpoint's `state` item holds."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None,
                  vocab_size: int | None = None, label_smoothing: float = 0.0):
    """Summed next-token NLL (and the summed weights) in fp32.

    Label smoothing spreads its mass over the first `vocab_size` ids only, so the padded rows of
    an embedding table rounded up for speed never receive probability.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if label_smoothing > 0:
        smooth = -jnp.mean(logp[..., : vocab_size or logp.shape[-1]], axis=-1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    if weights is None:
        weights = jnp.ones_like(nll)
    return jnp.sum(nll * weights), jnp.sum(weights)


def lm_loss(params, model: model_lib.GPT2, batch: jax.Array, rng: jax.Array | None = None,
            label_smoothing: float = 0.0) -> jax.Array:
    """Mean next-token cross-entropy of a (B, T+1) token batch; dropout on when rng is given."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    rngs = {"dropout": rng} if rng is not None else {}
    logits = model.apply({"params": params}, inputs, deterministic=rng is None, rngs=rngs)
    total, count = cross_entropy(logits, targets, vocab_size=model.cfg.vocab_size, label_smoothing=label_smoothing)
    return total / count


def has_dropout(cfg: model_lib.GPT2Config) -> bool:
    """Whether the model config asks for any dropout (and so needs a dropout rng)."""
    return max(cfg.embd_dropout, cfg.attn_dropout, cfg.resid_dropout) > 0


def init_state(model: model_lib.GPT2, optimizer: optax.GradientTransformation, rng: jax.Array,
               seq_len: int) -> TrainState:
    """A fresh TrainState: step 0, random params (unboxed), optimizer state, the data-free rng."""
    init_rng, state_rng = jax.random.split(rng)
    params = nn.meta.unbox(model_lib.init_params(model.cfg, init_rng, seq_len))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=state_rng)


def make_train_step(model: model_lib.GPT2, optimizer: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], label_smoothing: float = 0.0) -> Callable:
    """train_step(state, batch) -> (state, metrics); batch is (accum, B, T+1) int32.

    The accum micro-batches are scanned inside one step and their gradients averaged, so
    accum_steps x B rows give the same update as one batch of that many rows.
    """
    dropout = has_dropout(model.cfg)

    def grad_of(params, micro_batch, rng):
        return jax.value_and_grad(lm_loss)(params, model, micro_batch, rng if dropout else None, label_smoothing)

    def train_step(state: TrainState, batch: jax.Array):
        rng, step_rng = jax.random.split(state.rng)
        accum = batch.shape[0]
        if accum == 1:
            loss, grads = grad_of(state.params, batch[0], step_rng)
        else:
            def body(carry, xs):
                micro_batch, micro_rng = xs
                loss, grads = grad_of(state.params, micro_batch, micro_rng)
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(body, zeros, (batch, jax.random.split(step_rng, accum)))
            loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new_state, metrics

    return train_step


def make_eval_step(model: model_lib.GPT2) -> Callable:
    """eval_step(params, batch (B, T+1), weights (B, T)) -> (summed NLL, number of scored tokens)."""

    def eval_step(params, batch: jax.Array, weights: jax.Array):
        logits = model.apply({"params": params}, batch[:, :-1], deterministic=True)
        return cross_entropy(logits, batch[:, 1:], weights)

    return eval_step


def jit_steps(train_step: Callable, eval_step: Callable) -> tuple[Callable, Callable]:
    """Compile-once versions: the state is donated so params and optimizer state update in place."""
    return jax.jit(train_step, donate_argnums=(0,)), jax.jit(eval_step)
