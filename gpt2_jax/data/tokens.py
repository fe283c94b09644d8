"""Token splits prepared once on disk: flat token shards plus a JSON header.

`prepare_split` tokenizes every document of a split into shards `tokens-00000.bin`, ... (uint16,
or uint32 for vocabularies above 65536 ids) with the tokenizer's EOS id *between* documents (none
before the first or after the last), plus `header.json` (source, tokenizer spec and hash, counts,
shard sizes). Documents are cut into chunks of about `shard_bytes` of text, tokenized by a pool of
worker processes, one shard per chunk (more when a chunk passes `max_shard_tokens`), so the files
do not depend on the number of workers. `load_split` memory-maps the shards as one `ShardedTokens`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
import tqdm

from gpt2_jax.data import sources, tokenizers
from gpt2_jax.data.tokenizers import Tokenizer

FORMAT_VERSION = 2
HEADER = "header.json"
DEFAULT_SHARD_BYTES = 64 << 20  # text per chunk of work (and per shard)
DEFAULT_MAX_SHARD_TOKENS = 1 << 31  # a shard never holds more; a longer document is an error


class ShardedTokens:
    """Read-only token shards seen as one 1-D array: `len`, integer index and slices (step 1)."""

    def __init__(self, shards: list[np.ndarray]):
        """`shards`: 1-D arrays (memmaps) of one dtype, in order."""
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.dtype = shards[0].dtype if shards else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        """(number of tokens,)."""
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= i < len(self):
                raise IndexError(f"token {key} out of range for {len(self)} tokens")
            shard = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.shards[shard][i - self.starts[shard]]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ShardedTokens takes an int or a slice with step 1")
        lo, hi, _ = key.indices(len(self))
        if hi <= lo:
            return np.empty(0, self.dtype)
        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        last = int(np.searchsorted(self.starts, hi - 1, side="right")) - 1
        if first == last:  # the common case: a view into one memmap, no copy
            return self.shards[first][lo - self.starts[first]:hi - self.starts[first]]
        parts = [self.shards[s][max(lo - self.starts[s], 0):min(hi, self.starts[s + 1]) - self.starts[s]]
                 for s in range(first, last + 1)]
        return np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        out = self[:] if len(self.shards) == 1 else np.concatenate(self.shards) if self.shards else self[0:0]
        return np.asarray(out, dtype=dtype)

    def __iter__(self):
        for shard in self.shards:
            yield from shard


@dataclasses.dataclass(frozen=True)
class TokenSplit:
    """A prepared split: `tokens` (read-only `ShardedTokens`), `header` (parsed header.json), its folder."""

    tokens: ShardedTokens
    header: dict
    path: pathlib.Path

    @property
    def num_tokens(self) -> int:
        """Returns the number of tokens, EOS separators included."""
        return len(self.tokens)


def cpu_count() -> int:
    """Returns the CPU cores this process may run on (the default number of prepare workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def token_dtype(vocab_size: int) -> np.dtype:
    """Returns uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_identity(spec: dict) -> dict:
    """Returns `spec` without file paths: what decides the ids, wherever the files live."""
    strip = {k: v for k, v in spec.items() if k not in ("files", "path")}
    if "files" in spec:
        strip["files"] = [{k: v for k, v in f.items() if k != "path"} for f in spec["files"]]
    return strip


def tokenizer_hash(tokenizer: Tokenizer | dict) -> str:
    """Returns a short hash of the tokenizer's identity (its spec without file paths)."""
    spec = tokenizer if isinstance(tokenizer, dict) else tokenizer.spec()
    return _short_hash(tokenizer_identity(spec))


def split_dir(source: str, split: str, tokenizer: Tokenizer, data_dir: str | os.PathLike) -> pathlib.Path:
    """Returns `<data_dir>/tokens/<source>/<split>-<tokenizer name>-<hash of its spec>`."""
    source = sources.canonical_source(source)
    safe = _safe_name(source)
    if safe != source.replace("/", "_"):  # a glob lost characters: keep names apart by a hash
        safe = f"{safe[:80]}-{_short_hash(source)}"
    return (pathlib.Path(data_dir).expanduser() / "tokens" / safe /
            f"{_safe_name(split)}-{tokenizer.name}-{tokenizer_hash(tokenizer)}")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _matches(header: dict, expected: dict) -> bool:
    keys = ("version", "source", "split", "text_field", "source_fingerprint", "eos_id", "eos_placement",
            "dtype", "shard_bytes", "max_shard_tokens")
    return (all(header.get(k) == expected[k] for k in keys)
            and tokenizer_identity(header.get("tokenizer", {})) == tokenizer_identity(expected["tokenizer"]))


def prepare_split(source: str, split: str, tokenizer: Tokenizer, data_dir: str | os.PathLike,
                  show_progress: bool = True, text_field: str = "text", workers: int = 1,
                  shard_bytes: int = DEFAULT_SHARD_BYTES,
                  max_shard_tokens: int = DEFAULT_MAX_SHARD_TOKENS) -> pathlib.Path:
    """Tokenizes `split` of `source` once into token shards + `header.json`; returns their folder.

    A folder whose header matches (source, split, tokenizer, source fingerprint, format) is
    reused as is; one whose source changed (e.g. edited `text:` files) is rebuilt. `workers` > 1
    tokenizes chunks in that many processes (the output is the same). Files are written into a
    temporary sibling folder renamed into place only when complete, so an interrupted run leaves
    nothing a later run would read.
    """
    docs = sources.open_documents(source, split, data_dir, text_field)
    final = split_dir(source, split, tokenizer, data_dir)
    expected = {
        "version": FORMAT_VERSION, "source": sources.canonical_source(source), "split": split,
        "text_field": docs.text_field, "source_fingerprint": docs.fingerprint, "tokenizer": tokenizer.spec(),
        "tokenizer_hash": tokenizer_hash(tokenizer), "eos_id": tokenizer.eos_id,
        "eos_placement": "between documents", "dtype": token_dtype(tokenizer.vocab_size).name,
        "shard_bytes": shard_bytes, "max_shard_tokens": max_shard_tokens,
    }
    stale = (final / HEADER).exists()
    if stale:
        try:
            if _matches(load_split(final).header, expected):
                return final
        except ValueError:
            pass  # a damaged copy is rebuilt like a stale one
        print(f"Re-preparing {final}: its source files or format changed", flush=True)
    if len(docs) == 0:
        raise ValueError(f"split {split!r} of {source!r} has no documents; pick another split or source")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        counts = _write_shards(docs, expected, tokenizer, tmp, workers, show_progress,
                               source_args=(source, split, os.fspath(data_dir), text_field))
        (tmp / HEADER).write_text(json.dumps({**expected, **counts}, indent=2) + "\n", encoding="utf-8")
        if stale:  # move the old copy aside first: rename cannot replace a non-empty folder
            os.rename(final, tmp.with_name(tmp.name + "-old"))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / HEADER).exists():  # another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(tmp.name + "-old"), ignore_errors=True)
    return final


