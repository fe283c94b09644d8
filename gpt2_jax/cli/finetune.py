"""`gpt2-jax finetune`: a classification experiment in several arms (pretrained, random init, TF-IDF
baseline, frozen body, LoRA) side by side, and the table of their held-out scores."""

from __future__ import annotations

import os

from gpt2_jax.cli import common


def add_parser(sub) -> None:
    """Adds the `finetune` subcommand to the subparsers `sub`."""
    f = sub.add_parser("finetune", help="compare fine-tuning arms of a classification experiment in one table")
    f.add_argument("--config", required=True, help="experiments/<name>.py with task.kind=classify; then --config.*")
    f.add_argument("--init-from", help="the pretrained run or export (default: the config's checkpoint.init_from)")
    f.add_argument("--arms", default="pretrained,random,baseline,frozen,lora",
                   help="comma-separated, from: pretrained, random, baseline, frozen, lora")
    f.add_argument("--out", help="folder of the arms' run dirs and table.{md,json} (default: train.run_dir)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(handler=run)


def run(args, overrides: list[str], env) -> int:
    """`gpt2-jax finetune`."""
    extra = [f"checkpoint.init_from={os.path.abspath(args.init_from)!r}"] if args.init_from else []
    extra += ["train.progress=false"] if args.quiet else []
    from gpt2_jax.jobs import finetune

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms:
        raise common.UsageError("--arms names no arm")
    finetune.run(args.config, [*overrides, *extra], arms, args.out)
    return 0
