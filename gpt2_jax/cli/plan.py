"""`gpt2-jax plan`: per-device memory of a config's train step, compiled for a (virtual) mesh."""

from __future__ import annotations

import sys

from gpt2_jax.cli import common


def add_parser(sub) -> None:
    """Adds the `plan` subcommand to the subparsers `sub`."""
    pl = sub.add_parser("plan", help="per-device memory of a config's train step, compiled for a virtual mesh")
    pl.add_argument("--config", required=True)
    pl.add_argument("--devices", type=int, help="virtual CPU devices to compile for (default: the real ones)")
    pl.add_argument("--mesh", action="append", help="DATA,FSDP,TENSOR (repeatable), e.g. --mesh 8,1,1 --mesh 1,8,1")
    pl.add_argument("--presets", help="comma-separated model presets (default: the config's)")
    pl.add_argument("--remat", help="comma-separated remat policies, e.g. none,full (default: the config's)")
    pl.add_argument("--device-gib", type=float, default=80.0, help="memory per device for the 'fits' column")
    pl.add_argument("--json", help="also write the rows here")
    pl.set_defaults(handler=run)


def _mesh_overrides(mesh: str | None) -> list[str]:
    if mesh is None:
        return []
    return [f"mesh.{axis}={n}" for axis, n in zip(("data", "fsdp", "tensor"), common.mesh_sizes(mesh))]


def run(args, overrides: list[str], env) -> int:
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
