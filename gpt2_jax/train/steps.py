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


def lm_nll(params, model: model_lib.GPT2, batch: jax.Array, rng: jax.Array | None = None,
           label_smoothing: float = 0.0, loss_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(summed next-token NLL, number of targets) of a (B, T+1) token batch; dropout on when rng is given.

    loss_chunk > 0 computes the logits that many positions at a time (chunked_cross_entropy).
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    rngs = {"dropout": rng} if rng is not None else {}
    if loss_chunk:
        hidden = model.apply({"params": params}, inputs, deterministic=rng is None, rngs=rngs,
                             method=model_lib.GPT2.hidden)
        return chunked_cross_entropy(model, params, hidden, targets, chunk=loss_chunk, label_smoothing=label_smoothing)
    logits = model.apply({"params": params}, inputs, deterministic=rng is None, rngs=rngs)
    return cross_entropy(logits, targets, vocab_size=model.cfg.vocab_size, label_smoothing=label_smoothing)


def row_groups(batch: jax.Array, groups: int) -> list[jax.Array]:
    """The rows of batch (B, ...) dealt into `groups` groups (row i to group i % groups): taken from a
    (B / groups, groups, ...) view, so each device's block of rows splits without moving data."""
    view = batch.reshape(batch.shape[0] // groups, groups, *batch.shape[1:])
    return [view[:, g] for g in range(groups)]


def lm_loss(params, model: model_lib.GPT2, batch: jax.Array, rng: jax.Array | None = None,
            label_smoothing: float = 0.0, loss_chunk: int = 0, groups: int = 1) -> jax.Array:
    """Mean next-token cross-entropy of a (B, T+1) token batch; dropout on when rng is given.

    groups > 1 runs the model on that many groups of rows (row_groups) with nothing shared between
    their forward and backward passes but the params, so XLA:CPU, which runs a matmul on one core,
    can run the groups on separate cores (measured: BENCHMARKS.md). The mean is over all targets.
    """
    if groups == 1:
        total, count = lm_nll(params, model, batch, rng, label_smoothing, loss_chunk)
        return total / count
    parts = [lm_nll(params, model, rows, None if rng is None else jax.random.fold_in(rng, g), label_smoothing,
                    loss_chunk) for g, rows in enumerate(row_groups(batch, groups))]
    return sum(p[0] for p in parts) / sum(p[1] for p in parts)


def has_dropout(cfg: model_lib.GPT2Config) -> bool:
    """Whether the model config asks for any dropout (and so needs a dropout rng)."""
    return max(cfg.embd_dropout, cfg.attn_dropout, cfg.resid_dropout) > 0


def strip_boxes(tree):
    """Plain arrays from a logically partitioned tree, without sharding constraints (the caller's
    jit out_shardings place them, so a dimension the mesh cannot split stays whole)."""
    is_box = lambda x: isinstance(x, nn.Partitioned)
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def init_params(model: model_lib.GPT2, rng: jax.Array, seq_len: int | None = None, task=None):
    """Random boxed params: the model's, or the task's (model + head / adapters) when a task is given."""
    if task is None:
        return model_lib.init_params(model.cfg, rng, seq_len)
    return task.init_params(model.cfg, rng, seq_len)


def init_state(model: model_lib.GPT2, optimizer: optax.GradientTransformation, rng: jax.Array,
               seq_len: int, task=None, frozen=None) -> TrainState:
    """A fresh TrainState: step 0, random params (unboxed), optimizer state, the data-free rng.

    With frozen inputs (a teacher's params), a task's `start_params(params, frozen)` may seed them."""
    init_rng, state_rng = jax.random.split(rng)
    params = strip_boxes(init_params(model, init_rng, seq_len, task))
    if frozen is not None and hasattr(task, "start_params"):
        params = task.start_params(params, frozen)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=state_rng)


def split_trainable(params, trainable):
    """(trained, frozen): two trees like params, each holding None where the other holds the leaf."""
    pick = lambda want: jax.tree.map(lambda t, p: p if t == want else None, trainable, params)
    return pick(True), pick(False)


def join_trainable(trained, frozen):
    """The inverse of split_trainable."""
    return jax.tree.map(lambda t, f: f if t is None else t, trained, frozen, is_leaf=lambda x: x is None)


def make_train_step(model: model_lib.GPT2, optimizer: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], label_smoothing: float = 0.0,
                    loss_chunk: int = 0, task=None, trainable=None, groups: int = 1) -> Callable:
    """train_step(state, batch) -> (state, metrics); batch is (accum, B, T+1) int32, or with a task
    (train/tasks.py) a dict of (accum, B, ...) arrays and its loss(params, model, batch, rng).

    The accum micro-batches are scanned inside one step and their gradients averaged, so
    accum_steps x B rows give the same update as one batch of that many rows. `trainable` (a tree
    of bools like the params) differentiates only the True leaves; the others pass through
    bitwise unchanged (the optimizer must give them no update: optim.groups). A task with
    `inner_epochs` > 1 takes that many updates on each batch; a task with `uses_reference` gets
    the frozen reference params as a third argument, train_step(state, batch, reference), passed
    on to its loss (never donated, never differentiated); so does a task with frozen inputs
    (`frozen_shapes`, e.g. a teacher): train_step(state, batch, inputs), loss(..., rng, inputs).
    `groups` > 1 splits each micro-batch of the language-model loss into independent row groups
    (lm_loss); tasks keep their own losses.
    """
    dropout = has_dropout(model.cfg)
    epochs = getattr(task, "inner_epochs", 1)

    def loss_of(params, micro_batch, rng, frozen):
        if task is None:
            return lm_loss(params, model, micro_batch, rng, label_smoothing, loss_chunk), {}
        return task.loss(params, model, micro_batch, rng, *frozen)

    def grad_of(params, micro_batch, rng, frozen):
        rng = rng if dropout else None
        if task is None and trainable is None:  # pre-training: the step as it always was
            loss, grads = jax.value_and_grad(lm_loss)(params, model, micro_batch, rng, label_smoothing, loss_chunk,
                                                      groups)
            return (loss, {}), grads
        if trainable is None:
            return jax.value_and_grad(loss_of, has_aux=True)(params, micro_batch, rng, frozen)
        trained, frozen_leaves = split_trainable(params, trainable)
        out, grads = jax.value_and_grad(lambda t: loss_of(join_trainable(t, frozen_leaves), micro_batch, rng, frozen),
                                        has_aux=True)(trained)
        return out, join_trainable(grads, jax.tree.map(jnp.zeros_like, frozen_leaves))  # zeros: dropped by XLA

    def update(params, opt_state, batch, step_rng, frozen):
        accum = jax.tree.leaves(batch)[0].shape[0]
        if accum == 1:
            (loss, aux), grads = grad_of(params, jax.tree.map(lambda x: x[0], batch), step_rng, frozen)
        else:
            def body(carry, xs):
                micro_batch, micro_rng = xs
                (loss, aux), grads = grad_of(params, micro_batch, micro_rng, frozen)
                return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

            aux_shape = jax.eval_shape(lambda: grad_of(params, jax.tree.map(lambda x: x[0], batch),
                                                       step_rng, frozen)[0][1])
            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), aux_shape),
                     jax.tree.map(jnp.zeros_like, params))
            (loss, aux, grads), _ = jax.lax.scan(body, zeros, (batch, jax.random.split(step_rng, accum)))
            loss, aux, grads = jax.tree.map(lambda x: x / accum, (loss, aux, grads))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        if trainable is None:
            params = optax.apply_updates(params, updates)
        else:
            params = jax.tree.map(lambda t, p, u: optax.apply_updates(p, u) if t else p, trainable, params, updates)
        return params, opt_state, (loss, aux, optax.tree.norm(grads))

    def train_step(state: TrainState, batch, *frozen):
        rng, step_rng = jax.random.split(state.rng)
        if epochs == 1:
            params, opt_state, (loss, aux, grad_norm) = update(state.params, state.opt_state, batch, step_rng, frozen)
        else:  # a task's inner epochs (PPO): several updates on one batch; the first one's metrics are logged
            def epoch(carry, epoch_rng):
                params, opt_state, out = update(*carry, batch, epoch_rng, frozen)
                return (params, opt_state), out

            (params, opt_state), outs = jax.lax.scan(epoch, (state.params, state.opt_state),
                                                     jax.random.split(step_rng, epochs))
            loss, aux, grad_norm = jax.tree.map(lambda x: x[0], outs)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), **aux}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new_state, metrics

    return train_step


