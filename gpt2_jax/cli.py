"""`gpt2-jax` command line: train, sample, bench, plan. The only module that reads the environment."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


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


def _cmd_bench(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("bench takes no --config overrides")
    peers = args.peer or []
    if args.kind == "sweep":
        from gpt2_jax import bench_sweep

        rows = bench_sweep.run_sweep(args.plan, args.out, nanogpt=args.nanogpt, base_env=dict(os.environ),
                                     echo=lambda line: print(line, flush=True))
        print(bench_sweep.markdown_table(rows), flush=True)
        return 0
    if peers and jax_backend_is_gpu(os.environ):  # the peers share the GPU: no preallocated JAX pool
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.kind == "data":
        from gpt2_jax import bench_data
        from gpt2_jax.data import tokens

        data_dir = os.path.expanduser(args.data_dir)
        rows = []
        for workers in sorted({1, args.workers or tokens.cpu_count()}):
            rows += bench_data.bench_prepare(args.source, args.split, args.tokenizers.split(","), data_dir, workers)
        split = bench_data.load_for_bench(args.source, args.split, "gpt2", data_dir)
        report = {"prepare": rows, "loader": bench_data.bench_loader(split, args.loader_batch, args.loader_seq_len)}
        text = bench_data.format_data_report(report["prepare"], report["loader"])
    elif args.kind == "ckpt":
        from gpt2_jax import bench_ckpt

        report = bench_ckpt.bench_ckpt(args.preset, args.batch_size, args.seq_len, args.steps,
                                       every=args.save_every, vocab_size=args.vocab_size or 257,
                                       rounds=args.rounds, save_preset=args.save_preset)
        text = bench_ckpt.format_report(report)
    elif args.kind == "eval":
        from gpt2_jax import bench_eval

        report = bench_eval.bench_eval(args.preset, args.seq_len, args.stride, args.eval_tokens, args.eval_batch,
                                       rounds=args.rounds, dtype=args.dtype, peer=peers[0][0] if peers else "none",
                                       vocab_size=args.vocab_size or 50257)
        text = bench_eval.format_eval_report(report)
    elif args.kind == "decode":
        from gpt2_jax import bench

        report = bench.bench_decode(args.preset, args.batch_size, args.prompt_len, args.new_tokens,
                                    rounds=args.rounds, dtype=args.dtype, peer=peers[0][0] if peers else "none",
                                    vocab_size=args.vocab_size or 50257)
        text = bench.format_decode_report(report)
    else:
        from gpt2_jax import bench_train

        report = bench_train.bench_train(train_bench_spec(args))
        report["xla_flags"] = os.environ.get("XLA_FLAGS", "")
        report["argv"] = sys.argv[1:]
        text = bench_train.format_train_report(report)
    print(text, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _evaluate_runs(args, paths: list[str]) -> list[tuple[object, dict]]:
    """(model config, {dataset: metrics}) per model path, datasets parsed before any model loads;
    one model's weights are in memory at a time."""
    from gpt2_jax import convert, eval_sets

    sets = [eval_sets.parse(spec) for spec in args.data]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise _UsageError(f"datasets {names} repeat a name; label them NAME=SOURCE")
    out = []
    for path in paths:
        w = convert.load_weights(path, step=args.step)
        results = eval_sets.evaluate_weights(w, sets, os.path.expanduser(args.data_dir), context=args.context,
                                             stride=args.stride, batch_size=args.batch_size, progress=not args.quiet)
        out.append((w.config, results))
        del w  # before the next model loads
    return out


