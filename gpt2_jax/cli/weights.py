"""`gpt2-jax export` (weights only, from a run) and `gpt2-jax convert` (to Hugging Face or a run)."""

from __future__ import annotations

import sys

from gpt2_jax.cli import common


def add_parsers(sub) -> None:
    """Adds the `export` and `convert` subcommands to the subparsers `sub`."""
    e = sub.add_parser("export", help="weights only (no optimizer state) of a run's step, for load() and --init-from")
    e.add_argument("--run", required=True, help="the run directory")
    e.add_argument("--step", default="best", help="best (default) | latest | a step number")
    e.add_argument("--out", required=True, help="a new directory")
    e.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    e.set_defaults(handler=export)
    cv = sub.add_parser("convert", help="write a run, HF or OpenAI GPT-2 directory as a HF directory or a run")
    cv.add_argument("source", help="run directory, HF directory (config.json) or OpenAI directory (hparams.json)")
    cv.add_argument("--to", choices=["hf", "run"], default="hf",
                    help="hf: safetensors + config.json + tokenizer files (a classifier: GPT2ForSequenceClassification); "
                         "run: a step-0 checkpoint for load/sample/predict")
    cv.add_argument("--out", required=True, help="the directory to write")
    cv.add_argument("--step", default="latest", help="run directories: latest | best | a step number")
    cv.set_defaults(handler=convert)


def export(args, overrides: list[str], env) -> int:
    """`gpt2-jax export`."""
    common.no_overrides("export", overrides)
    from gpt2_jax.checkpoint import export as export_lib

    out = export_lib.export(args.run, args.out, step=args.step, dtype=args.dtype)
    print(f"exported step {export_lib.open_source(out).step} of {args.run} ({args.dtype}) to {out}", flush=True)
    return 0


def convert(args, overrides: list[str], env) -> int:
    """`gpt2-jax convert`."""
    common.no_overrides("convert", overrides)
    from gpt2_jax import api

    w = api.load_weights(args.source, step=args.step, task="any")
    if args.to == "run":
        from gpt2_jax.jobs import convert as convert_job

        convert_job.save_as_run(args.out, w, args.source)
        print(f"{args.source} ({w.kind}) -> run directory {args.out} (step 0)", flush=True)
        return 0
    from gpt2_jax.weights import huggingface

    written = huggingface.save_hf_directory(args.out, w.config, w.params, w.tokenizer, task=w.task)
    print(f"{args.source} ({w.kind}) -> {args.out}: {', '.join(written)}", flush=True)
    if "vocab.json" not in written:
        kept = (f"{huggingface.TOKENIZER_SPEC} records it for gpt2-jax" if huggingface.TOKENIZER_SPEC in written
                else "no tokenizer files were written")
        print(f"note: the {w.tokenizer.name} tokenizer has no Hugging Face vocab.json/merges.txt; {kept}",
              file=sys.stderr, flush=True)
    return 0