def resolve_row_groups(requested: int, mesh: jax.sharding.Mesh, rules, batch_size: int) -> int:
    """The row groups of the train step (lm_loss) for `train.row_groups`: N as asked, checked to divide
    each batch shard's rows; 0 (auto) gives 2 on CPU when each shard's rows are even, else 1: on
    a GPU or TPU one matmul already fills the device."""
    rows = batch_size // sharding.batch_shards(mesh.shape, rules)
    if requested == 0:
        return 2 if mesh.devices.flat[0].platform == "cpu" and rows % 2 == 0 else 1
    if requested < 1 or rows % requested:
        raise ValueError(f"train.row_groups={requested} must divide the {rows} rows each batch shard holds "
                         f"(data.batch_size={batch_size}); use a divisor of {rows}, or 0 for auto")
    return requested


def make_eval_step(model: model_lib.GPT2, loss_chunk: int = 0, task=None) -> Callable:
    """eval_step(params, batch (B, T+1), weights (B, T)) -> (summed NLL, number of scored tokens);
    with a task, eval_step(params, batch dict) -> task.eval_step's outputs."""
    if task is not None:
        return lambda params, batch: task.eval_step(params, model, batch)

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
    train: Callable  # (state, batch (accum, B, T+1) or a task's dict) -> (state, metrics)
    eval: Callable  # (params, batch (B, T+1), weights (B, T)) -> (nll, count); a task's: (params, batch dict)
    mesh: jax.sharding.Mesh
    rules: tuple
    abstract_state: Any  # ShapeDtypeStructs of the TrainState
    state_sharding: Any
    train_batch_sharding: Any  # a NamedSharding, or a dict of them for a task's batch
    eval_batch_sharding: Any
    reference_sharding: Any = None  # a task with uses_reference: the frozen GPT-2 params' shardings
    frozen: Any = None  # a task's frozen inputs (a teacher's params) on the mesh, bound into init and train
    frozen_sharding: Any = None


