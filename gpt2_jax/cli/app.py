"""`gpt2-jax`: the parser built from each command module's flags, and the dispatch.

The only module that reads the process environment: it hands `os.environ` to the command it runs
as `env`, and turns the library's errors into one `gpt2-jax: error:` line.
"""

from __future__ import annotations

import argparse
import os
import sys

from gpt2_jax import verbosity
from gpt2_jax.cli import bench, common, data, evaluate, finetune, inspect, sample, train, weights

VERBOSE_HELP = "show the libraries' own warnings, banners and progress bars (absl, Orbax, TFDS)"


def make_parser() -> argparse.ArgumentParser:
    """The argparse parser of `gpt2-jax` (overrides --config.* are collected separately)."""
    p = argparse.ArgumentParser(prog="gpt2-jax", description="GPT-2 in JAX/Flax: train, sample, inspect, bench.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    finetune.add_parsers(sub)
    sample.add_parser(sub)
    bench.add_parser(sub)
    data.add_parsers(sub)
    weights.add_parsers(sub)
    evaluate.add_parsers(sub)
    inspect.add_parser(sub)
    train.add_plan_parser(sub)
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gpt2-jax` console script."""
    args, extra = make_parser().parse_known_args(argv)
    env = os.environ
    verbosity.set_verbose(args.verbose)  # this process is ours: third-party chatter stays off unless asked
    common.add_gpu_xla_flags(env)  # before JAX starts a backend
    common.keep_host_memory(env)  # likewise: XLA's threads take their malloc arena on first use
    try:
        return args.handler(args, common.split_overrides(extra), env)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: e.g. a full disk, naming the file
        from gpt2_jax.parallel import watchdog

        if type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError"):  # a collective failed: if a process was
            watchdog.defer()  # lost, the watchdog names it in one line and exits
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        print(f"gpt2-jax: error: {msg}", file=sys.stderr)
        watchdog.leave(failed=True)  # the other processes of a run wait a moment for their own error line
        return 1 if type(e).__name__ == "TrainingDiverged" else 2


if __name__ == "__main__":
    sys.exit(main())
