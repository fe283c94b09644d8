"""Training state, the jitted train/eval steps, and the loss; pure functions of their inputs."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.parallel import sharding


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


def chunked_cross_entropy(model: model_lib.GPT2, params, hidden: jax.Array, targets: jax.Array,
                          weights: jax.Array | None = None, chunk: int = 128, label_smoothing: float = 0.0):
    """cross_entropy of the model's logits for hidden (B, T, D), `chunk` positions at a time.

    A scan over chunks of the sequence computes each chunk's logits and loss and, under remat,
    recomputes them in the backward pass, so neither fp32 nor compute-dtype logits of the whole
    batch ever exist: peak logits memory is B x chunk x vocab. T need not divide by chunk (the
    tail is padded with zero weight). Returns (summed NLL, summed weights) like cross_entropy.
    """
    b, t, d = hidden.shape
    if weights is None:
        weights = jnp.ones((b, t), jnp.float32)
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets, weights))
    # (n, B, chunk, ...): the scan walks the sequence, the batch axis keeps its sharding.
    def split(x):
        names = (None, "batch", "length", "embed")[: x.ndim + 1]
        return nn.with_logical_constraint(jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0), names)

    vocab_size = model.cfg.vocab_size

    @jax.checkpoint
    def chunk_loss(params, h, tgt, w):
        logits = model.apply({"params": params}, h, method=model_lib.GPT2.logits_from_hidden)
        return cross_entropy(logits, tgt, w, vocab_size=vocab_size, label_smoothing=label_smoothing)

    def body(carry, xs):
        nll, count = chunk_loss(params, *xs)
        return (carry[0] + nll, carry[1] + count), None

    zero = jnp.zeros((), jnp.float32)
    (total, count), _ = jax.lax.scan(body, (zero, zero), (split(hidden), split(targets), split(weights)))
    return total, count


def lm_loss(params, model: model_lib.GPT2, batch: jax.Array, rng: jax.Array | None = None,
            label_smoothing: float = 0.0, loss_chunk: int = 0) -> jax.Array:
    """Mean next-token cross-entropy of a (B, T+1) token batch; dropout on when rng is given.

    loss_chunk > 0 computes the logits that many positions at a time (chunked_cross_entropy).
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    rngs = {"dropout": rng} if rng is not None else {}
    if loss_chunk:
        hidden = model.apply({"params": params}, inputs, deterministic=rng is None, rngs=rngs,
                             method=model_lib.GPT2.hidden)
        total, count = chunked_cross_entropy(model, params, hidden, targets, chunk=loss_chunk,
                                             label_smoothing=label_smoothing)
        return total / count
    logits = model.apply({"params": params}, inputs, deterministic=rng is None, rngs=rngs)
    total, count = cross_entropy(logits, targets, vocab_size=model.cfg.vocab_size, label_smoothing=label_smoothing)
    return total / count


def has_dropout(cfg: model_lib.GPT2Config) -> bool:
    """Whether the model config asks for any dropout (and so needs a dropout rng)."""
    return max(cfg.embd_dropout, cfg.attn_dropout, cfg.resid_dropout) > 0


def strip_boxes(tree):
    """Plain arrays from a logically partitioned tree, without sharding constraints (the caller's
    jit out_shardings place them, so a dimension the mesh cannot split stays whole)."""
    is_box = lambda x: isinstance(x, nn.Partitioned)
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def init_state(model: model_lib.GPT2, optimizer: optax.GradientTransformation, rng: jax.Array,
               seq_len: int) -> TrainState:
    """A fresh TrainState: step 0, random params (unboxed), optimizer state, the data-free rng."""
    init_rng, state_rng = jax.random.split(rng)
    params = strip_boxes(model_lib.init_params(model.cfg, init_rng, seq_len))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=state_rng)


def make_train_step(model: model_lib.GPT2, optimizer: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], label_smoothing: float = 0.0,
                    loss_chunk: int = 0) -> Callable:
    """train_step(state, batch) -> (state, metrics); batch is (accum, B, T+1) int32.

    The accum micro-batches are scanned inside one step and their gradients averaged, so
    accum_steps x B rows give the same update as one batch of that many rows.
    """
    dropout = has_dropout(model.cfg)

    def grad_of(params, micro_batch, rng):
        return jax.value_and_grad(lm_loss)(params, model, micro_batch, rng if dropout else None, label_smoothing,
                                           loss_chunk)

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


def make_eval_step(model: model_lib.GPT2, loss_chunk: int = 0) -> Callable:
    """eval_step(params, batch (B, T+1), weights (B, T)) -> (summed NLL, number of scored tokens)."""

    def eval_step(params, batch: jax.Array, weights: jax.Array):
        if loss_chunk:
            hidden = model.apply({"params": params}, batch[:, :-1], method=model_lib.GPT2.hidden)
            return chunked_cross_entropy(model, params, hidden, batch[:, 1:], weights, loss_chunk)
        logits = model.apply({"params": params}, batch[:, :-1], deterministic=True)
        return cross_entropy(logits, batch[:, 1:], weights)

    return eval_step


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted, sharded init/train/eval steps of one model on one mesh, and their layouts."""

    init: Callable  # () -> TrainState
    train: Callable  # (state, batch (accum, B, T+1)) -> (state, metrics)
    eval: Callable  # (params, batch (B, T+1), weights (B, T)) -> (nll, count)
    mesh: jax.sharding.Mesh
    rules: tuple
    abstract_state: Any  # ShapeDtypeStructs of the TrainState
    state_sharding: Any
    train_batch_sharding: jax.sharding.NamedSharding
    eval_batch_sharding: jax.sharding.NamedSharding


def make_steps(model: model_lib.GPT2, optimizer: optax.GradientTransformation, schedule: Callable,
               mesh: jax.sharding.Mesh, rules, seed: int, seq_len: int, label_smoothing: float = 0.0,
               loss_chunk: int = 0) -> Steps:
    """init, train_step and eval_step, each one jax.jit with in/out shardings on mesh.

    The train state is donated, so params and optimizer state update in place.
    """
    rng = jax.random.key(seed)
    init = functools.partial(init_state, model, optimizer, rng, seq_len)
    abstract_state = jax.eval_shape(init)
    boxed = jax.eval_shape(functools.partial(model_lib.init_params, model.cfg, seq_len=1), rng)
    params_sh = sharding.param_shardings(boxed, rules, mesh)
    state_sh = sharding.state_shardings(abstract_state, params_sh, optimizer, mesh)
    repl = sharding.replicated(mesh)
    train_batch_sh = sharding.batch_sharding(mesh, rules, ndim=3, batch_dim=1)
    eval_batch_sh = sharding.batch_sharding(mesh, rules, ndim=2)
    train_fn = make_train_step(model, optimizer, schedule, label_smoothing, loss_chunk)
    eval_fn = make_eval_step(model, loss_chunk)
    jit = lambda fn, **kw: sharding.with_mesh(jax.jit(fn, **kw), mesh, rules)
    return Steps(
        init=jit(init, out_shardings=state_sh),
        train=jit(train_fn, in_shardings=(state_sh, train_batch_sh), out_shardings=(state_sh, repl),
                  donate_argnums=(0,)),
        eval=jit(eval_fn, in_shardings=(params_sh, eval_batch_sh, eval_batch_sh), out_shardings=repl),
        mesh=mesh, rules=rules, abstract_state=abstract_state, state_sharding=state_sh,
        train_batch_sharding=train_batch_sh, eval_batch_sharding=eval_batch_sh)
