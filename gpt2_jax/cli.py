"""`gpt2-jax` command line: train, sample, prepare, tokenizer, export, eval, table, convert, bench, plan.

The only module that reads the environment (`cli_bench` and `cli_eval` hold two subcommands' flags
and dispatch, and get the environment from here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from gpt2_jax import cli_bench, cli_eval


class _UsageError(ValueError):
    pass


def _silent(*args, **kwargs) -> None:
    pass


def _split_overrides(extra: list[str]) -> list[str]:
    """Collect `--config.a.b=v` / `--config.a.b v` pairs; anything else is a usage error."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise _UsageError(f"unrecognized argument {arg!r}; config overrides look like --config.optim.lr=3e-4")
        if "=" not in arg:
            if i + 1 >= len(extra):
                raise _UsageError(f"{arg} needs a value, e.g. {arg}=VALUE")
            arg, i = f"{arg}={extra[i + 1]}", i + 1
        out.append(arg)
        i += 1
    return out


def _join_cluster(args) -> None:
    """Initialize jax.distributed from the flags or the launcher's environment (before any JAX work)."""
    from gpt2_jax import distributed

    spec = distributed.detect(args.coordinator, args.num_processes, args.process_id, args.local_device_ids,
                              args.coordinator_timeout, env=os.environ)
    distributed.initialize(spec)
    if spec.mode != "single":
        import jax

        if jax.process_index() == 0:
            print(f"cluster: {jax.process_count()} processes ({spec.source}), {jax.device_count()} devices, "
                  f"{jax.local_device_count()} per process", flush=True)


