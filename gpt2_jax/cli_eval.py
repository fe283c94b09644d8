"""`gpt2-jax eval`, `table` and `convert`: perplexity of models on datasets, tables, weight conversion."""

from __future__ import annotations

import json
import os
import sys


def _evaluate_runs(args, paths: list[str]) -> list[tuple[object, dict]]:
    """(model config, {dataset: metrics}) per model path, datasets parsed before any model loads;
    one model's weights are in memory at a time."""
    from gpt2_jax import convert, eval_sets

    sets = [eval_sets.parse(spec) for spec in args.data]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets {names} repeat a name; label them NAME=SOURCE")
    out = []
    for path in paths:
        w = convert.load_weights(path, step=args.step)
        results = eval_sets.evaluate_weights(w, sets, os.path.expanduser(args.data_dir), context=args.context,
                                             stride=args.stride, batch_size=args.batch_size, progress=not args.quiet)
        out.append((w.config, results))
        del w  # before the next model loads
    return out


def cmd_eval(args, overrides: list[str]) -> int:
    """`gpt2-jax eval`."""
    if overrides:
        raise ValueError("eval takes no --config overrides")
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


def cmd_table(args, overrides: list[str]) -> int:
    """`gpt2-jax table`."""
    if overrides:
        raise ValueError("table takes no --config overrides")
    if args.names and len(args.names) != len(args.runs):
        raise ValueError(f"--names has {len(args.names)} labels for {len(args.runs)} --runs; give one per run")
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


def cmd_convert(args, overrides: list[str]) -> int:
    """`gpt2-jax convert`."""
    if overrides:
        raise ValueError("convert takes no --config overrides")
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


def add_parsers(sub) -> None:
    """Adds the `eval`, `table` and `convert` subcommands to the subparsers `sub`."""
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
