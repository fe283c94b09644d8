"""`gpt2-jax bench ckpt`: what asynchronous checkpointing costs the step loop.

Three measurements: the blocking time of one save of a preset's full train state (params + AdamW
moments + step + rng, fp32) — the time `checkpoint.save` holds the loop; the mean step time of a
training loop that saves every N steps, once per checkpoint layout (checkpoint/layout.py), against
the same loop that never saves (arms interleaved in rounds, so a busy machine slows all alike); and
each layout's CPU seconds per save, which the step loses on a CPU host whatever else is running.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import jax
import numpy as np

from gpt2_jax.checkpoint import layout, manager as ckpt
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers as optim
from gpt2_jax.optim import schedules
from gpt2_jax.parallel import sharding
from gpt2_jax.train import steps as train


def _steps_for(cfg: model_lib.GPT2Config, seq_len: int) -> train.Steps:
    schedule = schedules.make_schedule("constant", 1e-4, 10, 0)
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=(1, 1, 1)), jax.devices()[:1])
    return train.make_steps(model_lib.GPT2(cfg), optim.make_optimizer(lr=schedule), schedule, mesh,
                            sharding.logical_rules("fsdp+tp"), 0, seq_len)


def time_blocking_save(preset: str, saves: int = 2) -> dict[str, Any]:
    """Blocking and total seconds of `saves` async saves of preset's full fp32 AdamW train state."""
    cfg = model_lib.config_from_preset(preset)
    state = _steps_for(cfg, 1).init()
    jax.block_until_ready(state)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    blocking, total, checksum, check = [], [], [], []
    with tempfile.TemporaryDirectory() as run_dir:
        manager = ckpt.make_manager(run_dir, max_to_keep=1, keep_best=0)
        for step in range(1, saves + 1):
            t0 = time.perf_counter()
            ckpt.save(manager, step, state, {}, {})
            blocking.append(time.perf_counter() - t0)
            ckpt.finish(manager)
            total.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # the seal's CRC-32s, which the save computed in its background thread
            ckpt.file_checksums(ckpt.step_dir(manager, step))
            checksum.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # what a restore checks first
            ckpt.check_step(manager, step, ckpt.abstract_like(state))
            check.append(time.perf_counter() - t0)
        disk_bytes = sum(p.stat().st_size for p in ckpt.step_dir(manager, saves).rglob("*") if p.is_file())
        manager.close()
    return {"preset": preset, "params": model_lib.count_params(state.params), "state_bytes": state_bytes,
            "blocking_s": blocking, "total_s": total, "disk_bytes": disk_bytes, "checksum_s": checksum,
            "check_s": check}


LAYOUTS = ("stacked", "tree")  # checkpoint/layout.py: block arrays stacked per layer, or the tree as is


def _loop_seconds(steps: train.Steps, state, batch, n: int, manager, every: int,
                  stack_layers: bool = True) -> tuple[Any, float, list[float]]:
    """(state, seconds per step, seconds each save call held the loop)."""
    t0 = time.perf_counter()
    start, held = int(state.step), []
    for i in range(n):
        state, metrics = steps.train(state, batch)
        float(metrics["loss"])  # the training loop reads every step's loss
        if manager is not None and (start + i + 1) % every == 0:
            t = time.perf_counter()
            ckpt.save(manager, start + i + 1, state, {}, {}, stack_layers=stack_layers)
            held.append(time.perf_counter() - t)
    if manager is not None:
        manager.wait_until_finished()  # a save still running belongs to this loop's cost
    return state, (time.perf_counter() - t0) / n, held


def save_cpu_seconds(state, stack_layers: bool, saves: int = 6) -> float:
    """CPU seconds (all threads of this process) per save of state, from the call until it is on disk
    and sealed, with nothing else running: what a save takes from the training step's cores."""
    with tempfile.TemporaryDirectory() as run_dir:
        manager = ckpt.make_manager(run_dir, max_to_keep=3, keep_best=0)
        ckpt.save(manager, 0, state, {}, {}, stack_layers=stack_layers)  # first save: imports, compiles
        ckpt.finish(manager)
        t0 = time.process_time()
        for step in range(1, saves + 1):
            ckpt.save(manager, step, state, {}, {}, stack_layers=stack_layers)
            ckpt.finish(manager)
        manager.close()
    return (time.process_time() - t0) / saves