def plan_chunks(docs: sources.Documents, shard_bytes: int, probe: int = 64) -> list[tuple[int, int]]:
    """Cuts documents [0, n) into contiguous index ranges of about `shard_bytes` of text each.

    The size per document is estimated from the first `probe` documents, so planning reads
    little and depends only on the data.
    """
    n = len(docs)
    sample = [len(docs[i].encode("utf-8")) for i in range(min(n, probe))]
    per_doc = max(1, sum(sample) // max(len(sample), 1))
    step = max(1, shard_bytes // per_doc)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def _write_shards(docs, expected, tokenizer, out_dir, workers, show_progress, source_args) -> dict:
    chunks = plan_chunks(docs, expected["shard_bytes"])
    dtype, max_tokens = np.dtype(expected["dtype"]), expected["max_shard_tokens"]
    jobs = [dict(lo=lo, hi=hi, chunk=i, out_dir=os.fspath(out_dir), dtype=dtype.name, max_tokens=max_tokens,
                 eos_id=tokenizer.eos_id) for i, (lo, hi) in enumerate(chunks)]
    bar = tqdm.tqdm(total=len(docs), desc=f"tokenizing {expected['source']} {expected['split']}", unit="doc",
                    disable=not show_progress, dynamic_ncols=True)
    results = []
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                results.append(tokenize_chunk(docs, tokenizer, **job))
                bar.update(job["hi"] - job["lo"])
        else:
            results = _run_pool(jobs, workers, source_args, tokenizer.spec(), bar)
    finally:
        bar.close()
    counts = {"num_tokens": 0, "num_documents": 0, "num_bytes": 0, "num_chars": 0, "num_words": 0}
    shards = []
    for result in sorted(results, key=lambda r: r["chunk"]):
        shards += result.pop("shards")
        for key in counts:
            counts[key] += result[key]
    if counts["num_tokens"] == 0:
        raise ValueError(f"split {expected['split']!r} of {expected['source']!r} has no text to tokenize; "
                         "pick another split")
    return {**counts, "shards": shards}


def _run_pool(jobs, workers, source_args, spec, bar) -> list[dict]:
    # spawn, not fork: the parent may hold JAX's threads, which fork does not copy safely.
    ctx = multiprocessing.get_context("spawn")
    results = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_tokenize_chunk_in_worker, source_args, json.dumps(spec), job): job for job in jobs}
        try:
            for future in concurrent.futures.as_completed(futures):
                results.append(future.result())
                job = futures[future]
                bar.update(job["hi"] - job["lo"])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