def _cmd_train(args, overrides: list[str]) -> int:
    from gpt2_jax import config as config_lib

    overrides = [*overrides, *_start_overrides(args)]
    if args.profile_steps:
        overrides = [*overrides, f"train.profile_steps={args.profile_steps}"]
    cfg = config_lib.load_config(args.config, overrides)
    _join_cluster(args)
    from gpt2_jax import distributed, experiment  # after validation, so a config typo fails before JAX loads
    if args.quiet:
        cfg.train.progress = False
    say = print if distributed.is_primary() else _silent  # one process speaks for the run
    say(f"config ({args.config}):\n{config_lib.to_json(cfg)}", flush=True)
    t0 = time.perf_counter()
    comps = experiment.build(cfg)
    mcfg = comps.model.cfg
    from gpt2_jax import model as model_lib

    n = model_lib.count_params(model_lib.param_shapes(mcfg))
    say(f"model: {mcfg.n_layer} layers x {mcfg.n_embd} wide x {mcfg.n_head} heads, {n:,} params, "
        f"vocab {mcfg.vocab_size}, context {mcfg.n_positions}", flush=True)
    for role, split in comps.splits.items():
        h = split.header
        say(f"data {role}: {cfg.data.source}:{h.get('split')} {h['num_tokens']:,} tokens, "
            f"{h['num_bytes']:,} bytes, {h['num_documents']} documents", flush=True)
    out = experiment.fit(comps, echo=say)
    r = out["results"]
    say(f"validation: loss {r['val_loss']:.4f} nats/token, ppl {r['val_ppl']:.3f}, "
        f"bits/byte {r['val_bpb']:.4f}", flush=True)
    if "test_loss" in r:
        say(f"test (held out): loss {r['test_loss']:.4f} nats/token, ppl {r['test_ppl']:.3f}, "
            f"bits/byte {r['test_bpb']:.4f}", flush=True)
    run_dir = os.path.abspath(cfg.train.run_dir)
    say(f"checkpoint: {run_dir}/checkpoints/{r['step']}; loss curve: {run_dir}/loss.png", flush=True)
    if cfg.train.sample_tokens > 0:
        params = distributed.to_host(out["state"].params)  # collective: gathers shards other processes hold
        if distributed.is_primary():
            text = experiment.sample_text(comps, params, cfg.train.sample_prompt, cfg.train.sample_tokens,
                                          cfg.train.sample_temperature, cfg.train.sample_top_k, seed=cfg.train.seed)
            say(f"sample:\n{cfg.train.sample_prompt}{text}", flush=True)
    say(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def _start_overrides(args) -> list[str]:
    """--resume-from / --init-from as the config keys they set."""
    out = []
    if args.resume_from is not None:
        out.append(f"checkpoint.resume_from={args.resume_from!r}")
    if args.init_from is not None:
        out.append(f"checkpoint.init_from={os.path.abspath(args.init_from)!r}")
    return out


def _cmd_export(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("export takes no --config overrides")
    from gpt2_jax import export

    out = export.export(args.run, args.out, step=args.step, dtype=args.dtype)
    print(f"exported step {export.open_source(out).step} of {args.run} ({args.dtype}) to {out}", flush=True)
    return 0


def _cmd_sample(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("sample takes no --config overrides")
    if args.prompts_file is not None and args.prompt is not None:
        raise _UsageError("give --prompt or --prompts-file, not both")
    if args.prompts_file is not None:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise _UsageError(f"{args.prompts_file} has no prompts (one per line)")
    else:
        prompts = [args.prompt or ""]
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


def _cmd_prepare(args, overrides: list[str]) -> int:
    from gpt2_jax.data import sources, tokenizers, tokens

    if args.config:
        from gpt2_jax import config as config_lib

        d = config_lib.load_config(args.config, overrides).data
        source, splits = d.source, [s for s in (d.train_split, d.eval_split, d.test_split) if s]
        tokenizer, data_dir, text_field = d.tokenizer, d.data_dir, d.text_field
    elif overrides:
        raise _UsageError("--config.* overrides need --config")
    elif not args.source:
        raise _UsageError("give --config EXPERIMENT.py, or --source SOURCE[@SPLIT]")
    else:
        source, pinned = sources.split_source(args.source)
        splits = [pinned] if pinned else args.splits.split(",")
        tokenizer, data_dir, text_field = args.tokenizer, args.data_dir, args.text_field
    tok = tokenizers.make_tokenizer(tokenizer)
    workers = args.workers or tokens.cpu_count()
    for split in splits:
        path = tokens.prepare_split(source, split, tok, os.path.expanduser(data_dir), show_progress=not args.quiet,
                                    text_field=text_field, workers=workers)
        h = tokens.load_split(path, tok).header
        print(f"{source}:{split}: {h['num_tokens']:,} tokens ({h['dtype']}, {len(h['shards'])} shards), "
              f"{h['num_documents']:,} documents, {h['num_bytes']:,} bytes -> {path}", flush=True)
    return 0


# XLA flags set for GPU runs (a flag already in XLA_FLAGS wins; GPT2_JAX_GPU_FLAGS=0 sets none).
# The latency-hiding scheduler overlaps fsdp/data-parallel collectives with compute (NVIDIA's JAX
# containers set it too); `gpt2-jax bench sweep --plan gpu` measures the step with and without.
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)
_CUDA_PLUGINS = ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12", "jax_cuda13_plugin", "jax_cuda12_plugin")


def jax_backend_is_gpu(env) -> bool:
    """Whether JAX will start on a GPU: JAX_PLATFORMS names one first, or unset with a CUDA plugin installed."""
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] in ("cuda", "gpu", "rocm")
    import importlib.util

    for name in _CUDA_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:
            continue
    return False


def add_gpu_xla_flags(env) -> list[str]:
    """Append GPU_XLA_FLAGS to env['XLA_FLAGS'] when JAX will run on a GPU (before JAX starts); the added ones."""
    if env.get("GPT2_JAX_GPU_FLAGS", "1") == "0" or not jax_backend_is_gpu(env):
        return []
    present = {flag.split("=")[0] for flag in env.get("XLA_FLAGS", "").split()}
    added = [flag for flag in GPU_XLA_FLAGS if flag.split("=")[0] not in present]
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *added]).strip()
    return added