def _cmd_eval(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("eval takes no --config overrides")
    [(_, results)] = _evaluate_runs(args, [args.run])
    for name, r in results.items():
        if r["task"] == "lambada":
            print(f"{name}: acc {100 * r['acc']:.2f}% ppl {r['ppl']:.3f} (whole word); acc {100 * r['acc_token']:.2f}% "
                  f"ppl {r['ppl_token']:.3f} (last token); {r['passages']} passages", flush=True)
        else:
            print(f"{name}: token ppl {r['ppl']:.4f}, word ppl {r['word_ppl']:.4f}, bits/byte {r['bpb']:.4f}, "
                  f"bits/char {r['bpc']:.4f} ({r['tokens']:,.0f} tokens, {r['words']:,} words; {r['protocol']})",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _cmd_table(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("table takes no --config overrides")
    if args.names and len(args.names) != len(args.runs):
        raise _UsageError(f"--names has {len(args.names)} labels for {len(args.runs)} --runs; give one per run")
    from gpt2_jax import tables

    rows = []
    for i, (c, results) in enumerate(_evaluate_runs(args, args.runs)):
        label = args.names[i] if args.names else os.path.basename(os.path.normpath(args.runs[i]))
        rows.append({"model": label, "size": tables.paper_size(c.n_layer, c.n_embd, c.vocab_size), "results": results})
    table = tables.build(rows)
    paths = tables.write(table, args.out, args.stem, args.title)
    print(tables.to_markdown(table), flush=True)
    print("wrote " + ", ".join(paths.values()), file=sys.stderr, flush=True)
    return 0


def _cmd_convert(args, overrides: list[str]) -> int:
    if overrides:
        raise _UsageError("convert takes no --config overrides")
    from gpt2_jax import convert

    w = convert.load_weights(args.source, step=args.step)
    if args.to == "run":
        convert.save_as_run(args.out, w, args.source)
        print(f"{args.source} ({w.kind}) -> run directory {args.out} (step 0)", flush=True)
        return 0
    written = convert.save_hf_directory(args.out, w.config, w.params, w.tokenizer)
    print(f"{args.source} ({w.kind}) -> {args.out}: {', '.join(written)}", flush=True)
    if "vocab.json" not in written:
        print(f"note: the {w.tokenizer.name} tokenizer has no Hugging Face vocab.json/merges.txt; "
              "no tokenizer files were written", file=sys.stderr, flush=True)
    return 0
def train_bench_spec(args):
    """The bench_train.TrainBench that parsed `gpt2-jax bench train` arguments ask for."""
    from gpt2_jax import bench_train, profiling

    peers = [tuple(p) for p in args.peer or []]
    for p in peers:
        if len(p) > 2:
            raise _UsageError(f"--peer {' '.join(p)}: one name and at most one path")
    return bench_train.TrainBench(
        preset=args.preset, batch_size=args.batch_size, seq_len=args.seq_len, vocab_size=args.vocab_size or 257,
        vocab_multiple=args.vocab_multiple, dtype=args.dtype, param_dtype=args.param_dtype,
        attention=args.attention, remat=args.remat, loss_chunk=args.loss_chunk, mesh=_mesh_sizes(args.mesh),
        rules=args.rules, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        peers=tuple((p[0], p[1] if len(p) > 1 else None) for p in peers if p[0] != "none"),
        peer_compile=args.peer_compile, profile_steps=profiling.parse_steps(args.profile_steps or ""),
        profile_dir=args.profile_dir)


def _mesh_sizes(text: str) -> tuple[int, int, int]:
    sizes = text.split(",")
    if len(sizes) != 3 or not all(s.strip().lstrip("-").isdigit() for s in sizes):
        raise _UsageError(f"--mesh {text!r} needs three sizes DATA,FSDP,TENSOR, e.g. 1,8,1 (-1: the rest)")
    return tuple(int(s) for s in sizes)


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
    b = sub.add_parser("bench", help="throughput of train steps, decoding, eval, data, checkpoint saves; peers beside")
    b.add_argument("kind", nargs="?", choices=["train", "decode", "eval", "data", "ckpt", "sweep"], default="train",
                   help="sweep: every GPU figure of BENCHMARKS.md, one subprocess per row (see --plan)")
    b.add_argument("--preset", default="tiny")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--seq-len", type=int, default=256, help="train: tokens per row")
    b.add_argument("--prompt-len", type=int, default=128, help="decode: prompt tokens per row")
    b.add_argument("--new-tokens", type=int, default=256, help="decode: tokens generated per row")
    b.add_argument("--vocab-size", type=int, help="default: 257 (train), 50257 (decode)")
    b.add_argument("--vocab-multiple", type=int, default=1, help="train: pad the vocab up to a multiple (128: 50304)")
    b.add_argument("--steps", type=int, default=10, help="train: timed steps")
    b.add_argument("--warmup", type=int, default=2, help="train: untimed steps")
    b.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
    b.add_argument("--param-dtype", default="float32", help="train: params and AdamW moments (bfloat16: all-bf16)")
    b.add_argument("--attention", default="auto", help="train: auto | xla | cudnn | blocked")
    b.add_argument("--remat", default="none", help="train: none | dots (dots saveable) | full, per block")
    b.add_argument("--loss-chunk", type=int, default=0, help="train: cross-entropy this many positions at a time")
    b.add_argument("--mesh", default="-1,1,1", help="train: DATA,FSDP,TENSOR devices (-1: the rest)")
    b.add_argument("--rules", default="fsdp+tp", help="train: sharding rules (dp | fsdp | tp | fsdp+tp)")
    b.add_argument("--rounds", type=int, default=2, help="interleaved rounds with the peer")
    b.add_argument("--peer", nargs="+", action="append", metavar="NAME [PATH]",
                   help="repeatable: hf-torch (transformers GPT-2) | nanogpt PATH (a nanoGPT checkout) | none")
    b.add_argument("--peer-compile", default="auto", help="train: torch.compile the peers: auto | on | off")
    b.add_argument("--profile-steps", help="train: A:B traces extra steps A..B-1 with jax.profiler")
    b.add_argument("--profile-dir", default="bench_profile", help="train: where the trace goes")
    b.add_argument("--plan", default="gpu", help="sweep: gpu (gpt2 T=1024 and larger) | cpu-switches | smoke")
    b.add_argument("--out", default="bench_sweep", help="sweep: folder for sweep.json and sweep.md (resumes)")
    b.add_argument("--nanogpt", help="sweep: a nanoGPT checkout for the side-by-side row")
    b.add_argument("--json", help="also write the report here")
    b.add_argument("--stride", type=int, default=512, help="eval: window advance (--seq-len is the window)")
    b.add_argument("--eval-tokens", type=int, default=4096, help="eval: length of the scored token sequence")
    b.add_argument("--eval-batch", type=int, default=1, help="eval: windows per forward pass (ours)")
    bd = b.add_argument_group("data: prepare MB/s per core and loader batches/s")
    bd.add_argument("--source", default="shakespeare/plays", help="data: the source to tokenize")
    bd.add_argument("--split", default="train", help="data: its split")
    bd.add_argument("--tokenizers", default="byte,gpt2,sentencepiece", help="data: comma-separated tokenizer names (sentencepiece: train 8000 BPE pieces first)")
    bd.add_argument("--data-dir", default="~/tensorflow_datasets", help="data: the TFDS data_dir")
    bd.add_argument("--workers", type=int, default=0, help="data: prepare workers besides 1 (0: all cores)")
    bd.add_argument("--loader-batch", type=int, default=8, help="data: loader batch rows")
    bd.add_argument("--loader-seq-len", type=int, default=1024, help="data: loader tokens per row")
    b.add_argument("--save-every", type=int, default=10, help="ckpt: steps between saves in the timed run")
    b.add_argument("--save-preset", default="gpt2", help="ckpt: preset whose full state times one save")
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
    for name, text in (("eval", "perplexity of one model (run, HF or OpenAI directory) on datasets"),
                       ("table", "models x datasets table (markdown, CSV, JSON, PNG) beside the GPT-2 paper's Table 3")):
        e = sub.add_parser(name, help=text)
        if name == "eval":
            e.add_argument("--run", required=True, help="run directory, HF GPT-2 directory or OpenAI GPT-2 directory")
            e.add_argument("--json", help="also write the metrics here")
        else:
            e.add_argument("--runs", nargs="+", required=True, help="run / HF / OpenAI directories, one row each")
            e.add_argument("--names", nargs="+", help="row labels (default: directory names)")
            e.add_argument("--out", default="tables", help="folder for <stem>.md/.csv/.json/.png")
            e.add_argument("--stem", default="table")
            e.add_argument("--title", default="")
        e.add_argument("--data", nargs="+", required=True,
                       help="[NAME=]SOURCE[@SPLIT], e.g. plays=shakespeare/plays@test, wikitext103=text:wiki.test.tokens")
        e.add_argument("--data-dir", default="~/tensorflow_datasets")
        e.add_argument("--step", default="latest", help="run directories: latest | best | a step number")
        e.add_argument("--context", type=int, help="window length (default: the model's positions)")
        e.add_argument("--stride", type=int, help="window advance (default: the context, i.e. no overlap)")
        e.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
        e.add_argument("--quiet", action="store_true", help="no progress bars")
    cv = sub.add_parser("convert", help="write a run, HF or OpenAI GPT-2 directory as a HF directory or a run")
    cv.add_argument("source", help="run directory, HF directory (config.json) or OpenAI directory (hparams.json)")
    cv.add_argument("--to", choices=["hf", "run"], default="hf",
                    help="hf: safetensors + config.json + tokenizer files; run: a step-0 checkpoint for load/sample")
    cv.add_argument("--out", required=True, help="the directory to write")
    cv.add_argument("--step", default="latest", help="run directories: latest | best | a step number")
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
                "eval": _cmd_eval, "table": _cmd_table, "convert": _cmd_convert}
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
