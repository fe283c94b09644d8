"""`gpt2-jax prepare` (tokenize splits into token shards) and `gpt2-jax tokenizer train`."""

from __future__ import annotations

import os

from gpt2_jax.cli import common


def add_parsers(sub) -> None:
    """Adds the `prepare` and `tokenizer` subcommands to the subparsers `sub`."""
    pr = sub.add_parser("prepare", help="tokenize a source's splits once into token shards (reused by train)")
    pr.add_argument("--config", help="prepare the train/eval/test splits this experiment names")
    pr.add_argument("--source", help="SOURCE, SOURCE@SPLIT, or SOURCE:SPLIT for tfds:/shakespeare sources")
    pr.add_argument("--splits", default="train,validation,test", help="comma-separated splits of --source")
    pr.add_argument("--tokenizer", default="byte", help="byte | gpt2 | gpt2:/path | sentencepiece:/path.model")
    pr.add_argument("--data-dir", default="~/tensorflow_datasets")
    pr.add_argument("--text-field", default="text", help="the text feature of a tfds: source")
    pr.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: one per CPU core)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(handler=prepare)
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
    tk.set_defaults(handler=train_tokenizer)


def prepare(args, overrides: list[str], env) -> int:
    """`gpt2-jax prepare`."""
    from gpt2_jax.data import sources, tokenizers, tokens
    from gpt2_jax.train import progress

    if args.config:
        from gpt2_jax import config as config_lib

        from gpt2_jax.jobs import pretrain

        cfg = config_lib.load_config(args.config, overrides)
        d = cfg.data
        source, splits = d.source, list(pretrain.role_splits(cfg).values())
        tokenizer, data_dir, text_field = d.tokenizer, d.data_dir, d.text_field
    elif overrides:
        raise common.UsageError("--config.* overrides need --config")
    elif not args.source:
        raise common.UsageError("give --config EXPERIMENT.py, or --source SOURCE[@SPLIT]")
    else:
        source, pinned = sources.split_source(args.source)
        splits = [pinned] if pinned else args.splits.split(",")
        tokenizer, data_dir, text_field = args.tokenizer, args.data_dir, args.text_field
    tok = tokenizers.make_tokenizer(tokenizer)
    workers = args.workers or tokens.cpu_count()
    for split in splits:
        path = tokens.prepare_split(source, split, tok, os.path.expanduser(data_dir),
                                    show_progress=progress.bars_wanted(not args.quiet), text_field=text_field,
                                    workers=workers)
        h = tokens.load_split(path, tok).header
        print(f"{source}@{split}: {h['num_tokens']:,} tokens ({h['dtype']}, {len(h['shards'])} shards), "
              f"{h['num_documents']:,} documents, {h['num_bytes']:,} bytes -> {path}", flush=True)
    return 0


def train_tokenizer(args, overrides: list[str], env) -> int:
    """`gpt2-jax tokenizer train`."""
    common.no_overrides("tokenizer train", overrides)
    from gpt2_jax.data import spm

    tok = spm.train_sentencepiece(args.source, args.out, args.vocab_size, args.model_type, split=args.split,
                                  data_dir=args.data_dir, seed=args.seed, num_threads=args.threads,
                                  character_coverage=args.character_coverage,
                                  max_sentences=args.max_sentences, overwrite=args.force,
                                  echo=lambda line: print(line, flush=True))
    print(f"use it with --config.data.tokenizer=sentencepiece:{tok.path}", flush=True)
    return 0
