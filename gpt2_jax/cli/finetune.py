"""`gpt2-jax finetune`: a classification experiment in several arms (pretrained, random init, TF-IDF
baseline, frozen body, LoRA) side by side, and the table of their held-out scores; `gpt2-jax
predict`: a trained classifier's labels and probabilities for the texts of a JSONL file."""

from __future__ import annotations

import os

from gpt2_jax.cli import common


def add_parsers(sub) -> None:
    """Adds the `finetune` and `predict` subcommands to the subparsers `sub`."""
    f = sub.add_parser("finetune", help="compare fine-tuning arms of a classification experiment in one table")
    f.add_argument("--config", required=True, help="experiments/<name>.py with task.kind=classify; then --config.*")
    f.add_argument("--init-from", help="the pretrained run or export (default: the config's checkpoint.init_from)")
    f.add_argument("--arms", default="pretrained,random,baseline,frozen,lora",
                   help="comma-separated, from: pretrained, random, baseline, frozen, lora")
    f.add_argument("--out", help="folder of the arms' run dirs and table.{md,json} (default: train.run_dir + '_arms')")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(handler=run)
    p = sub.add_parser("predict", help="classify the texts of a JSONL file with a fine-tuned classifier")
    p.add_argument("--run", required=True, help="a classifier's run directory or export")
    p.add_argument("--input", required=True, help="JSONL, one record per line with the text in --field")
    p.add_argument("--out", help="where to write the records with 'predicted' and 'probabilities' "
                                 "(default: INPUT with .predictions.jsonl)")
    p.add_argument("--field", default="text", help="the text field of each record")
    p.add_argument("--step", default="best", help="best (default) | latest | a step number")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(handler=run_predict)


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


def run_predict(args, overrides: list[str], env) -> int:
    """`gpt2-jax predict`."""
    common.no_overrides("predict", overrides)
    from gpt2_jax.jobs import predict

    out = args.out or str(args.input).removesuffix(".jsonl") + ".predictions.jsonl"
    summary = predict.predict_jsonl(args.run, args.input, out, args.field, args.step, args.batch_size)
    accuracy = f"; accuracy against its 'label' field {summary['accuracy']:.4f}" if "accuracy" in summary else ""
    print(f"{summary['records']} records classified -> {summary['out']}{accuracy}", flush=True)
    return 0
