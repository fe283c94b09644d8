"""`gpt2-jax bench`: the subcommand's flags, and which benchmark module each kind runs."""

from __future__ import annotations

import os
import pathlib
import sys

from gpt2_jax.cli import common


def run(args, overrides: list[str], env) -> int:
    """`gpt2-jax bench KIND`: runs the benchmark, prints its report (and writes --json)."""
    if args.kind != "reward":  # the one kind that reads an experiment file
        common.no_overrides(f"bench {args.kind}", overrides)
    peers = args.peer or []
    if args.kind == "sweep":
        from gpt2_jax.bench import sweep as bench_sweep

        if args.dry_run:
            print("\n".join(bench_sweep.plan_lines(args.plan, args.nanogpt, args.budget)), flush=True)
            return 0
        rows = bench_sweep.run_sweep(args.plan, args.out or "bench_sweep", nanogpt=args.nanogpt, base_env=dict(env),
                                     echo=lambda line: print(line, flush=True), budget_s=args.budget)
        print(bench_sweep.markdown_table(rows), flush=True)
        return 0
    if args.kind == "recipes":
        from gpt2_jax.bench import recipes as bench_recipes

        out = pathlib.Path(args.out or "bench_recipes")
        report = bench_recipes.bench_recipes(str(out), args.data_dir, nanogpt=args.nanogpt, eval_every=args.eval_every,
                                             env=dict(env), echo=lambda line: print(line, flush=True))
        report["plot"] = bench_recipes.plot_recipes(report, str(out / "recipes.png"))
        common.write_json(str(out / "recipes.json"), report)
        print(bench_recipes.format_report(report) + f"\ncurves: {report['plot']}", flush=True)
        common.write_json(args.json, report)
        return 0
    if peers and common.jax_backend_is_gpu(env):  # the peers share the GPU: no preallocated JAX pool
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.kind == "data":
        from gpt2_jax.bench import data as bench_data
        from gpt2_jax.data import tokens

        data_dir = os.path.expanduser(args.data_dir)
        rows = []
        for workers in sorted({1, args.workers or tokens.cpu_count()}):
            rows += bench_data.bench_prepare(args.source, args.split, args.tokenizers.split(","), data_dir, workers)
        split = bench_data.load_for_bench(args.source, args.split, "gpt2", data_dir)
        report = {"prepare": rows, "loader": bench_data.bench_loader(split, args.loader_batch, args.loader_seq_len)}
        text = bench_data.format_data_report(report["prepare"], report["loader"])
    elif args.kind == "ckpt":
        from gpt2_jax.bench import ckpt as bench_ckpt

        report = bench_ckpt.bench_ckpt(args.preset, args.batch_size, args.seq_len, args.steps,
                                       every=args.save_every, vocab_size=args.vocab_size or 257,
                                       rounds=args.rounds, save_preset=args.save_preset)
        text = bench_ckpt.format_report(report)
    elif args.kind == "eval":
        from gpt2_jax.bench import scoring as bench_eval

        report = bench_eval.bench_eval(args.preset, args.seq_len, args.stride, args.eval_tokens, args.eval_batch,
                                       rounds=args.rounds, dtype=args.dtype, peer=peers[0][0] if peers else "none",
                                       vocab_size=args.vocab_size or 50257)
        text = bench_eval.format_eval_report(report)
    elif args.kind == "reward":
        from gpt2_jax.bench import reward as bench_reward
        from gpt2_jax.jobs import pretrain

        report = bench_reward.bench_reward(args.config, args.steps, pretrain.build, peer=peers[0][0] if peers else "none",
                                           overrides=overrides)
        text = bench_reward.format_report(report)
        if args.json:  # the reward curves beside the report
            text += f"\nreward curves: {bench_reward.plot_curves(report, str(pathlib.Path(args.json).with_suffix('.png')))}"
    elif args.kind == "decode":
        from gpt2_jax.bench import decode as bench

        report = bench.bench_decode(args.preset, args.batch_size, args.prompt_len, args.new_tokens,
                                    rounds=args.rounds, dtype=args.dtype, peer=peers[0][0] if peers else "none",
                                    vocab_size=args.vocab_size or 50257, n_layer=args.n_layer)
        text = bench.format_decode_report(report)
    else:
        from gpt2_jax.bench import train as bench_train

        report = bench_train.bench_train(train_bench_spec(args))
        report["xla_flags"] = env.get("XLA_FLAGS", "")
        report["argv"] = sys.argv[1:]
        text = bench_train.format_train_report(report)
    print(text, flush=True)
    common.write_json(args.json, report)
    return 0


def train_bench_spec(args):
    """The bench_train.TrainBench that parsed `gpt2-jax bench train` arguments ask for."""
    from gpt2_jax.bench import train as bench_train
    from gpt2_jax.parallel import profiling

    peers = [tuple(p) for p in args.peer or []]
    for p in peers:
        if len(p) > 2:
            raise ValueError(f"--peer {' '.join(p)}: one name and at most one path")
    return bench_train.TrainBench(
        preset=args.preset, batch_size=args.batch_size, seq_len=args.seq_len, vocab_size=args.vocab_size or 257,
        vocab_multiple=args.vocab_multiple, dtype=args.dtype, param_dtype=args.param_dtype,
        attention=args.attention, remat=args.remat, loss_chunk=args.loss_chunk,
        row_groups=args.row_groups, mesh=common.mesh_sizes(args.mesh),
        rules=args.rules, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        peers=tuple((p[0], p[1] if len(p) > 1 else None) for p in peers if p[0] != "none"),
        peer_compile=args.peer_compile, profile_steps=profiling.parse_steps(args.profile_steps or ""),
        profile_dir=args.profile_dir)