def _bind(fn: Callable, inputs) -> Callable:
    """fn with a last argument `inputs` bound (keeps `.lower` for ahead-of-time compiles)."""
    call = lambda *args: fn(*args, inputs)
    call.lower = lambda *args: fn.lower(*args, inputs)
    return call


def frozen_inputs(task, mesh: jax.sharding.Mesh, rules) -> tuple[Any, Any]:
    """(values, shardings) of a task's frozen inputs, read onto mesh by the logical rules of its
    params; (None, None) for a task without any (`frozen_shapes` / `load_frozen`, train/tasks.py)."""
    if task is None or not hasattr(task, "frozen_shapes"):
        return None, None
    boxed = task.frozen_shapes()
    shardings = sharding.param_shardings(boxed, rules, mesh)
    return task.load_frozen(sharding.abstract_on(nn.meta.unbox(boxed), shardings)), shardings


def make_steps(model: model_lib.GPT2, optimizer: optax.GradientTransformation, schedule: Callable,
               mesh: jax.sharding.Mesh, rules, seed: int, seq_len: int, label_smoothing: float = 0.0,
               loss_chunk: int = 0, task=None, trainable=None, row_groups: int = 1) -> Steps:
    """init, train_step and eval_step, each one jax.jit with in/out shardings on mesh.

    The train state is donated, so params and optimizer state update in place. A task
    (train/tasks.py) brings its params, loss, eval outputs and batch dicts; `trainable` freezes
    the False leaves (see make_train_step). A task's frozen inputs (a teacher) are read here, placed
    by the same rules, and passed to every train step as an argument that is not donated.
    row_groups: independent row groups of the language-model loss (resolve_row_groups).
    """
    rng = jax.random.key(seed)
    frozen, frozen_sh = frozen_inputs(task, mesh, rules)
    init = functools.partial(init_state, model, optimizer, rng, seq_len, task)
    abstract_state = jax.eval_shape(init) if frozen is None else jax.eval_shape(init, frozen)
    boxed = jax.eval_shape(lambda key: init_params(model, key, 1, task), rng)
    params_sh = sharding.param_shardings(boxed, rules, mesh)
    state_sh = sharding.state_shardings(abstract_state, params_sh, mesh)
    repl = sharding.replicated(mesh)
    if task is None:
        train_batch_sh = sharding.batch_sharding(mesh, rules, ndim=3, batch_dim=1)
        eval_batch_sh = sharding.batch_sharding(mesh, rules, ndim=2)
        eval_in = (params_sh, eval_batch_sh, eval_batch_sh)
    else:
        train_batch_sh = {k: sharding.batch_sharding(mesh, rules, n + 1, 1) for k, n in task.train_ndims.items()}
        eval_batch_sh = {k: sharding.batch_sharding(mesh, rules, n) for k, n in task.eval_ndims.items()}
        eval_in = (params_sh, eval_batch_sh)
    train_fn = make_train_step(model, optimizer, schedule, label_smoothing, loss_chunk, task, trainable, row_groups)
    eval_fn = make_eval_step(model, loss_chunk, task)
    jit = lambda fn, **kw: sharding.with_mesh(jax.jit(fn, **kw), mesh, rules)
    ref_sh = None
    if getattr(task, "uses_reference", False):  # the frozen reference: laid out as the model's params
        ref_sh = sharding.param_shardings(jax.eval_shape(lambda key: model_lib.init_params(model.cfg, key, 1), rng),
                                          rules, mesh)
    if frozen is None:
        init_fn = jit(init, out_shardings=state_sh)
        train = jit(train_fn, in_shardings=(state_sh, train_batch_sh) + ((ref_sh,) if ref_sh else ()),
                    out_shardings=(state_sh, repl), donate_argnums=(0,))
    else:  # the frozen inputs are arguments, not constants: one compile, never copied into the program
        init_fn = _bind(jit(init, in_shardings=(frozen_sh,), out_shardings=state_sh), frozen)
        train = _bind(jit(train_fn, in_shardings=(state_sh, train_batch_sh, frozen_sh),
                          out_shardings=(state_sh, repl), donate_argnums=(0,)), frozen)
    return Steps(
        init=init_fn, train=train,
        eval=jit(eval_fn, in_shardings=eval_in, out_shardings=repl),
        mesh=mesh, rules=rules, abstract_state=abstract_state, state_sharding=state_sh,
        train_batch_sharding=train_batch_sh, eval_batch_sharding=eval_batch_sh, reference_sharding=ref_sh,
        frozen=frozen, frozen_sharding=frozen_sh)
