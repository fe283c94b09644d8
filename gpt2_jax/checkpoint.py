"""Orbax checkpoints of a run: `state` (arrays), `config` (JSON) and `meta` (JSON) per step.

The latest step is never deleted; besides it the best `keep_best` steps by validation loss and
the last `max_to_keep` steps are kept. Restoring takes an abstract target built for the current
devices, so the arrays land wherever the caller wants them.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the run, step and the fix."""


def _best_metric(metrics: dict[str, Any]) -> float:
    return float(metrics.get("val_loss", float("inf")))


def checkpoint_dir(run_dir: str | pathlib.Path) -> pathlib.Path:
    """Where a run keeps its checkpoints."""
    return pathlib.Path(run_dir).expanduser().resolve() / CHECKPOINT_SUBDIR


def make_manager(run_dir: str | pathlib.Path, max_to_keep: int = 3, keep_best: int = 1,
                 async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager for run_dir/checkpoints with the keep-latest + keep-best policy."""
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    if keep_best > 0:
        # reverse=True ranks the lowest validation loss first.
        policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=_best_metric, reverse=True, n=keep_best,
                                                           keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = True) -> bool:
    """Save state + config + meta at `step` (asynchronously when the manager is async)."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config),
        meta=ocp.args.JsonSave(meta),
    )
    return manager.save(step, args=args, metrics=metrics or {}, force=force)


def resolve_step(manager: ocp.CheckpointManager, step: str | int) -> int:
    """'latest' | 'best' | an int -> a step that exists, or a one-line CheckpointError."""
    steps = manager.all_steps()
    where = manager.directory
    if not steps:
        raise CheckpointError(f"no checkpoints in {where}; train first or pass the right --run directory")
    if step == "latest":
        return max(steps)
    if step == "best":
        best = manager.best_step()
        return best if best is not None else max(steps)
    step = int(step)
    if step not in steps:
        raise CheckpointError(f"step {step} is not in {where}; available steps: {sorted(steps)}")
    return step


def restore_json(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    """The (config, meta) JSON items saved at step."""
    try:
        out = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                              meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises several types for a damaged item.
        raise CheckpointError(f"cannot read config/meta of step {step} in {manager.directory}: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    return dict(out.config), dict(out.meta)


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restore the `state` item at step onto the shardings of abstract_state (ShapeDtypeStructs)."""
    try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:
        raise CheckpointError(f"cannot restore state of step {step} from {manager.directory}: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    return out.state


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """ShapeDtypeStructs for tree, placed on `sharding` (default: the first local device)."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
