"""The training loop: sharded steps over the data, metrics one step late, periodic evaluation,
checkpoints, exact resume, NaN guard and stop signals; then the held-out evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict
from orbax.checkpoint import __version__ as ocp_version

from gpt2_jax import config as config_lib
from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.data import loader
from gpt2_jax.data import tokens as tokens_lib
from gpt2_jax.evaluate import scoring as evaluate
from gpt2_jax.model import flops
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import groups, optimizers
from gpt2_jax.parallel import distributed, profiling, sharding
from gpt2_jax.train import metrics as metrics_lib
from gpt2_jax.train import early_stopping, plots, progress, resume
from gpt2_jax.train import steps as step_lib
from gpt2_jax.train import tasks
from gpt2_jax.version import __version__


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def last_good(manager) -> str:
    """'last good checkpoint: step N in DIR' (or that none was saved), for the NaN guard's messages."""
    last = manager.latest_step()
    return f"last good checkpoint: step {last} in {manager.directory}" if last else "no checkpoint saved"


@dataclasses.dataclass
class Components:
    """What a run is built from; made once from the config."""

    cfg: config_dict.ConfigDict
    tokenizer: Any
    model: model_lib.GPT2
    schedule: Callable
    optimizer: Any
    splits: dict[str, tokens_lib.TokenSplit]  # or a task's splits
    task: Any = None  # None: language modeling; else a task (train/tasks.py)
    param_labels: Any = None  # parameter groups (optim/groups.py); None: everything trains


def trainable(c: Components) -> Any:
    """The tree of bools of c.param_labels (None when everything trains)."""
    return None if c.param_labels is None else groups.trainable_mask(c.param_labels)


def train_batch(c: Components, step: int, rows: slice | None = None) -> np.ndarray:
    """Rows `rows` (default all) of the (accum, B, T+1) batch of optimizer step `step`: a pure
    function of (seed, step), whichever process reads which rows."""
    d, accum = c.cfg.data, c.cfg.optim.accum_steps
    if c.task is not None:
        micro = [c.task.train_batch(c.splits["train"], d.seed, step * accum + a, d.batch_size, d.seq_len, rows)
                 for a in range(accum)]
        return {k: np.stack([m[k] for m in micro]) for k in micro[0]}
    return np.stack([loader.train_batch(c.splits["train"].tokens, d.seed, step * accum + a, d.batch_size,
                                            d.seq_len, rows) for a in range(accum)])


def global_train_batch(c: Components, steps: step_lib.Steps, step: int) -> jax.Array:
    """The global (accum, B, T+1) batch of `step`, built from the rows this process holds."""
    d = c.cfg.data
    if hasattr(c.task, "rollout"):  # the task's rollout places what it samples; its inputs stay on the host
        return train_batch(c, step)
    if c.task is not None:
        return tasks.global_batch(steps.train_batch_sharding, d.batch_size, lambda rows: train_batch(c, step, rows),
                                  batch_dim=1)
    shape = (c.cfg.optim.accum_steps, d.batch_size, d.seq_len + 1)
    return sharding.global_batch(steps.train_batch_sharding, shape, lambda rows: train_batch(c, step, rows),
                                 batch_dim=1)


def make_steps(c: Components, echo: Callable[[str], None] = print) -> step_lib.Steps:
    """The mesh from cfg.mesh, checked against the model and batch sizes, and the sharded steps on it."""
    cfg = c.cfg
    mesh = sharding.make_mesh(sharding.MeshSpec.from_config(cfg.mesh))
    rules = sharding.logical_rules(cfg.mesh.rules)
    sharding.check_layout(mesh.shape, rules, c.model.cfg.n_head, c.model.cfg.n_embd,
                          {"data.batch_size": cfg.data.batch_size, "eval.batch_size": cfg.eval.batch_size})
    echo(f"mesh: {sharding.describe(mesh)}, rules {cfg.mesh.rules}")
    groups = step_lib.resolve_row_groups(cfg.train.row_groups, mesh, rules, cfg.data.batch_size)
    return step_lib.make_steps(c.model, c.optimizer, c.schedule, mesh, rules, cfg.train.seed, cfg.data.seq_len,
                               cfg.optim.label_smoothing, cfg.train.loss_chunk, c.task, trainable(c), groups)


