"""Orbax checkpoints of a run: `state` (arrays), `config` (JSON) and `meta` (JSON) per step.

The latest step is never deleted; besides it the best `keep_best` steps by validation loss (or by
the saved `objective`, e.g. the early-stopping metric, lower is better) and
the last `max_to_keep` steps are kept. Restoring takes an abstract target built for the current
devices, so the arrays land wherever the caller wants them, whatever mesh wrote them.

Damage is found before Orbax is asked to read a step: once a save is finalized its step is
sealed with a list of its files and their sizes (`files.json`), so a file cut short or missing
and garbage in a JSON file are reported by name. Nothing here deletes a damaged step; callers
move it aside (`set_aside`) and say where.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"
MANIFEST = "files.json"  # {relative path: size in bytes} of a finalized step
JSON_FILES = ("config/metadata", "meta/metadata", "state/_METADATA")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the run, step and the fix."""


class DamagedCheckpoint(CheckpointError):
    """A step whose files are not what was saved (cut short, missing, garbage); `.step`, `.file`."""

    def __init__(self, directory: pathlib.Path, step: int, file: str, problem: str):
        self.step, self.file = step, file
        super().__init__(f"checkpoint step {step} in {directory} is damaged: {file} {problem}")


def _best_metric(metrics: dict[str, Any]) -> float:
    # 'objective' (lower is better) is saved when the run ranks its checkpoints by another metric.
    return float(metrics.get("objective", metrics.get("val_loss", float("inf"))))


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


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
        cleanup_tmp_directories=not read_only,  # the unfinished save of a killed run
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = True) -> bool:
    """Save state + config + meta at `step` (asynchronously when the manager is async).

    Orbax first waits for the previous save, which is then sealed; the call returns once the
    arrays are copied off the devices, while the files are written in the background.
    """
    manager.wait_until_finished()
    seal(manager)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config),
        meta=ocp.args.JsonSave(meta),
    )
    return manager.save(step, args=args, metrics=metrics or {}, force=force)


def finish(manager: ocp.CheckpointManager) -> None:
    """Wait for the save in flight and seal every finalized step."""
    manager.wait_until_finished()
    seal(manager)


def step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    """The directory of a finalized step."""
    return pathlib.Path(manager.directory) / str(step)


