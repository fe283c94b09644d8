"""`gpt2-jax bench train`: train-step throughput, MFU and memory of a preset, beside PyTorch peers.

The JAX side is the training path itself (train.make_steps on a mesh, the project's AdamW with
clipping), compiled once ahead of time, warmed up, then timed step by step with every output
waited for. In-process peers (hf-torch) take their steps interleaved with ours in rounds, so a
change in machine load hits both alike; nanoGPT runs the same shape in a subprocess after us.
MFU follows model/flops.py: FLOPs per token 6*N + 12*L*T*d over the devices' dense bf16 peak.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from typing import Any, Callable

import jax

from gpt2_jax.bench import common
from gpt2_jax.bench import peers as bench_peers
from gpt2_jax.model import attention, flops
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers as optim
from gpt2_jax.parallel import profiling, sharding
from gpt2_jax.train import steps as train

DTYPES = ("float32", "bfloat16")
PEERS = ("hf-torch", "nanogpt")
LR = 3e-4


@dataclasses.dataclass(frozen=True)
class TrainBench:
    """What to measure: model shape and numerics, batch, mesh, timing, peers and profiling."""

    preset: str = "tiny"
    batch_size: int = 32
    seq_len: int = 256
    vocab_size: int = 257
    vocab_multiple: int = 1
    dtype: str = "float32"  # compute
    param_dtype: str = "float32"  # parameters and AdamW moments ('bfloat16' with dtype bfloat16: all-bf16)
    attention: str = "auto"
    remat: str = "none"
    loss_chunk: int = 0
    row_groups: int = 0  # train.row_groups: 0 auto (2 on CPU), N independent row groups (train/steps.py)
    mesh: tuple[int, int, int] = (-1, 1, 1)
    rules: str = "fsdp+tp"
    steps: int = 10
    warmup: int = 2
    rounds: int = 2
    peers: tuple[tuple[str, str | None], ...] = ()  # (name, path): ("hf-torch", None), ("nanogpt", "/x")
    peer_compile: str = "auto"  # auto | on | off: torch.compile for the peers (auto: on, eager if it fails)
    threads: int | None = None
    profile_steps: tuple[int, int] | None = None  # extra untimed steps A..B-1 traced into profile_dir
    profile_dir: str = "bench_profile"

    def model_config(self) -> model_lib.GPT2Config:
        """The GPT2Config measured: the preset with these numerics, at least seq_len positions."""
        positions = max(self.seq_len, model_lib.PRESETS[self.preset].get("n_positions", 1024))
        return model_lib.config_from_preset(
            self.preset, vocab_size=self.vocab_size, vocab_multiple=self.vocab_multiple, dtype=self.dtype,
            param_dtype=self.param_dtype, attention=self.attention, remat=self.remat, n_positions=positions)


def _choice(flag: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{flag} {value!r} is not one of {', '.join(map(str, choices))}")


def check(spec: TrainBench) -> None:
    """Raise ValueError naming the first flag of spec that cannot work."""
    _choice("--preset", spec.preset, sorted(model_lib.PRESETS))
    _choice("--dtype", spec.dtype, DTYPES)
    _choice("--param-dtype", spec.param_dtype, DTYPES)
    _choice("--attention", spec.attention, model_lib.ATTENTION_IMPLEMENTATIONS)
    _choice("--remat", spec.remat, model_lib.REMAT_POLICIES)
    _choice("--peer-compile", spec.peer_compile, ("auto", "on", "off"))
    for name, value in (("--batch-size", spec.batch_size), ("--seq-len", spec.seq_len), ("--steps", spec.steps),
                        ("--rounds", spec.rounds), ("--vocab-size", spec.vocab_size),
                        ("--vocab-multiple", spec.vocab_multiple)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if spec.loss_chunk < 0 or spec.warmup < 1 or spec.row_groups < 0:
        raise ValueError("--loss-chunk and --row-groups must be >= 0 and --warmup >= 1 (the first step compiles "
                         "the peers)")
    for name, path in spec.peers:
        _choice("--peer", name, PEERS)
        if (name == "nanogpt") != (path is not None):
            raise ValueError(f"--peer {name}: " + ("give the nanoGPT checkout, --peer nanogpt PATH"
                                                   if path is None else "takes no path"))
        if path is not None:
            bench_peers.nanogpt_model_file(path)


def _jax_stepper(spec: TrainBench, cfg: model_lib.GPT2Config, batch) -> tuple[Callable[[], None], dict]:
    """Our train step, compiled ahead of time on the mesh; facts about it (compile time, memory plan)."""
    model = model_lib.GPT2(cfg)
    optimizer = optim.make_optimizer(lr=LR, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0)
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=spec.mesh, rules=spec.rules))
    rules = sharding.logical_rules(spec.rules)
    sharding.check_layout(mesh.shape, rules, cfg.n_head, cfg.n_embd, {"--batch-size": spec.batch_size})
    groups = train.resolve_row_groups(spec.row_groups, mesh, rules, spec.batch_size)
    steps = train.make_steps(model, optimizer, lambda s: LR, mesh, rules, 0, spec.seq_len, loss_chunk=spec.loss_chunk,
                             row_groups=groups)
    state = steps.init()
    dev_batch = jax.device_put(batch[None], steps.train_batch_sharding)
    t0 = time.perf_counter()
    compiled = steps.train.lower(state, dev_batch).compile()
    info = {"compile_s": time.perf_counter() - t0, "mesh": sharding.describe(mesh),
            "devices": list(mesh.devices.flat), "memory_plan_bytes": _planned_bytes(compiled), "row_groups": groups}
    box = {"state": state}

    def step():
        box["state"], metrics = compiled(box["state"], dev_batch)
        jax.block_until_ready((box["state"], metrics))

    return step, info


def _planned_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries - donated aliases of a compiled step, per device (XLA's plan)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _device_peak_bytes(device: jax.Device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _time(step: Callable[[], None], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _profile(step: Callable[[], None], steps: tuple[int, int], log_dir: str) -> None:
    window = profiling.ProfileWindow(steps, log_dir)
    for i in range(steps[1]):
        window.before(i)
        step()
        window.after(i, None)


def _row(times: list[float], tokens: int, flops_tok: int, peak: float | None, memory: int | None,
         memory_source: str, first_s: float) -> dict[str, Any]:
    med = statistics.median(times)
    achieved = flops_tok * tokens / med
    return {"tokens_per_s": tokens / med, "step_ms_min": 1e3 * min(times), "step_ms_median": 1e3 * med,
            "tflops": achieved / 1e12, "mfu": flops.mfu(achieved, peak), "peak_memory_bytes": memory,
            "peak_memory_source": memory_source, "compile_s": first_s, "times_s": times}


def bench_train(spec: TrainBench) -> dict[str, Any]:
    """Measure spec; the report (JSON-able) with one row per implementation and the ratios."""
    check(spec)
    cfg = spec.model_config()
    batch = bench_peers.random_batch(spec.batch_size, spec.seq_len, spec.vocab_size)
    threads = spec.threads or common.cpu_threads()
    shape = {"vocab_size": cfg.padded_vocab_size, "n_positions": cfg.n_positions, "n_layer": cfg.n_layer,
             "n_head": cfg.n_head, "n_embd": cfg.n_embd}
    jax_step, jax_info = _jax_stepper(spec, cfg, batch)
    steppers, peer_info = {"gpt2_jax": jax_step}, {}
    for name, _ in spec.peers:
        if name == "hf-torch":
            steppers[name], peer_info[name] = bench_peers.hf_torch_stepper(shape, batch, spec.dtype,
                                                                          spec.peer_compile, threads)
    for name, fn in steppers.items():  # the peers' first step (their compile) ran when they were built
        _time(fn, spec.warmup if name == "gpt2_jax" else spec.warmup - 1)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    per_round = max(1, spec.steps // spec.rounds)
    for _ in range(spec.rounds):  # interleaved so load changes hit every side alike
        for name, fn in steppers.items():
            times[name] += _time(fn, per_round)
    if spec.profile_steps:
        _profile(jax_step, spec.profile_steps, spec.profile_dir)
    devices = jax_info["devices"]
    n_devices = len(devices)
    peak = flops.total_peak_flops(devices)
    tokens, flops_tok = spec.batch_size * spec.seq_len, model_lib.flops_per_token(cfg, spec.seq_len)
    measured = _device_peak_bytes(devices[0])
    rows = {"gpt2_jax": _row(times["gpt2_jax"], tokens, flops_tok, peak,
                             measured if measured is not None else jax_info["memory_plan_bytes"],
                             "memory_stats peak_bytes_in_use" if measured is not None
                             else "XLA memory plan (args + outputs + temp - donated)", jax_info["compile_s"])}
    for name, info in peer_info.items():
        rows[name] = _row(times[name], tokens, flops_tok, peak, bench_peers.torch_peak_memory_bytes(),
                          "torch.cuda.max_memory_allocated", info["first_step_s"])
    for name, path in spec.peers:
        if name == "nanogpt":
            info = bench_peers.run_nanogpt(path, shape, spec.batch_size, spec.seq_len, per_round * spec.rounds,
                                           spec.warmup, spec.dtype, spec.peer_compile, threads)
            rows[name] = _row(info.pop("times_s"), tokens, flops_tok, peak, info.pop("peak_memory_bytes"),
                              "torch.cuda.max_memory_allocated", info["first_step_s"])
            peer_info[name] = info
    device = devices[0]
    report = {
        "kind": "train", **{k: v for k, v in dataclasses.asdict(spec).items() if k not in ("peers", "threads")},
        "peers": [name for name, _ in spec.peers], "padded_vocab_size": cfg.padded_vocab_size,
        "attention_resolved": attention.resolve_implementation(cfg.attention, cfg.dtype),
        "params": model_lib.count_params(model_lib.param_shapes(cfg)), "flops_per_token": flops_tok,
        "flops_formula": flops.FORMULA, "peak_flops": peak, "devices": n_devices,
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "mesh_described": jax_info["mesh"],
        "row_groups_resolved": jax_info["row_groups"],
        "host": platform.processor() or platform.machine(), "cpu_threads": threads, "versions": common.versions(),
        "timed_steps": per_round * spec.rounds, "results": rows, "peer_info": peer_info,
    }
    for name in rows:
        if name != "gpt2_jax":
            report[ratio_key(name)] = rows["gpt2_jax"]["tokens_per_s"] / rows[name]["tokens_per_s"]
    return report


def ratio_key(peer: str) -> str:
    """The report key of our tokens/s over peer's: ratio_vs_hf_torch, ratio_vs_nanogpt."""
    return "ratio_vs_" + peer.replace("-", "_")


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f}" if n is not None else "-"