def _cmd_bench(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("bench takes no --config overrides")
    return cli_bench.run(args, os.environ, jax_backend_is_gpu(os.environ))


def train_bench_spec(args):
    """The bench_train.TrainBench that parsed `gpt2-jax bench train` arguments ask for."""
    return cli_bench.train_bench_spec(args)


def _cmd_plan(args, overrides: list[str]) -> int:
    if args.devices:  # virtual CPU devices; XLA reads this when the backend starts, after this line
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
    from gpt2_jax import config as config_lib

    base = config_lib.load_config(args.config, overrides)
    from gpt2_jax import plan

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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def _cmd_tokenizer(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("tokenizer train takes no --config overrides")
    from gpt2_jax.data import spm

    tok = spm.train_sentencepiece(args.source, args.out, args.vocab_size, args.model_type, split=args.split,
                                  data_dir=args.data_dir, seed=args.seed, num_threads=args.threads,
                                  character_coverage=args.character_coverage,
                                  max_sentences=args.max_sentences, overwrite=args.force,
                                  echo=lambda line: print(line, flush=True))
    print(f"use it with --config.data.tokenizer=sentencepiece:{tok.path}", flush=True)
    return 0


def _mesh_overrides(mesh: str | None) -> list[str]:
    if mesh is None:
        return []
    sizes = mesh.split(",")
    if len(sizes) != 3:
        raise _UsageError(f"--mesh {mesh!r} needs three sizes DATA,FSDP,TENSOR, e.g. 1,8,1 (-1: the rest)")
    return [f"mesh.{axis}={n}" for axis, n in zip(("data", "fsdp", "tensor"), sizes)]


def make_parser() -> argparse.ArgumentParser:
    """The argparse parser of `gpt2-jax` (overrides --config.* are collected separately)."""
    p = argparse.ArgumentParser(prog="gpt2-jax", description="GPT-2 in JAX/Flax: train, sample, bench.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
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
    s.add_argument("--truncate", choices=["error", "left"], default="error",
                   help="a prompt too long for the context: error (default) or keep its end")
    s.add_argument("--no-stream", action="store_true", help="print the whole text at the end")
    s.add_argument("--seed", type=int, default=0)
    cli_bench.add_parser(sub)
    pr = sub.add_parser("prepare", help="tokenize a source's splits once into token shards (reused by train)")
    pr.add_argument("--config", help="prepare the train/eval/test splits this experiment names")
    pr.add_argument("--source", help="SOURCE, SOURCE@SPLIT, or SOURCE:SPLIT for tfds:/shakespeare sources")
    pr.add_argument("--splits", default="train,validation,test", help="comma-separated splits of --source")
    pr.add_argument("--tokenizer", default="byte", help="byte | gpt2 | gpt2:/path | sentencepiece:/path.model")
    pr.add_argument("--data-dir", default="~/tensorflow_datasets")
    pr.add_argument("--text-field", default="text", help="the text feature of a tfds: source")
    pr.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: one per CPU core)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("export", help="weights only (no optimizer state) of a run's step, for load() and --init-from")
    e.add_argument("--run", required=True, help="the run directory")
    e.add_argument("--step", default="best", help="best (default) | latest | a step number")
    e.add_argument("--out", required=True, help="a new directory")
    e.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    cli_eval.add_parsers(sub)
    pl = sub.add_parser("plan", help="per-device memory of a config's train step, compiled for a virtual mesh")
    pl.add_argument("--config", required=True)
    pl.add_argument("--devices", type=int, help="virtual CPU devices to compile for (default: the real ones)")
    pl.add_argument("--mesh", action="append", help="DATA,FSDP,TENSOR (repeatable), e.g. --mesh 8,1,1 --mesh 1,8,1")
    pl.add_argument("--presets", help="comma-separated model presets (default: the config's)")
    pl.add_argument("--remat", help="comma-separated remat policies, e.g. none,full (default: the config's)")
    pl.add_argument("--device-gib", type=float, default=80.0, help="memory per device for the 'fits' column")
    pl.add_argument("--json", help="also write the rows here")
    tk = sub.add_parser("tokenizer", help="train a lossless SentencePiece tokenizer on a data source")
    tk.add_argument("action", choices=["train"])
    tk.add_argument("--source", required=True, help="shakespeare[/plays|/first_folio|/milton] or text:GLOB")
    tk.add_argument("--split", default="train")
    tk.add_argument("--data-dir", default="~/tensorflow_datasets", help="where sources are prepared")
    tk.add_argument("--vocab-size", type=int, required=True, help="pieces, incl. <unk>, </s> and 256 bytes")
    tk.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    tk.add_argument("--out", required=True, help="the .model file to write")
    tk.add_argument("--seed", type=int, default=0)
    tk.add_argument("--threads", type=int, default=1, help="trainer threads (the unigram model depends on it)")
    tk.add_argument("--character-coverage", type=float, default=0.9995,
                    help="share of characters given their own piece; rarer ones use byte pieces")
    tk.add_argument("--max-sentences", type=int, default=1_000_000, help="chunks sampled for training")
    tk.add_argument("--force", action="store_true", help="replace a different model already at --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gpt2-jax` console script."""
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    add_gpu_xla_flags(os.environ)  # before JAX starts a backend
    commands = {"train": _cmd_train, "sample": _cmd_sample, "bench": _cmd_bench, "plan": _cmd_plan,
                "prepare": _cmd_prepare, "tokenizer": _cmd_tokenizer, "export": _cmd_export,
                "eval": cli_eval.cmd_eval, "table": cli_eval.cmd_table, "convert": cli_eval.cmd_convert}
    try:
        return commands[args.command](args, _split_overrides(extra))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        print(f"gpt2-jax: error: {msg}", file=sys.stderr)
        return 1 if type(e).__name__ == "TrainingDiverged" else 2


if __name__ == "__main__":
    sys.exit(main())
