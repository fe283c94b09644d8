"""`gpt2-jax sample`: decode text from a run or an export, streamed for a single prompt."""

from __future__ import annotations

import sys

from gpt2_jax.cli import common


def add_parser(sub) -> None:
    """Adds the `sample` subcommand to the subparsers `sub`."""
    s = sub.add_parser("sample", help="generate text from a run directory (streams a single prompt)")
    s.add_argument("--run", required=True)
    s.add_argument("--prompt", help="the text to continue (default: empty, i.e. start from EOS)")
    s.add_argument("--prompts-file", help="one prompt per line, decoded as one batch")
    s.add_argument("--step", default="latest", help="latest | best | a step number")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    s.add_argument("--top-k", type=int, default=40, help="0 keeps every token")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    s.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    s.add_argument("--repetition-penalty", type=float, default=1.0)
    s.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    s.add_argument("--num-beams", type=int, default=1, help="> 1: beam search (deterministic)")
    s.add_argument("--stop", action="append", help="stop string (repeatable); not included in the output")
    s.add_argument("--truncate", choices=["slide", "error", "left"], default="slide",
                   help="text longer than the context: slide the window over it (default), error, or keep "
                        "the end of a prompt too long for prompt + max new tokens")
    s.add_argument("--no-stream", action="store_true", help="print the whole text at the end")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler=run)


def _prompts(args) -> list[str]:
    if args.prompts_file is not None and args.prompt is not None:
        raise common.UsageError("give --prompt or --prompts-file, not both")
    if args.prompts_file is None:
        return [args.prompt or ""]
    with open(args.prompts_file, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise common.UsageError(f"{args.prompts_file} has no prompts (one per line)")
    return prompts


def run(args, overrides: list[str], env) -> int:
    """`gpt2-jax sample`."""
    common.no_overrides("sample", overrides)
    prompts = _prompts(args)
    from gpt2_jax import api

    m = api.load(args.run, step=args.step)
    print(f"{m.summary()}", file=sys.stderr, flush=True)
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, stop=args.stop or (), truncate=args.truncate)
    stream = len(prompts) == 1 and args.num_samples == 1 and args.num_beams == 1 and not args.no_stream
    if stream:  # tokens appear as they are decoded
        print(prompts[0], end="", flush=True)
        for piece in m.stream(prompts[0], args.max_new_tokens, seed=args.seed, **opts):
            print(piece, end="", flush=True)
        print(flush=True)
        return 0
    if args.num_beams > 1:
        opts = dict(stop=opts["stop"], truncate=args.truncate)
    out = m.generate(prompts, args.max_new_tokens, num_samples=args.num_samples, num_beams=args.num_beams,
                     seed=args.seed, **opts)
    for prompt, completions in zip(prompts, out):
        for c in completions if isinstance(completions, list) else [completions]:
            print(f"{prompt}{c.text}", flush=True)
            if len(prompts) > 1 or args.num_samples > 1:
                print("-" * 40, flush=True)
    return 0
