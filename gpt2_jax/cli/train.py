"""`gpt2-jax train`: load and check the experiment config, join the cluster, run the train job."""

from __future__ import annotations

import os

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
