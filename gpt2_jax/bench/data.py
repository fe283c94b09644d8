"""`gpt2-jax bench data`: how fast splits are prepared, and how fast the loader delivers batches.

Prepare throughput is text MB (10^6 bytes of UTF-8) per second per worker process, for each
tokenizer, on a real split tokenized from scratch into a temporary folder. Loader throughput is
training batches (B x T+1 int32 windows from the memory-mapped shards) per second on one thread,
and through the prefetcher, as the training loop consumes them.
"""

from __future__ import annotations

import pathlib
import resource
import tempfile
import time
from typing import Any

from gpt2_jax.data import loader, sources, spm, tokenizers, tokens

# One H100 training the `gpt2` preset at the goal rate; the loader must deliver 20x this.
GPT2_H100_TOKENS_PER_S = 575_000


def bench_prepare(source: str, split: str, tokenizer_names: list[str], data_dir: str, workers: int = 1,
                  shard_bytes: int = 1 << 20) -> list[dict[str, Any]]:
    """Tokenizes `split` of `source` once per tokenizer (fresh output each time); returns one row each.

    `sentencepiece` without a path trains an 8000-piece BPE model on the split first. Per-core
    rates divide by CPU seconds (this process plus its workers), so other load counts less.
    """
    docs = sources.open_documents(source, split, data_dir)  # prepares local sources before timing
    texts = list(docs)
    mb = sum(len(d.encode("utf-8")) for d in texts) / 1e6
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for name in tokenizer_names:
            if name == "sentencepiece":
                name = f"sentencepiece:{spm.train_sentencepiece(texts, f'{tmp}/bpe8000.model', 8000).path}"
            tok = tokenizers.make_tokenizer(name)
            encode = tokenizers.tokenizer_throughput(tok, texts, rounds=2)
            out = pathlib.Path(tmp) / f"prepare-{len(rows)}"
            out.mkdir()
            _link_prepared_source(pathlib.Path(data_dir).expanduser(), out)
            cpu0, wall0 = _cpu_seconds(), time.perf_counter()
            path = tokens.prepare_split(source, split, tok, out, show_progress=False, workers=workers,
                                        shard_bytes=shard_bytes)
            wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
            rows.append({"tokenizer": tok.name, "workers": workers, "mb": mb,
                         "tokens": tokens.load_split(path).num_tokens, "seconds": wall, "cpu_seconds": cpu,
                         "mb_per_s": mb / wall, "mb_per_cpu_s": mb / cpu,
                         "encode_mb_per_cpu_s": encode["mb_per_s_per_core"]})
    return rows


def _cpu_seconds() -> float:
    # Workers of a finished pool have exited, so RUSAGE_CHILDREN holds their CPU time.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _link_prepared_source(data_dir: pathlib.Path, out: pathlib.Path) -> None:
    # The source's TFDS folders are shared by symlink, so only tokenizing is timed.
    for child in data_dir.iterdir():
        if child.name != "tokens":
            (out / child.name).symlink_to(child.resolve())


def bench_loader(split: tokens.TokenSplit, batch_size: int = 8, seq_len: int = 1024, seconds: float = 2.0,
                 prefetch: int = 2) -> dict[str, Any]:
    """Batches/s and tokens/s of `loader.train_batch` on one thread, and through a `Prefetcher`."""
    def rate(fetch) -> float:
        fetch(0)  # the first call touches the pages and starts the thread
        step, t0 = 1, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fetch(step)
            step += 1
        return (step - 1) / (time.perf_counter() - t0)

    make = lambda step: loader.train_batch(split.tokens, 0, step, batch_size, seq_len)  # noqa: E731
    direct = rate(make)
    with loader.Prefetcher(make, 0, 10**9, depth=prefetch) as prefetcher:
        through = rate(prefetcher.get)
    tokens_per_batch = batch_size * seq_len
    return {"batch": batch_size, "seq_len": seq_len, "split_tokens": split.num_tokens,
            "batches_per_s": direct, "tokens_per_s": direct * tokens_per_batch,
            "prefetched_batches_per_s": through, "prefetched_tokens_per_s": through * tokens_per_batch,
            "target_tokens_per_s": 20 * GPT2_H100_TOKENS_PER_S}


def format_data_report(prepare_rows: list[dict], load: dict) -> str:
    """A plain-text table of the prepare rows and the loader figures."""
    lines = [f"{'tokenizer':<14} {'workers':>7} {'MB':>6} {'tokens':>10} {'wall s':>7} {'MB/s':>6} "
             f"{'prepare MB/cpu-s':>16} {'encode MB/cpu-s':>15}"]
    for r in prepare_rows:
        lines.append(f"{r['tokenizer'][:14]:<14} {r['workers']:>7} {r['mb']:>6.2f} {r['tokens']:>10,} "
                     f"{r['seconds']:>7.2f} {r['mb_per_s']:>6.2f} {r['mb_per_cpu_s']:>16.2f} "
                     f"{r['encode_mb_per_cpu_s']:>15.2f}")
    ratio = load["tokens_per_s"] / load["target_tokens_per_s"]
    lines += [
        f"loader {load['batch']}x{load['seq_len']} (+1) from {load['split_tokens']:,} tokens: "
        f"{load['batches_per_s']:,.0f} batches/s = {load['tokens_per_s'] / 1e6:,.1f} M tokens/s on one thread; "
        f"through the prefetcher {load['prefetched_batches_per_s']:,.0f} batches/s",
        f"target: 20 x {GPT2_H100_TOKENS_PER_S:,} tokens/s (gpt2 on one H100) = "
        f"{load['target_tokens_per_s'] / 1e6:.1f} M tokens/s; measured {ratio:.1f}x the target",
    ]
    return "\n".join(lines)


def load_for_bench(source: str, split: str, tokenizer_name: str, data_dir: str) -> tokens.TokenSplit:
    """The prepared split the loader bench reads (prepared now if needed)."""
    tok = tokenizers.make_tokenizer(tokenizer_name)
    return tokens.load_split(tokens.prepare_split(source, split, tok, data_dir, show_progress=True), tok)