def _meta(c: Components, step: int, metrics: dict, stopper=None) -> dict:
    extra = {"task": c.task.describe()} if c.task is not None else {}
    if stopper is not None:
        extra["early_stopping"] = stopper.state()
    return {**extra,
        "tokenizer": c.tokenizer.spec(),
        "data_position": {"step": step, "seed": c.cfg.data.seed, "epochs": loader.epochs_seen(
            step, c.cfg.data.batch_size * c.cfg.data.seq_len * c.cfg.optim.accum_steps, c.splits["train"].num_tokens)},
        "model": dataclasses.asdict(c.model.cfg),
        "versions": {"gpt2_jax": __version__, "jax": jax.__version__, "orbax": ocp_version,
                     "python": sys.version.split()[0]},
        "metrics": metrics,
    }


def _install_stop_handler() -> tuple[dict, dict]:
    """Turn SIGTERM/SIGINT into a flag the loop checks (checkpoint, then exit); returns the old handlers."""
    flag, previous = {"signal": None}, {}
    if threading.current_thread() is not threading.main_thread():
        return flag, previous  # signals can only be caught on the main thread (e.g. not in a worker)

    def handler(signum, frame):
        flag["signal"] = signal.Signals(signum).name

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    return flag, previous


def fit(c: Components, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train c.model per c.cfg, evaluating and checkpointing on the way; returns the final metrics.

    Every process runs this; only process 0 writes logs, metrics, the progress bar, plots and
    results, while all of them take part in each (collective) step, evaluation and checkpoint save.
    """
    cfg, t = c.cfg, c.cfg.train
    primary = distributed.is_primary()
    echo = echo if primary else (lambda _: None)
    run_dir = pathlib.Path(t.run_dir).expanduser()
    steps = make_steps(c, echo)  # fails fast on a mesh that does not fit, before any compile
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(config_lib.to_json(cfg))
    distributed.sync("run dir ready")
    k = cfg.checkpoint
    has_eval = "eval" in c.splits  # data.eval_split may be empty: no periodic eval, best step or early stop
    manager = ckpt.make_manager(run_dir, k.max_to_keep, k.keep_best if has_eval else 0, k.async_save)
    state = resume.restore_or_init(c, steps, manager, echo)
    # A task's frozen inputs of every step (reward tuning: the reference params), and its rollout hook.
    frozen = tuple(c.task.prepare(c, steps, echo)) if hasattr(c.task, "prepare") else ()
    rollout = getattr(c.task, "rollout", None)
    writer = metrics_lib.MetricsWriter(run_dir, tensorboard=t.tensorboard) if primary else None
    # A task whose step trains on other sequences than data windows (reward: its rollouts) counts its own.
    rows, seq_len = (c.task.step_shape(cfg) if hasattr(c.task, "step_shape")
                     else (cfg.data.batch_size, cfg.data.seq_len))
    tokens_per_step = rows * seq_len * cfg.optim.accum_steps
    flops_per_step = model_lib.flops_per_token(c.model.cfg, seq_len) * tokens_per_step

    def run_eval(params, split="eval", max_batches=cfg.eval.max_batches, bars=False):
        if c.task is not None:
            return c.task.evaluate(steps.eval, params, c.splits[split], cfg.eval.batch_size, cfg.data.seq_len,
                                   max_batches, steps.eval_batch_sharding, bars and primary, f"final {split}")
        return evaluate.evaluate_split(steps.eval, params, c.splits[split], cfg.eval.batch_size, cfg.data.seq_len,
                                       max_batches, progress=bars and primary, desc=f"final {split}",
                                       batch_sharding=steps.eval_batch_sharding)

    start = int(jax.device_get(state.step))
    stopper = _early_stopping(t.early_stopping, manager, start, echo)
    end = start if stopper is not None and stopper.stopped_step is not None else t.steps
    stop, previous_handlers = _install_stop_handler()
    # Across processes the stop decision is collective (all save together), checked every log_every steps.
    stop_every = 1 if jax.process_count() == 1 else t.log_every
    last_val: dict[str, float] = {}
    log = _TrainLog(writer, tokens_per_step, flops_per_step, t.log_every, manager, flops.total_peak_flops(),
                    train_tokens=c.splits["train"].num_tokens)
    profiler = profiling.ProfileWindow(profiling.parse_steps(t.profile_steps), run_dir / "profile")
    saved = {start} if manager.latest_step() == start else set()
    shown = progress.Progress(t.steps, start, t.progress and primary, echo, tokens_per_step, t.log_every)
    log.progress = shown
    sampled = "" if cfg.eval.max_batches is None else f" (first {cfg.eval.max_batches} batches)"

    def save(step):
        log.flush()  # never checkpoint a state whose loss has not been checked
        if step not in saved:
            if not bool(_all_finite(state.params)):  # the update of `step` itself may have overflowed
                raise TrainingDiverged(f"the update of step {step} made the parameters NaN/inf; not saved; stopped "
                                       f"({last_good(manager)}); lower optim.lr or raise optim.warmup_steps")
            average = evaluated_params(state)
            ckpt.save(manager, step, state, cfg.to_dict(), _meta(c, step, last_val, stopper),
                      metrics=_checkpoint_metrics(last_val, stopper),
                      average=None if average is state.params else average, stack_layers=k.stack_layers)
            saved.add(step)

    batches = loader.Prefetcher(lambda s: global_train_batch(c, steps, s), start, end, cfg.data.prefetch)
    last, failed = start, True
    try:
        for step in range(start, end):
            profiler.before(step)
            batch = batches.get(step)
            if rollout is not None:  # samples from the current params, seeded by (seed, step)
                batch = rollout(steps, state, batch, step)
            state, step_metrics = steps.train(state, batch, *frozen)
            profiler.after(step, step_metrics)
            log.push(step + 1, step_metrics)  # logs the previous step's metrics, one step late
            shown.update()
            done = last = step + 1
            stop_early = False
            if has_eval and (done % t.eval_every == 0 or done == t.steps):
                log.flush()
                with shown.paused():
                    last_val = {f"val_{k}": v for k, v in run_eval(evaluated_params(state)).items()
                                if isinstance(v, float)}
                log.write(done, last_val)
                shown.evaluated(done, last_val, sampled if not last_val.get("val_complete") else "")
                log.restart_clock()  # keep eval time out of the next tokens/s window
                if stopper is not None:
                    stop_early = stopper.update(done, last_val)
            evaluated = has_eval and (done % t.eval_every == 0 or done == t.steps)
            if (stopper is not None and evaluated) or done % k.every == 0 or done == t.steps:
                with shown.paused():
                    save(done)
                log.restart_clock()
            if stop_early:
                echo(f"early stopping at step {done}: {stopper.reason()}")
                break
            if done % t.log_every == 0:
                ckpt.check_for_errors(manager)  # a background save that failed (e.g. disk full) stops the run now
            if done % stop_every == 0 and distributed.any_process(stop["signal"] is not None):
                save(done)
                ckpt.finish(manager)
                shown.line(f"stopped by {stop['signal'] or 'another process'} at step {done}; checkpoint saved in "
                           f"{manager.directory}; run the same command again to resume")
                # A preempted job (SIGTERM) ends cleanly so its scheduler does not count a failure; Ctrl-C keeps 130.
                raise SystemExit(130 if stop["signal"] == "SIGINT" else 0)
        log.flush()
        failed = False
    finally:
        batches.close()
        profiler.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        shown.close()
        try:
            ckpt.finish(manager)
        except ckpt.CheckpointError:
            if not failed:  # else the error already on its way out is the one to report
                raise
        if writer is not None:
            writer.close()
    # The reported numbers always score every token of the held-out splits (eval.max_batches is
    # only for the periodic evaluations).
    results = {"step": last}
    params = evaluated_params(state)
    if stopper is not None:
        results["early_stopping"] = stopper.summary()
        params = _best_params(steps, manager, stopper, last, params, echo)
        results["evaluated_step"] = stopper.best_step or last
    for role, prefix in (("eval", "val"), ("test", "test")):
        if role in c.splits:
            full = run_eval(params, role, max_batches=None, bars=progress.bars_wanted(t.progress))
            results.update({f"{prefix}_{k}": v for k, v in full.items()})
    if primary:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        plots.plot_loss_curve(run_dir)
        if c.task is not None:
            c.task.report(run_dir, results)
    manager.close()
    return {"results": results, "state": state, "steps": steps}


def _checkpoint_metrics(last_val: dict, stopper) -> dict | None:
    """What ranks a checkpoint for keep-best: val_loss, or the early-stopping metric (as a loss)."""
    if stopper is not None and stopper.metric in last_val:
        sign = 1.0 if stopper.mode == "min" else -1.0
        return {**last_val, "objective": sign * last_val[stopper.metric]}
    return {"val_loss": last_val["val_loss"]} if "val_loss" in last_val else None


def _early_stopping(es_cfg, manager, start: int, echo):
    """The run's EarlyStopping (None when off), continued from the resumed checkpoint's meta."""
    saved = None
    if es_cfg.metric and start > 0 and start in manager.all_steps():
        saved = ckpt.restore_json(manager, start)[1].get("early_stopping")
    stopper = early_stopping.from_config(es_cfg, saved)
    if stopper is not None and stopper.stopped_step is not None:
        echo(f"this run stopped early at step {stopper.stopped_step} ({stopper.reason()}); nothing left to train")
    return stopper


def _best_params(steps, manager, stopper, done: int, params, echo):
    """The params of the best evaluation's checkpoint (the final evaluation scores those)."""
    best = stopper.best_step
    if best is None or best == done:
        return params
    ckpt.finish(manager)
    if best not in manager.all_steps():
        echo(f"warning: the best step {best} was not kept (checkpoint.keep_best=0); scoring step {done}")
        return params
    target = sharding.abstract_on(steps.abstract_state, steps.state_sharding)
    echo(f"restoring the best checkpoint (step {best}, {stopper.metric} {stopper.best:.6g}) for the final evaluation")
    return evaluated_params(ckpt.restore_state(manager, best, target))


def evaluated_params(state) -> Any:
    """The params a state is evaluated, sampled and exported at: its params, or schedule-free
    AdamW's average of them (optim.optimizers.eval_params)."""
    return optimizers.eval_params(state.opt_state, state.params)


class _TrainLog:
    """Fetches each step's metrics one step late, checks them for NaN/inf, and logs them with
    tokens/s, TFLOP/s and MFU (model/flops.py's accounting, as `gpt2-jax bench train`; no MFU without a peak)."""

    def __init__(self, writer, tokens_per_step, flops_per_step, log_every, manager, peak_flops=None,
                 train_tokens=None):
        self.writer, self.manager, self.log_every = writer, manager, log_every
        self.tokens_per_step, self.flops_per_step, self.peak_flops = tokens_per_step, flops_per_step, peak_flops
        self.train_tokens = train_tokens
        self.pending: list[tuple[int, Any]] = []
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.progress = None  # a progress.Progress: the bar's postfix, or a plain line

    def push(self, step: int, device_metrics) -> None:
        """Queue step's metrics and process all but the newest (whose step may still be running)."""
        self.pending.append((step, device_metrics))
        self.window_steps += 1
        while len(self.pending) > 1:
            self._process(*self.pending.pop(0))

    def write(self, step: int, metrics: dict) -> None:
        """Write metrics (process 0 only: other processes have no writer)."""
        if self.writer is not None:
            self.writer.write(step, metrics)

    def restart_clock(self) -> None:
        """Start a new tokens/s window (after work that is not training)."""
        self.window_start, self.window_steps = time.perf_counter(), 0

    def flush(self) -> None:
        """Process every queued step (waits for the device)."""
        while self.pending:
            self._process(*self.pending.pop(0))

    def _process(self, step: int, device_metrics) -> None:
        m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            raise TrainingDiverged(f"loss {m['loss']}, grad norm {m['grad_norm']} at step {step}; stopped "
                                   f"({last_good(self.manager)}); lower optim.lr or raise optim.warmup_steps")
        if step % self.log_every == 0:
            now = time.perf_counter()
            elapsed = max(now - self.window_start, 1e-9)
            if self.window_steps:  # 0 when two queued steps are logged back to back
                m["tokens_per_s"] = self.tokens_per_step * self.window_steps / elapsed
                m["tflops"] = self.flops_per_step * self.window_steps / elapsed / 1e12
                if self.peak_flops:
                    m["mfu"] = flops.mfu(m["tflops"] * 1e12, self.peak_flops)
            m["ppl"] = math.exp(min(m["loss"], 700.0))
            if self.train_tokens:
                m["epoch"] = loader.epochs_seen(step, self.tokens_per_step, self.train_tokens)
            self.write(step, m)
            if self.progress is not None:
                self.progress.train_metrics(step, m)
            self.window_start, self.window_steps = now, 0