def add_parser(sub) -> None:
    """Adds the `bench` subcommand and its flags to the subparsers `sub`."""
    b = sub.add_parser("bench", help="throughput of train steps, decoding, eval, data, checkpoint saves; peers beside")
    b.add_argument("kind", nargs="?", choices=["train", "decode", "eval", "data", "ckpt", "sweep", "reward", "recipes"],
                   default="train", help="sweep: every GPU figure of BENCHMARKS.md, one subprocess per row (see "
                   "--plan); recipes: the default run's recipe, the old one and nanoGPT's CPU one, back to back")
    b.add_argument("--preset", default="tiny")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--seq-len", type=int, default=256, help="train: tokens per row")
    b.add_argument("--prompt-len", type=int, default=128, help="decode: prompt tokens per row")
    b.add_argument("--new-tokens", type=int, default=256, help="decode: tokens generated per row")
    b.add_argument("--vocab-size", type=int, help="default: 257 (train), 50257 (decode)")
    b.add_argument("--n-layer", type=int, help="decode: blocks instead of the preset's (a distilled student's depth)")
    b.add_argument("--vocab-multiple", type=int, default=1, help="train: pad the vocab up to a multiple (128: 50304)")
    b.add_argument("--steps", type=int, default=10, help="train: timed steps; reward: steps of each")
    b.add_argument("--config", default="experiments/reward_comedy.py", help="reward: the experiment file")
    b.add_argument("--warmup", type=int, default=2, help="train: untimed steps")
    b.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
    b.add_argument("--param-dtype", default="float32", help="train: params and AdamW moments (bfloat16: all-bf16)")
    b.add_argument("--attention", default="auto", help="train: auto | xla | cudnn | blocked")
    b.add_argument("--remat", default="none", help="train: none | dots (dots saveable) | full, per block")
    b.add_argument("--loss-chunk", type=int, default=0, help="train: cross-entropy this many positions at a time")
    b.add_argument("--row-groups", type=int, default=0, help="train: independent row groups of the loss (0: auto, "
                   "2 on CPU; 1: off)")
    b.add_argument("--mesh", default="-1,1,1", help="train: DATA,FSDP,TENSOR devices (-1: the rest)")
    b.add_argument("--rules", default="fsdp+tp", help="train: sharding rules (dp | fsdp | tp | fsdp+tp)")
    b.add_argument("--rounds", type=int, default=2, help="interleaved rounds with the peer")
    b.add_argument("--peer", nargs="+", action="append", metavar="NAME [PATH]",
                   help="repeatable: hf-torch (transformers GPT-2) | nanogpt PATH (a nanoGPT checkout) | trl "
                   "(reward) | none")
    b.add_argument("--peer-compile", default="auto", help="train: torch.compile the peers: auto | on | off")
    b.add_argument("--profile-steps", help="train: A:B traces extra steps A..B-1 with jax.profiler")
    b.add_argument("--profile-dir", default="bench_profile", help="train: where the trace goes")
    b.add_argument("--plan", default="gpu", help="sweep: gpu (gpt2 T=1024 and larger) | cpu-switches | smoke")
    b.add_argument("--out", help="sweep: folder for sweep.json and sweep.md (resumes; default bench_sweep); "
                   "recipes: folder for the runs, recipes.json and recipes.png (default bench_recipes)")
    b.add_argument("--nanogpt", help="sweep, recipes: a nanoGPT checkout for the side-by-side row")
    b.add_argument("--eval-every", type=int, default=100, help="recipes: steps between our runs' validation points")
    b.add_argument("--budget", type=float, help="sweep: run only the rows whose budgets fit in this many seconds")
    b.add_argument("--dry-run", action="store_true", help="sweep: print the rows, their order and budgets; run nothing")
    b.add_argument("--json", help="also write the report here")
    b.add_argument("--stride", type=int, default=512, help="eval: window advance (--seq-len is the window)")
    b.add_argument("--eval-tokens", type=int, default=4096, help="eval: length of the scored token sequence")
    b.add_argument("--eval-batch", type=int, default=1, help="eval: windows per forward pass (ours)")
    bd = b.add_argument_group("data: prepare MB/s per core and loader batches/s")
    bd.add_argument("--source", default="shakespeare/plays", help="data: the source to tokenize")
    bd.add_argument("--split", default="train", help="data: its split")
    bd.add_argument("--tokenizers", default="byte,gpt2,sentencepiece", help="data: comma-separated tokenizer names (sentencepiece: train 8000 BPE pieces first)")
    bd.add_argument("--data-dir", default="~/tensorflow_datasets", help="data, recipes: the TFDS data_dir")
    bd.add_argument("--workers", type=int, default=0, help="data: prepare workers besides 1 (0: all cores)")
    bd.add_argument("--loader-batch", type=int, default=8, help="data: loader batch rows")
    bd.add_argument("--loader-seq-len", type=int, default=1024, help="data: loader tokens per row")
    b.add_argument("--save-every", type=int, default=10, help="ckpt: steps between saves in the timed run")
    b.add_argument("--save-preset", default="gpt2", help="ckpt: preset whose full state times one save")
    b.set_defaults(handler=run)