def _files(root: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def seal(manager: ocp.CheckpointManager, steps: Iterable[int] | None = None) -> None:
    """Write the file list of each finalized step (default: all) that has none (process 0; a step's
    files never change after it is finalized)."""
    if jax.process_index() != 0:
        return
    for step in manager.all_steps() if steps is None else steps:
        root = step_dir(manager, step)
        if root.is_dir() and not (root / MANIFEST).exists():
            tmp = root / f".{MANIFEST}.tmp"
            tmp.write_text(json.dumps(_files(root), indent=0))
            os.replace(tmp, root / MANIFEST)  # atomic: a half-written list is never read


def _tree_keys(metadata: dict) -> set[tuple[str, ...]]:
    return {tuple(str(k["key"]) for k in v["key_metadata"]) for v in metadata.get("tree_metadata", {}).values()}


def _target_keys(target: Any) -> set[tuple[str, ...]]:
    paths = jax.tree_util.tree_flatten_with_path(target)[0]
    return {tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
            for path, _ in paths}


def check_step(manager: ocp.CheckpointManager, step: int, target: Any = None,
               items: tuple[str, ...] = ("config", "meta", "state")) -> None:
    """Raise DamagedCheckpoint naming the file if the files of `items` at step are not what was saved.

    Checks that their JSON files parse, that every array of `target` (abstract state, optional)
    is listed in state/_METADATA, and that each of their files the seal lists is there with its size.
    """
    root = step_dir(manager, step)
    where = manager.directory
    if not root.is_dir():
        raise CheckpointError(f"step {step} is not in {where}; available steps: {sorted(manager.all_steps())}")
    listed = _parse_json(where, step, root, MANIFEST) if (root / MANIFEST).exists() else {}
    listed = {rel: size for rel, size in listed.items() if rel.split("/")[0] in items}
    parsed = {rel: _parse_json(where, step, root, rel) for rel in JSON_FILES if rel.split("/")[0] in items}
    if target is not None:
        _check_arrays(where, step, root, target, parsed["state/_METADATA"], listed.get("state/_METADATA"))
    for rel, size in listed.items():
        path = root / rel
        if not path.exists():
            raise DamagedCheckpoint(where, step, rel, "is missing")
        now = path.stat().st_size
        if now != size:
            raise DamagedCheckpoint(where, step, rel, f"is cut short ({now} of {size} bytes)" if now < size
                                    else f"has changed ({now} bytes, {size} when saved)")


def _parse_json(where: pathlib.Path, step: int, root: pathlib.Path, rel: str) -> Any:
    path = root / rel
    if not path.exists():
        raise DamagedCheckpoint(where, step, rel, "is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedCheckpoint(where, step, rel, f"is not valid JSON ({_one_line(e)})") from None


def _check_arrays(where: pathlib.Path, step: int, root: pathlib.Path, target: Any, metadata: dict,
                  saved_size: int | None) -> None:
    missing = sorted(_target_keys(target) - _tree_keys(metadata))
    if not missing:
        return
    names = ", ".join("/".join(k) for k in missing[:3]) + (" ..." if len(missing) > 3 else "")
    if saved_size not in (None, (root / "state/_METADATA").stat().st_size):
        raise DamagedCheckpoint(where, step, "state/_METADATA", f"lacks {len(missing)} array(s): {names}")
    # The file is as saved: the model or optimizer asked for differs from the run's.
    raise CheckpointError(f"checkpoint step {step} in {where} has no {names}, which this config needs; "
                          "train with the run's model and optim settings, or start a new run_dir")


def resolve_step(manager: ocp.CheckpointManager, step: str | int) -> int:
    """'latest' | 'best' | an int -> a step that exists, or a one-line CheckpointError."""
    steps = manager.all_steps()
    where = manager.directory
    if not steps:
        raise CheckpointError(f"no checkpoints in {where}; train first or pass the right run directory")
    if step == "latest":
        return max(steps)
    if step == "best":
        best = manager.best_step()
        return best if best is not None else max(steps)
    try:
        step = int(step)
    except ValueError:
        raise CheckpointError(f"step {step!r} is not 'latest', 'best' or a step number") from None
    if step not in steps:
        raise CheckpointError(f"step {step} is not in {where}; available steps: {sorted(steps)}")
    return step


def restore_json(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    """The (config, meta) JSON items saved at step."""
    check_step(manager, step, items=("config", "meta"))
    try:
        out = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                              meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises several types for a damaged item.
        raise CheckpointError(f"cannot read config/meta of step {step} in {manager.directory}: "
                              f"{_one_line(e)}") from None
    return dict(out.config), dict(out.meta)


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restore the `state` item at step onto the shardings of abstract_state (ShapeDtypeStructs)."""
    check_step(manager, step, abstract_state)
    try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:
        raise CheckpointError(f"cannot restore state of step {step} from {manager.directory}: "
                              f"{_one_line(e)}") from None
    return out.state


def restore_params(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
    """Only the params of the `state` item at step (no optimizer state is read), cast to the target's dtypes."""
    target = {"params": abstract_params}
    check_step(manager, step, target)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), target)
    try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))
    except Exception as e:
        raise CheckpointError(f"cannot restore params of step {step} from {manager.directory}: "
                              f"{_one_line(e)}") from None
    return out.state["params"]


def set_aside(manager: ocp.CheckpointManager, step: int, kind: str) -> pathlib.Path:
    """Move step's directory to <run>/<kind>/<step> (never deleted); returns where it went."""
    root = step_dir(manager, step)
    dest_dir = pathlib.Path(manager.directory).parent / kind
    dest_dir.mkdir(exist_ok=True)
    dest, n = dest_dir / str(step), 1
    while dest.exists():
        dest, n = dest_dir / f"{step}-{n}", n + 1
    os.replace(root, dest)
    manager.reload()
    return dest


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """ShapeDtypeStructs for tree, placed on `sharding` (default: the first local device)."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
