"""Orbax checkpoints of a run: `state` (arrays), `config` (JSON) and `meta` (JSON) per step.

The latest step is never deleted; besides it the best `keep_best` steps by validation loss (or by
the saved `objective`, e.g. the early-stopping metric, lower is better) and
the last `max_to_keep` steps are kept. Restoring takes an abstract target built for the current
devices, so the arrays land wherever the caller wants them, whatever mesh wrote them.

Damage is found before Orbax is asked to read a step: every step is sealed with a list of its
files, their sizes and CRC-32 checksums (`files.json`), written by Orbax's background save thread
just before the step's directory is renamed into place (so a step that exists is sealed), so a
file cut short, missing or with flipped bytes and garbage in a JSON file are reported by name.
A step without a seal (an older run's) that Orbax cannot decode is reported the same way.
Nothing here deletes a damaged step; callers move it aside (`set_aside`) and say where.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import zlib
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp

from gpt2_jax.checkpoint import faults, layout
from gpt2_jax.checkpoint.faults import TMP_MARK, CheckpointError, CheckpointWriteError, DamagedCheckpoint

CHECKPOINT_SUBDIR = "checkpoints"
MANIFEST = "files.json"  # {relative path: [size in bytes, CRC-32]} of a finalized step (older runs: size only)
JSON_FILES = ("config/metadata", "meta/metadata", "state/_METADATA", "average/_METADATA")


def _best_metric(metrics: dict[str, Any]) -> float:
    # 'objective' (lower is better) is saved when the run ranks its checkpoints by another metric.
    return float(metrics.get("objective", metrics.get("val_loss", float("inf"))))


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
    background_seal = async_save and not read_only  # else `seal` runs after each save returns
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        async_options=ocp.AsyncOptions(post_finalization_callback=functools.partial(
            _seal_in_flight, checkpoint_dir(run_dir))) if background_seal else None,
        # best_fn makes Orbax write each step's metrics to disk, so `best` survives a restart.
        best_fn=_best_metric if keep_best > 0 else None, best_mode="min",
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,  # the unfinished save of a killed run
        create=not read_only,
        read_only=read_only,
    )
    faults.quiet_reraised_save_errors()
    faults.quiet_closed_loop_callbacks()  # a failed write also leaves tensorstore callbacks on a closed loop
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options)


def _checked(manager: ocp.CheckpointManager, action, *args, **kwargs):
    """action(...) with a failed (background) write turned into one CheckpointWriteError."""
    try:
        return action(*args, **kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # Orbax re-raises its background thread's error, whatever its type
        latest = manager.latest_step()  # the step being written, while its directory does not exist yet
        unfinished = latest if latest is not None and not step_dir(manager, latest).is_dir() else None
        raise faults.write_error(manager.directory, e, unfinished) from None


def check_for_errors(manager: ocp.CheckpointManager) -> None:
    """Raise CheckpointWriteError if a background save has already failed (does not wait)."""
    _checked(manager, manager.check_for_errors)


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = True, average: Any = None,
         stack_layers: bool = True) -> bool:
    """Save state + config + meta at `step` (asynchronously when the manager is async); with
    `average` (the params schedule-free AdamW is evaluated at), also an item `average` that
    `restore_params` then reads instead of the state's params. stack_layers: arrays of the blocks
    stacked per layer (layout.py: a third of the save's CPU for GPT-2), else the tree as it is.

    Orbax first waits for the previous save, which is then sealed; the call returns once the
    arrays are copied off the devices, while the files are written in the background.
    """
    _checked(manager, manager.wait_until_finished)
    seal(manager)
    arrays = layout.to_saved if stack_layers else (lambda tree: tree)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(arrays(state)),
        config=ocp.args.JsonSave(config),
        meta=ocp.args.JsonSave(meta),
        **({} if average is None else {"average": ocp.args.StandardSave(arrays({"params": average}))}),
    )
    return _checked(manager, manager.save, step, args=args, metrics=metrics or {}, force=force)


def finish(manager: ocp.CheckpointManager) -> None:
    """Wait for the save in flight and seal every finalized step."""
    _checked(manager, manager.wait_until_finished)
    seal(manager)


def step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    """The directory of a finalized step."""
    return pathlib.Path(manager.directory) / str(step)


def crc32(path: pathlib.Path, chunk: int = 16 << 20) -> int:
    """The CRC-32 (zlib's) of a file's bytes, read in chunks."""
    value = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            value = zlib.crc32(block, value)
    return value


def file_checksums(root: pathlib.Path) -> dict[str, list[int]]:
    """{relative path: [size, CRC-32]} of every file under a step directory (what its seal lists)."""
    return {str(p.relative_to(root)): [p.stat().st_size, crc32(p)] for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, f".{MANIFEST}.tmp")}


def _write_seal(root: pathlib.Path) -> None:
    tmp = root / f".{MANIFEST}.tmp"
    rows = [f"{json.dumps(rel)}: [{size}, {crc}]" for rel, (size, crc) in file_checksums(root).items()]
    tmp.write_text("{\n" + ",\n".join(rows) + "\n}\n")  # one file per line
    os.replace(tmp, root / MANIFEST)  # atomic: a half-written list is never read


def _seal_in_flight(directory: pathlib.Path) -> None:
    """Orbax's post-finalization callback (process 0, background save thread): seal the step being
    written, whose items are complete and whose directory is renamed into place right after."""
    in_flight = [p for p in directory.glob(f"*{TMP_MARK}*") if p.is_dir() and p.name.split(".")[0].isdigit()]
    if in_flight:  # one save at a time; an older leftover was cleaned up when the manager started
        _write_seal(max(in_flight, key=lambda p: p.stat().st_mtime_ns))


def seal(manager: ocp.CheckpointManager, steps: Iterable[int] | None = None) -> None:
    """Write the file list of each finalized step (default: all) that has none (process 0; a step's
    files never change after it is finalized). Async saves are sealed in the background already."""
    if jax.process_index() != 0:
        return
    for step in manager.all_steps() if steps is None else steps:
        root = step_dir(manager, step)
        if root.is_dir() and not (root / MANIFEST).exists():
            _write_seal(root)


def _tree_keys(metadata: dict) -> set[tuple[str, ...]]:
    return {tuple(str(k["key"]) for k in v["key_metadata"]) for v in metadata.get("tree_metadata", {}).values()}


def check_step(manager: ocp.CheckpointManager, step: int, target: Any = None,
               items: tuple[str, ...] = ("config", "meta", "state")) -> None:
    """Raise DamagedCheckpoint naming the file if the files of `items` at step are not what was saved.

    Checks that their JSON files parse, that every array of `target` (abstract state, optional)
    is listed in state/_METADATA, and that each of their files the seal lists is there with its
    size and checksum (which reads every byte of those files).
    """
    root = step_dir(manager, step)
    where = manager.directory
    if not root.is_dir():
        raise CheckpointError(f"step {step} is not in {where}; available steps: {sorted(manager.all_steps())}")
    listed = _parse_json(where, step, root, MANIFEST) if (root / MANIFEST).exists() else {}
    listed = {rel: size for rel, size in listed.items() if rel.split("/")[0] in items}
    parsed = {rel: _parse_json(where, step, root, rel) for rel in JSON_FILES if rel.split("/")[0] in items}
    if target is not None:
        arrays = "average" if "average" in items else "state"
        _check_arrays(where, step, root, target, arrays, parsed[f"{arrays}/_METADATA"],
                      listed.get(f"{arrays}/_METADATA"))
    for rel, sealed in listed.items():
        size, crc = (sealed, None) if isinstance(sealed, int) else sealed
        path = root / rel
        if not path.exists():
            raise DamagedCheckpoint(where, step, rel, "is missing")
        now = path.stat().st_size
        if now != size:
            raise DamagedCheckpoint(where, step, rel, f"is cut short ({now} of {size} bytes)" if now < size
                                    else f"has changed ({now} bytes, {size} when saved)")
        if crc is not None and crc32(path) != crc:
            raise DamagedCheckpoint(where, step, rel, f"has changed bytes (CRC-32 {crc32(path):08x}, "
                                    f"{crc:08x} when saved)")


def _parse_json(where: pathlib.Path, step: int, root: pathlib.Path, rel: str) -> Any:
    path = root / rel
    if not path.exists():
        raise DamagedCheckpoint(where, step, rel, "is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedCheckpoint(where, step, rel, f"is not valid JSON ({faults.one_line(e)})") from None


def array_keys(manager: ocp.CheckpointManager, step: int, item: str = "state") -> set[tuple[str, ...]]:
    """The key paths of the arrays in an item of a step, from its _METADATA."""
    return _tree_keys(json.loads((step_dir(manager, step) / item / "_METADATA").read_text()))


def _check_arrays(where: pathlib.Path, step: int, root: pathlib.Path, target: Any, item: str, metadata: dict,
                  saved_size: int | None) -> None:
    saved = _tree_keys(metadata)
    missing = sorted(layout.expected_keys(target, saved) - saved)
    if not missing:
        return
    names = ", ".join("/".join(k) for k in missing[:3]) + (" ..." if len(missing) > 3 else "")
    if saved_size not in (None, (root / f"{item}/_METADATA").stat().st_size):
        raise DamagedCheckpoint(where, step, f"{item}/_METADATA", f"lacks {len(missing)} array(s): {names}")
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
                              f"{faults.one_line(e)}") from None
    return dict(out.config), dict(out.meta)


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restore the `state` item at step onto the shardings of abstract_state (ShapeDtypeStructs)."""
    check_step(manager, step, abstract_state)
    faults.quiet_closed_loop_callbacks()  # before: tensorstore's callbacks may print while the restore fails
    keys = array_keys(manager, step)
    target = layout.saved_target(abstract_state, keys) if layout.is_stacked(keys) else abstract_state
    try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as e:
        raise faults.damage(manager.directory, step, e) or CheckpointError(
            f"cannot restore state of step {step} from {manager.directory}: {faults.one_line(e)}") from None
    return layout.from_saved(out.state, abstract_state, keys) if layout.is_stacked(keys) else out.state


def restore_params(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
    """Only the params at step (no optimizer state is read), cast to the target's dtypes: those of the
    `average` item where the run saved one (schedule-free AdamW's evaluation point), else the state's."""
    item = "average" if (step_dir(manager, step) / "average").is_dir() else "state"
    wanted = {"params": abstract_params}
    check_step(manager, step, wanted, items=("config", "meta", item))
    keys = array_keys(manager, step, item)
    target = layout.saved_target(wanted, keys) if layout.is_stacked(keys) else wanted
    faults.quiet_closed_loop_callbacks()
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), target)
    try:
        out = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)}))
    except Exception as e:
        raise faults.damage(manager.directory, step, e) or CheckpointError(
            f"cannot restore params of step {step} from {manager.directory}: {faults.one_line(e)}") from None
    return (layout.from_saved(out[item], wanted, keys) if layout.is_stacked(keys) else out[item])["params"]


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
