"""`gpt2-jax eval` and `gpt2-jax table`: perplexity of models on datasets, and tables of them."""

from __future__ import annotations

import os
import sys

from gpt2_jax.cli import common


def _evaluate_runs(args, paths: list[str]) -> list[tuple[object, dict]]:
    """(model config, {dataset: metrics}) per model path, datasets parsed before any model loads;
    one model's weights are in memory at a time."""
    from gpt2_jax import api
    from gpt2_jax.evaluate import datasets as eval_sets
    from gpt2_jax.train import progress

    sets = [eval_sets.parse(spec) for spec in args.data]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets {names} repeat a name; label them NAME=SOURCE")
    out = []
    for path in paths:
        w = api.load_weights(path, step=args.step)
        results = eval_sets.evaluate_weights(w, sets, os.path.expanduser(args.data_dir), context=args.context,
                                             stride=args.stride, batch_size=args.batch_size,
                                             progress=progress.bars_wanted(not args.quiet))
        if args.generate:
            _add_continuation_scores(args, w, sets, results)
        out.append((w.config, results))
        del w  # before the next model loads
    return out


def _add_continuation_scores(args, weights, sets, results: dict) -> None:
    """BLEU/chrF of --generate N greedy continuations per language-modelling set, into its results."""
    from gpt2_jax.evaluate import datasets as eval_sets
    from gpt2_jax.jobs import continuations

    for s in sets:
        if s.task != "lm":
            continue  # LAMBADA already scores the greedy last word
        texts = eval_sets.read_texts(s, os.path.expanduser(args.data_dir))
        scores = continuations.score_continuations(weights, texts, args.generate, prompt_tokens=args.generate_prompt,
                                                   new_tokens=args.generate_tokens, detokenizer=s.detokenizer,
                                                   batch_size=args.batch_size)
        res = results[s.name]
        res["protocol"] += "; " + scores.pop("generate_protocol")
        res.update(scores)


def run_eval(args, overrides: list[str], env) -> int:
    """`gpt2-jax eval`."""
    common.no_overrides("eval", overrides)
    [(_, results)] = _evaluate_runs(args, [args.run])
    for name, r in results.items():
        if r["task"] == "lambada":
            print(f"{name}: acc {100 * r['acc']:.2f}% ppl {r['ppl']:.3f} (whole word); acc {100 * r['acc_token']:.2f}% "
                  f"ppl {r['ppl_token']:.3f} (last token); {r['passages']} passages", flush=True)
        else:
            print(f"{name}: token ppl {r['ppl']:.4f}, word ppl {r['word_ppl']:.4f}, bits/byte {r['bpb']:.4f}, "
                  f"bits/char {r['bpc']:.4f}, top-1 {100 * r['top1']:.2f}%, top-5 {100 * r['top5']:.2f}% "
                  f"({r['tokens']:,.0f} tokens, {r['words']:,} words; {r['protocol']})", flush=True)
            if "bleu" in r:
                print(f"{name}: BLEU {r['bleu']:.2f} ({r['bleu_signature']}), chrF {r['chrf']:.2f} "
                      f"({r['chrf_signature']}) over {r['generated']} greedy continuations", flush=True)
    common.write_json(args.json, results)
    return 0


def run_table(args, overrides: list[str], env) -> int:
    """`gpt2-jax table`."""
    common.no_overrides("table", overrides)
    if args.names and len(args.names) != len(args.runs):
        raise ValueError(f"--names has {len(args.names)} labels for {len(args.runs)} --runs; give one per run")
    from gpt2_jax.evaluate import tables

    rows = []
    for i, (c, results) in enumerate(_evaluate_runs(args, args.runs)):
        label = args.names[i] if args.names else os.path.basename(os.path.normpath(args.runs[i]))
        rows.append({"model": label, "size": tables.paper_size(c.n_layer, c.n_embd, c.vocab_size), "results": results})
    table = tables.build(rows)
    paths = tables.write(table, args.out, args.stem, args.title)
    print(tables.to_markdown(table), flush=True)
    print("wrote " + ", ".join(paths.values()), file=sys.stderr, flush=True)
    return 0


def add_parsers(sub) -> None:
    """Adds the `eval` and `table` subcommands to the subparsers `sub`."""
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
        e.add_argument("--generate", type=int, default=0, metavar="N",
                       help="also BLEU and chrF (sacrebleu) of N greedy continuations of held-out passages")
        e.add_argument("--generate-prompt", type=int, default=64, help="prompt tokens of each --generate passage")
        e.add_argument("--generate-tokens", type=int, default=32, help="tokens generated (and compared) per passage")
        e.set_defaults(handler=run_eval if name == "eval" else run_table)
