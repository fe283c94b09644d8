"""Where a run starts: the latest good checkpoint, a chosen step, an export's weights, or step 0.

Resuming restores the whole TrainState (params, optimizer state, step, rng) onto the current
mesh; the data position is the step, so the run continues exactly as if it had never stopped.
A damaged latest step is moved to <run>/damaged/ (never deleted) and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

from ml_collections import config_dict

from gpt2_jax import config as config_lib
from gpt2_jax.checkpoint import export as export_lib
from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.parallel import distributed, sharding

# GPT2Config fields that fix the arrays' shapes and dtypes: a checkpoint restores only into the same.
SHAPE_KEYS = ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "vocab_multiple", "param_dtype")
# Config keys that say how to start, not what to train: never worth a notice.
START_KEYS = ("checkpoint.resume_from", "checkpoint.init_from", "train.run_dir")
REPLACED_METRICS = "metrics_replaced.jsonl"


def shape_differences(saved: dict, now: model_lib.GPT2Config, keys=SHAPE_KEYS) -> list[str]:
    """'model.n_embd: 64 -> 32' for each shape field where the saved model and `now` differ."""
    current = dataclasses.asdict(now)
    return [f"model.{k}: {saved[k]} -> {current[k]}" for k in keys if k in saved and saved[k] != current[k]]


def changed_settings(saved: dict, cfg: config_dict.ConfigDict) -> list[str]:
    """'train.steps: 30 -> 40' for each config key whose value differs from the saved config."""
    old, new = config_lib.flatten(saved), config_lib.flatten(cfg.to_dict())
    return [f"{k}: {old.get(k)} -> {new[k]}" for k in sorted(new)
            if k not in START_KEYS and k in old and old[k] != new[k]]


def move_metrics_after(run_dir: pathlib.Path, step: int) -> int:
    """Move metrics.jsonl rows of steps after `step` (they will be logged again) to metrics_replaced.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    keep, moved = [], []
    for line in path.read_text().splitlines():
        try:
            later = json.loads(line).get("step", 0) > step
        except json.JSONDecodeError:
            later = True  # a line cut short by a kill
        (moved if later else keep).append(line)
    if moved:
        with (run_dir / REPLACED_METRICS).open("a") as f:
            f.write("\n".join(moved) + "\n")
        path.write_text("".join(line + "\n" for line in keep))
    return len(moved)


def _set_aside(manager, step: int, kind: str) -> pathlib.Path:
    """set_aside on process 0; every process then sees the same steps."""
    dest = pathlib.Path(manager.directory).parent / kind / str(step)
    if distributed.is_primary():
        dest = ckpt.set_aside(manager, step, kind)
    distributed.sync(f"set aside {kind} {step}")
    manager.reload()
    return dest


def _restore_step(c, manager, step: int, target: Any, echo: Callable[[str], None]):
    saved_cfg, meta = ckpt.restore_json(manager, step)
    differ = shape_differences(meta.get("model", {}), c.model.cfg)
    if differ:
        raise ckpt.CheckpointError(f"run dir {pathlib.Path(manager.directory).parent} holds a model with different "
                                   f"{'; '.join(differ)}; use a new train.run_dir (or --init-from an export)")
    state = ckpt.restore_state(manager, step, target)
    changed = changed_settings(saved_cfg, c.cfg)
    if changed:
        echo(f"notice: resuming step {step} with changed settings: {'; '.join(changed)}")
    return state


def restore_or_init(c, steps, manager, echo: Callable[[str], None] = print):
    """The TrainState to start from: resume (cfg.checkpoint.resume_from) if the run has checkpoints,
    else the params of cfg.checkpoint.init_from with a fresh optimizer, else a fresh init."""
    k = c.cfg.checkpoint
    requested = k.resume_from
    available = sorted(manager.all_steps(), reverse=True)
    if not available:
        if requested != "latest":
            raise ckpt.CheckpointError(f"resume_from={requested}: no checkpoints in {manager.directory}")
        return init_from(c, steps, k.init_from, echo) if k.init_from else steps.init()
    if k.init_from:
        echo(f"notice: {manager.directory} has checkpoints; resuming them, not init_from={k.init_from}")
    target = sharding.abstract_on(steps.abstract_state, steps.state_sharding)
    candidates = available if requested == "latest" else [ckpt.resolve_step(manager, requested)]
    for step in candidates:
        try:
            state = _restore_step(c, manager, step, target, echo)
        except ckpt.DamagedCheckpoint as e:
            if requested != "latest":
                raise ckpt.CheckpointError(f"{e}; resume from another step (--resume-from), available: "
                                           f"{sorted(manager.all_steps())}") from None
            dest = _set_aside(manager, step, "damaged")
            echo(f"warning: {e}; moved it to {dest} (look, then delete it) and falling back to the previous step")
            continue
        _after_restore(manager, step, echo)
        echo(f"resumed from step {step} in {manager.directory}")
        return state
    raise ckpt.CheckpointError(f"no readable checkpoint left in {manager.directory} (damaged ones are in "
                               f"{pathlib.Path(manager.directory).parent / 'damaged'}); run again to start from "
                               "step 0, or use a new train.run_dir")


def _after_restore(manager, step: int, echo: Callable[[str], None]) -> None:
    run_dir = pathlib.Path(manager.directory).parent
    later = [s for s in manager.all_steps() if s > step]
    for s in sorted(later):
        dest = _set_aside(manager, s, "superseded")
        echo(f"notice: step {s} is after the resumed step {step}; moved it to {dest}")
    if distributed.is_primary():
        ckpt.seal(manager, [step])  # the restore read every file of the step: it is as saved
        moved = move_metrics_after(run_dir, step)
        if moved:
            echo(f"notice: {moved} metrics rows after step {step} moved to {run_dir / REPLACED_METRICS}")


def init_from(c, steps, source: str, echo: Callable[[str], None] = print):
    """A fresh TrainState whose params are read from `source` (an export or a run directory)."""
    src = export_lib.open_source(source, "latest")
    differ = shape_differences(src.meta["model"], c.model.cfg, tuple(k for k in SHAPE_KEYS if k != "param_dtype"))
    if differ:
        raise ckpt.CheckpointError(f"init_from {src.path} holds a different model ({'; '.join(differ)}); "
                                   "set the model keys to match it, or export the right run")
    state = steps.init()
    target = sharding.abstract_on(steps.abstract_state.params, steps.state_sharding.params)
    if c.task is None:
        echo(f"initialized params from {src.kind} {src.path} (step {src.step}); fresh optimizer state")
        return state.replace(params=src.read_params(target))
    # A task's head and adapters start fresh: only the GPT-2 weights come from the source.
    body = {k: v for k, v in target.items() if k in model_lib.param_shapes(c.model.cfg)}
    fresh = sorted(set(target) - set(body))
    echo(f"initialized the GPT-2 weights from {src.kind} {src.path} (step {src.step})"
         f"{'; fresh ' + ', '.join(fresh) if fresh else ''}; fresh optimizer state")
    return state.replace(params={**state.params, **src.read_params(body)})