def time_save_overhead(preset: str, batch_size: int, seq_len: int, steps: int, every: int,
                       vocab_size: int, rounds: int, layouts: tuple[str, ...] = LAYOUTS) -> dict[str, Any]:
    """Mean step time of `steps` steps saving every `every` steps (one arm per checkpoint layout) vs
    not saving, the arms interleaved in each round; and each layout's CPU seconds per save."""
    cfg = model_lib.config_from_preset(preset, vocab_size=vocab_size)
    train_steps = _steps_for(cfg, seq_len)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, vocab_size, (1, batch_size, seq_len + 1)).astype(np.int32)
    state = train_steps.init()
    times: dict[str, list[float]] = {"no_save": [], **{name: [] for name in layouts}}
    held: dict[str, list[float]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory() as run_dir:
        managers = {name: ckpt.make_manager(f"{run_dir}/{name}", max_to_keep=3, keep_best=0) for name in layouts}
        for name in layouts:  # compile, and each layout's first save
            state, _, _ = _loop_seconds(train_steps, state, batch, every, managers[name], every, name == "stacked")
        for _ in range(rounds):
            state, t, _ = _loop_seconds(train_steps, state, batch, steps, None, every)
            times["no_save"].append(t)
            for name in layouts:
                state, t, h = _loop_seconds(train_steps, state, batch, steps, managers[name], every, name == "stacked")
                times[name].append(t)
                held[name] += h
        for manager in managers.values():
            manager.close()
    cpu = {name: save_cpu_seconds(state, name == "stacked") for name in layouts}
    no_save = float(np.median(times["no_save"]))
    arms = {name: {"step_s": float(np.median(times[name])), "overhead": float(np.median(times[name])) / no_save - 1.0,
                   "held_s": held[name], "held_share": sum(held[name]) / (sum(times[name]) * steps),
                   "save_cpu_s": cpu[name]} for name in layouts}
    return {"preset": preset, "batch_size": batch_size, "seq_len": seq_len, "steps": steps, "every": every,
            "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
            "arrays": {"tree": len(jax.tree.leaves(state)), "stacked": len(jax.tree.leaves(layout.to_saved(state)))},
            "step_s": times, "no_save_step_s": no_save, "layouts": arms}


def bench_ckpt(preset: str = "tiny", batch_size: int = 16, seq_len: int = 128, steps: int = 40, every: int = 10,
               vocab_size: int = 257, rounds: int = 2, save_preset: str = "gpt2") -> dict[str, Any]:
    """Both measurements, with the device they ran on."""
    return {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "blocking_save": time_blocking_save(save_preset),
            "overhead": time_save_overhead(preset, batch_size, seq_len, steps, every, vocab_size, rounds)}


def format_report(r: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    b, o = r["blocking_save"], r["overhead"]
    return "\n".join([
        f"device: {r['device']} x{r['devices']}",
        f"save of the {b['preset']} train state ({b['params']:,} params + AdamW, {b['state_bytes'] / 2**30:.2f} GiB): "
        f"blocking {', '.join(f'{t:.2f}' for t in b['blocking_s'])} s; "
        f"until written {', '.join(f'{t:.2f}' for t in b['total_s'])} s",
        f"its CRC-32 seal ({b['disk_bytes'] / 2**30:.2f} GiB on disk): {', '.join(f'{t:.2f}' for t in b['checksum_s'])} s "
        f"in the background save; checked before a restore in {', '.join(f'{t:.2f}' for t in b['check_s'])} s",
        f"{o['preset']} B={o['batch_size']} T={o['seq_len']}, {o['steps']} steps per arm per round, saving every "
        f"{o['every']} steps: {o['no_save_step_s'] * 1e3:.1f} ms/step without saving (rounds "
        f"{', '.join(f'{t * 1e3:.1f}' for t in o['step_s']['no_save'])})",
        *(f"  {name} layout ({o['arrays'][name]} arrays): {a['step_s'] * 1e3:.1f} ms/step ({a['overhead'] * 100:+.1f}%; "
          f"rounds {', '.join(f'{t * 1e3:.1f}' for t in o['step_s'][name])}); a save holds the loop "
          f"{np.median(a['held_s']) * 1e3:.1f} ms (median of {len(a['held_s'])}), {a['held_share'] * 100:.2f}% of "
          f"the time; {a['save_cpu_s']:.3f} CPU s per save alone" for name, a in o["layouts"].items()),
    ])
