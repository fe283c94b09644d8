"""`gpt2-jax train` (load and check the experiment config, join the cluster, run the train job) and
`gpt2-jax plan` (per-device memory of a config's train step, compiled for a virtual mesh)."""

from __future__ import annotations

import os
import sys

from gpt2_jax.cli import common


def add_parser(sub) -> None:
    """Adds the `train` subcommand to the subparsers `sub`."""
    t = sub.add_parser("train", help="train an experiment config (resumes if the run dir has checkpoints)")
    t.add_argument("--config", required=True, help="experiments/<name>.py; then --config.section.key=value")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--resume-from", help="latest (default: the newest good step) | best | a step number")
    t.add_argument("--init-from", help="an export or run dir whose params start this run (fine-tuning)")
    t.add_argument("--profile-steps", help="A:B: jax.profiler trace of steps A..B-1 into <run_dir>/profile")
    g = t.add_argument_group("multi-process (default: GPT2_JAX_* env, else SLURM / TPU-pod auto-detection)")
    g.add_argument("--coordinator", help="HOST:PORT of process 0, reachable from every process")
    g.add_argument("--num-processes", type=int, help="processes in the run")
    g.add_argument("--process-id", type=int, help="this process's id, 0..N-1")
    g.add_argument("--local-device-ids", help="comma-separated local device ids this process uses, e.g. 0")
    g.add_argument("--coordinator-timeout", type=int, default=300, help="seconds to wait for all processes")
    g.add_argument("--heartbeat-timeout", type=int, default=30,
                   help="seconds without a heartbeat before a process is given up and the run stops (a killed "
                        "process is noticed at once)")
    t.set_defaults(handler=run)


def start_overrides(args) -> list[str]:
    """--resume-from / --init-from / --profile-steps as the config keys they set."""
    out = []
    if args.resume_from is not None:
        out.append(f"checkpoint.resume_from={args.resume_from!r}")
    if args.init_from is not None:
        out.append(f"checkpoint.init_from={os.path.abspath(args.init_from)!r}")
    if args.profile_steps:
        out.append(f"train.profile_steps={args.profile_steps}")
    return out


def join_cluster(args, env) -> None:
    """Initialize jax.distributed from the flags or the launcher's environment (before any JAX work)."""
    from gpt2_jax.parallel import distributed

    if args.heartbeat_timeout < 1:
        raise common.UsageError(f"--heartbeat-timeout must be >= 1 second, got {args.heartbeat_timeout}")
    spec = distributed.detect(args.coordinator, args.num_processes, args.process_id, args.local_device_ids,
                              args.coordinator_timeout, env=env, heartbeat_s=args.heartbeat_timeout)
    distributed.initialize(spec)
    if spec.mode != "single":
        import jax

        if jax.process_index() == 0:
            print(f"cluster: {jax.process_count()} processes ({spec.source}), {jax.device_count()} devices, "
                  f"{jax.local_device_count()} per process", flush=True)


def run(args, overrides: list[str], env) -> int:
    """`gpt2-jax train`."""
    from gpt2_jax import config as config_lib

    cfg = config_lib.load_config(args.config, [*overrides, *start_overrides(args)])
    join_cluster(args, env)
    from gpt2_jax.jobs import pretrain  # after validation, so a config typo fails before JAX loads
    from gpt2_jax.parallel import distributed

    if args.quiet:
        cfg.train.progress = False
    say = print if distributed.is_primary() else common.silent  # one process speaks for the run
    say(f"config ({args.config}):\n{config_lib.to_json(cfg)}", flush=True)
    try:
        pretrain.run(cfg, say)
    except SystemExit as e:
        if not e.code:  # stopped by a signal, checkpoint saved: a clean exit
            distributed.leave()
        raise
    distributed.leave()  # the other processes must not take this one's exit for a loss
    return 0


# --------------------------------------------------------------------------- plan

def add_plan_parser(sub) -> None:
    """Adds the `plan` subcommand to the subparsers `sub`."""
    pl = sub.add_parser("plan", help="per-device memory of a config's train step, compiled for a virtual mesh")
    pl.add_argument("--config", required=True)
    pl.add_argument("--devices", type=int, help="virtual CPU devices to compile for (default: the real ones)")
    pl.add_argument("--mesh", action="append", help="DATA,FSDP,TENSOR (repeatable), e.g. --mesh 8,1,1 --mesh 1,8,1")
    pl.add_argument("--presets", help="comma-separated model presets (default: the config's)")
    pl.add_argument("--remat", help="comma-separated remat policies, e.g. none,full (default: the config's)")
    pl.add_argument("--device-gib", type=float, default=80.0, help="memory per device for the 'fits' column")
    pl.add_argument("--json", help="also write the rows here")
    pl.set_defaults(handler=run_plan)


def _mesh_overrides(mesh: str | None) -> list[str]:
    if mesh is None:
        return []
    return [f"mesh.{axis}={n}" for axis, n in zip(("data", "fsdp", "tensor"), common.mesh_sizes(mesh))]


def run_plan(args, overrides: list[str], env) -> int:
    """`gpt2-jax plan`."""
    if args.devices:  # virtual CPU devices; XLA reads this when the backend starts, after this line
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}").strip()
    from gpt2_jax import config as config_lib

    base = config_lib.load_config(args.config, overrides)
    from gpt2_jax.jobs import plan

    rows = []
    presets = args.presets.split(",") if args.presets else [base.model.preset]
    for preset in presets:
        for mesh in args.mesh or [None]:
            for remat in args.remat.split(",") if args.remat else [base.model.remat]:
                cfg = config_lib.load_config(args.config, [*overrides, f"model.preset={preset}",
                                                           f"model.remat={remat}", *_mesh_overrides(mesh)])
                row = plan.plan_memory(cfg)
                rows.append(row)
                print(f"compiled {preset} mesh {row['mesh']} remat {remat} in {row['compile_s']:.0f} s",
                      file=sys.stderr, flush=True)
    print(plan.format_plan(rows, args.device_gib), flush=True)
    common.write_json(args.json, rows)
    return 0