@functools.lru_cache(maxsize=4)
def _worker_inputs(source_args: tuple, spec_json: str):
    # One open source and tokenizer per worker process, reused across its chunks.
    source, split, data_dir, text_field = source_args
    return sources.open_documents(source, split, data_dir, text_field), tokenizers.from_spec(json.loads(spec_json))


def _tokenize_chunk_in_worker(source_args: tuple, spec_json: str, job: dict) -> dict:
    docs, tokenizer = _worker_inputs(source_args, spec_json)
    return tokenize_chunk(docs, tokenizer, **job)


def tokenize_chunk(docs, tokenizer: Tokenizer, lo: int, hi: int, chunk: int, out_dir: str, dtype: str,
                   max_tokens: int, eos_id: int) -> dict:
    """Tokenizes documents [lo, hi) into `out_dir/tokens-<chunk>-<part>.bin` files; returns the counts.

    Every document but the very first (index 0) is preceded by `eos_id`. A part is closed before
    it would pass `max_tokens`; a single document longer than that is a one-line error.
    """
    counts = {"chunk": chunk, "num_tokens": 0, "num_documents": 0, "num_bytes": 0, "num_chars": 0, "num_words": 0}
    shards, part, pending, pending_len = [], 0, [], 0

    def flush():
        nonlocal part, pending, pending_len
        if pending_len:
            name = f"tokens-{chunk:05d}-{part:03d}.bin"
            np.concatenate(pending).tofile(pathlib.Path(out_dir) / name)
            shards.append({"file": name, "num_tokens": pending_len})
            part, pending, pending_len = part + 1, [], 0

    for index in range(lo, hi):
        text = docs[index]
        ids = np.asarray(([eos_id] if index else []) + tokenizer.encode(text), dtype=dtype)
        if len(ids) > max_tokens:
            raise ValueError(f"document {index} of the split ({_describe(docs, index)}) has {len(ids):,} tokens, "
                             f"more than a shard holds ({max_tokens:,}); split it into smaller documents")
        if pending_len + len(ids) > max_tokens:
            flush()
        pending.append(ids)
        pending_len += len(ids)
        counts["num_tokens"] += len(ids)
        counts["num_documents"] += 1
        counts["num_bytes"] += len(text.encode("utf-8"))
        counts["num_chars"] += len(text)
        counts["num_words"] += len(text.split())
    flush()
    return {**counts, "shards": shards}


def _describe(docs, index: int) -> str:
    record = docs.records[index] if hasattr(docs, "records") else {}
    path = record.get("path") if isinstance(record, dict) else None
    return f"file {path.decode() if isinstance(path, bytes) else path}" if path else f"{len(docs[index]):,} characters"


def load_split(path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> TokenSplit:
    """Returns the prepared split in folder `path` (shards memory-mapped read-only).

    With `tokenizer`, the header's tokenizer must be that one (same hash), else a one-line error.
    """
    path = pathlib.Path(path)
    if not (path / HEADER).is_file():
        raise FileNotFoundError(f"{path / HEADER} not found; run `gpt2-jax prepare` (or prepare_split) first")
    try:
        header = json.loads((path / HEADER).read_text(encoding="utf-8"))
        version = header.get("version")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path / HEADER} is corrupt ({e!r}); delete {path} and prepare again") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}, this code reads {FORMAT_VERSION}; "
                         "delete it and prepare again")
    try:
        dtype, count = np.dtype(header["dtype"]), int(header["num_tokens"])
        shard_list = [(str(s["file"]), int(s["num_tokens"])) for s in header["shards"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path / HEADER} is corrupt ({e!r}); delete {path} and prepare again") from None
    if tokenizer is not None and header.get("tokenizer_hash") != tokenizer_hash(tokenizer):
        raise ValueError(f"{path / HEADER} was made with tokenizer {header.get('tokenizer', {}).get('kind')} "
                         f"(hash {header.get('tokenizer_hash')}), the config names {tokenizer.name} (hash "
                         f"{tokenizer_hash(tokenizer)}); prepare the split again with this tokenizer")
    if sum(n for _, n in shard_list) != count:
        raise ValueError(f"{path / HEADER} is corrupt (shards add up to {sum(n for _, n in shard_list)} tokens, "
                         f"header says {count}); delete {path} and prepare again")
    shards = []
    for name, n in shard_list:
        file = path / name
        size = file.stat().st_size if file.is_file() else -1
        if size != n * dtype.itemsize:
            raise ValueError(f"{file} has {size} bytes, header says {n} {dtype.name} tokens; "
                             f"delete {path} and prepare again")
        shards.append(np.memmap(file, dtype=dtype, mode="r", shape=(n,)))
    return TokenSplit(ShardedTokens(shards), header, path)