def format_train_report(r: dict[str, Any]) -> str:
    """The report as an aligned text table, the FLOP accounting, the peers' setup and the ratios."""
    vocab = f"vocab {r['vocab_size']}" + (f" (padded {r['padded_vocab_size']})"
                                          if r["padded_vocab_size"] != r["vocab_size"] else "")
    peak = (f"{r['peak_flops'] / 1e12:,.0f} TFLOP/s over {r['devices']} device(s) (dense bf16)"
            if r["peak_flops"] else "unknown for this device (no MFU)")
    lines = [
        f"train step: preset {r['preset']} ({r['params']:,} params), batch {r['batch_size']} x {r['seq_len']}, "
        f"{vocab}, compute {r['dtype']}, params {r['param_dtype']}, attention {r['attention']} "
        f"({r['attention_resolved']}), remat {r['remat']}, loss chunk {r['loss_chunk'] or 'off'}, "
        f"row groups {r.get('row_groups_resolved', 1)}",
        f"device {r['device']}, mesh {r['mesh_described']}, {r['timed_steps']} timed steps after {r['warmup']} warm-up",
        f"FLOPs/token {r['flops_per_token']:,} = {r['flops_formula']}; peak {peak}",
        f"{'impl':<10} {'tokens/s':>10} {'step ms min':>12} {'median':>9} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'GiB/dev':>9} {'compile s':>10}"]
    for name, row in r["results"].items():
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] else "-"
        lines.append(f"{name:<10} {row['tokens_per_s']:>10.0f} {row['step_ms_min']:>12.1f} "
                     f"{row['step_ms_median']:>9.1f} {row['tflops']:>8.3f} {mfu:>6} "
                     f"{_gib(row['peak_memory_bytes']):>9} {row['compile_s']:>10.1f}")
    lines.append(f"gpt2_jax peak memory: {r['results']['gpt2_jax']['peak_memory_source']}; "
                 "peer compile s = their first step (torch.compile)")
    for name, info in r["peer_info"].items():
        how = "torch.compile" if info["compiled"] else "eager"
        lines.append(f"{name}: {info['device']}, {how}, attention {info['attention']}, "
                     f"{'bf16 autocast' if info['autocast'] else 'fp32'}, {info['version']}"
                     + (f"; {info['note']}" if info.get("note") else ""))
    for name in r["results"]:
        if name != "gpt2_jax":
            lines.append(f"ratio gpt2_jax / {name} tokens/s: {r[ratio_key(name)]:.2f}")
    return "\n".join(lines)
