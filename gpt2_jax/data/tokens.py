"""Token splits prepared once on disk, and stateless batch sampling from them.

`prepare_split` tokenizes every document of a split into one flat `tokens.bin` (uint16, or
uint32 for vocabularies above 65536 ids) with the tokenizer's EOS id *between* documents (none
before the first or after the last), plus a `header.json`. `load_split` memory-maps it.

Batches need no iterator state: `train_batch(tokens, seed, step, ...)` draws row `r` of step
`step` from a hash of `(seed, step, r)`, so resuming at a step, or reading only this process's
rows of the global batch, gives exactly the rows a single process would have read.
`eval_batches` walks a split once in order, every token but the first predicted exactly once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Iterator

import numpy as np
import tqdm

from gpt2_jax.data import sources
from gpt2_jax.data.tokenizers import Tokenizer

FORMAT_VERSION = 1
HEADER = "header.json"
TOKENS = "tokens.bin"


@dataclasses.dataclass(frozen=True)
class TokenSplit:
    """A prepared split: `tokens` is a read-only memmap, `header` the parsed header.json."""

    tokens: np.ndarray
    header: dict
    path: pathlib.Path

    @property
    def num_tokens(self) -> int:
        """Returns the number of tokens, EOS separators included."""
        return int(self.tokens.shape[0])


def token_dtype(vocab_size: int) -> np.dtype:
    """Returns uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_identity(spec: dict) -> dict:
    """Returns `spec` without file paths: what decides the ids, wherever the files live."""
    strip = {k: v for k, v in spec.items() if k != "files"}
    if "files" in spec:
        strip["files"] = [{k: v for k, v in f.items() if k != "path"} for f in spec["files"]]
    return strip


def split_dir(source: str, split: str, tokenizer: Tokenizer, data_dir: str | os.PathLike) -> pathlib.Path:
    """Returns `<data_dir>/tokens/<source>/<split>-<tokenizer name>-<hash of its spec>`."""
    source = sources.canonical_source(source)
    safe = _safe_name(source)
    if safe != source.replace("/", "_"):  # a glob lost characters: keep names apart by a hash
        safe = f"{safe[:80]}-{_short_hash(source)}"
    spec_hash = _short_hash(tokenizer_identity(tokenizer.spec()))
    return pathlib.Path(data_dir).expanduser() / "tokens" / safe / f"{_safe_name(split)}-{tokenizer.name}-{spec_hash}"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _expected_header(source: str, split: str, tokenizer: Tokenizer, data_dir) -> dict:
    return {
        "version": FORMAT_VERSION,
        "source": sources.canonical_source(source),
        "split": split,
        "source_fingerprint": sources.source_fingerprint(source, split, data_dir),
        "tokenizer": tokenizer.spec(),
        "eos_id": tokenizer.eos_id,
        "eos_placement": "between documents",
        "dtype": token_dtype(tokenizer.vocab_size).name,
    }


def _matches(header: dict, expected: dict) -> bool:
    keys = ("version", "source", "split", "source_fingerprint", "eos_id", "eos_placement", "dtype")
    return (all(header.get(k) == expected[k] for k in keys)
            and tokenizer_identity(header.get("tokenizer", {})) == tokenizer_identity(expected["tokenizer"]))


def prepare_split(source: str, split: str, tokenizer: Tokenizer, data_dir: str | os.PathLike,
                  show_progress: bool = True) -> pathlib.Path:
    """Tokenizes `split` of `source` once into `tokens.bin` + `header.json`; returns their folder.

    A folder whose header matches (source, split, tokenizer, source fingerprint, format) is
    reused as is; one whose source changed (e.g. edited `text:` files) is rebuilt. The files
    are written into a temporary sibling folder that is renamed into place only when complete,
    so an interrupted run leaves nothing a later run would read.
    """
    final = split_dir(source, split, tokenizer, data_dir)
    expected = _expected_header(source, split, tokenizer, data_dir)
    stale = (final / HEADER).exists()
    if stale:
        if _matches(load_split(final).header, expected):
            return final
        print(f"Re-preparing {final}: its source files or format changed", flush=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        counts = _write_tokens(source, split, tokenizer, data_dir, tmp / TOKENS, show_progress)
        header = {**expected, **counts}
        (tmp / HEADER).write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
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


def _write_tokens(source, split, tokenizer, data_dir, path, show_progress) -> dict:
    dtype = token_dtype(tokenizer.vocab_size)
    total = sources.count_documents(source, split, data_dir)
    docs = sources.read_documents(source, split, data_dir)
    counts = {"num_tokens": 0, "num_documents": 0, "num_bytes": 0, "num_chars": 0, "num_words": 0}
    desc = f"tokenizing {sources.canonical_source(source)} {split}"
    with open(path, "wb") as f:
        for doc in tqdm.tqdm(docs, total=total, desc=desc, unit="doc", disable=not show_progress):
            ids = tokenizer.encode(doc)
            if counts["num_documents"]:
                ids = [tokenizer.eos_id, *ids]
            np.asarray(ids, dtype=dtype).tofile(f)
            counts["num_tokens"] += len(ids)
            counts["num_documents"] += 1
            counts["num_bytes"] += len(doc.encode("utf-8"))
            counts["num_chars"] += len(doc)
            counts["num_words"] += len(doc.split())
    if counts["num_tokens"] == 0:
        raise ValueError(f"split {split!r} of {source!r} has no text to tokenize; pick another split")
    return counts


def load_split(path: str | os.PathLike) -> TokenSplit:
    """Returns the prepared split in folder `path` (tokens memory-mapped read-only)."""
    path = pathlib.Path(path)
    if not (path / HEADER).is_file():
        raise FileNotFoundError(f"{path / HEADER} not found; run prepare_split first")
    try:
        header = json.loads((path / HEADER).read_text(encoding="utf-8"))
        dtype, count = np.dtype(header["dtype"]), int(header["num_tokens"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path / HEADER} is corrupt ({e!r}); delete {path} and prepare again") from None
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {header.get('version')}, this code reads "
                         f"{FORMAT_VERSION}; delete it and prepare again")
    size = (path / TOKENS).stat().st_size if (path / TOKENS).is_file() else -1
    if size != count * dtype.itemsize:
        raise ValueError(f"{path / TOKENS} has {size} bytes, header says {count} {dtype.name} tokens; "
                         f"delete {path} and prepare again")
    return TokenSplit(np.memmap(path / TOKENS, dtype=dtype, mode="r", shape=(count,)), header, path)


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64's finalizer: a bijection on uint64 with good avalanche (wrapping arithmetic).
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def window_offsets(seed: int, step: int, rows: np.ndarray, num_starts: int) -> np.ndarray:
    """Returns the start offset in [0, num_starts) of each global row of `rows` at `step`.

    A pure function of (seed, step, row): uniform up to a bias below num_starts / 2**64.
    """
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(seed % (1 << 64)) + np.uint64(0x9E3779B97F4A7C15))
        key = _mix64(key + np.uint64(step % (1 << 64)))
        h = _mix64(key + np.asarray(rows, dtype=np.uint64))
    return (h % np.uint64(num_starts)).astype(np.int64)


def train_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int,
                rows: slice | None = None) -> np.ndarray:
    """Returns rows `rows` (default all) of the global training batch of `step`, int32 (n, seq_len+1).

    Row r starts at `window_offsets(seed, step, r, ...)`, uniform in [0, len(tokens) - seq_len - 1],
    so it does not depend on which other rows are read.
    """
    num_starts = len(tokens) - seq_len
    if num_starts < 1:
        raise ValueError(f"split has {len(tokens)} tokens, too few for one window of seq_len+1 = "
                         f"{seq_len + 1}; lower seq_len or use a larger split")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be positive")
    row_ids = np.arange(batch_size)[rows if rows is not None else slice(None)]
    offsets = window_offsets(seed, step, row_ids, num_starts)
    out = np.empty((len(row_ids), seq_len + 1), dtype=np.int32)
    for i, start in enumerate(offsets):
        out[i] = tokens[start:start + seq_len + 1]
    return out


def num_eval_batches(tokens: np.ndarray | int, batch_size: int, seq_len: int) -> int:
    """Returns how many batches `eval_batches(tokens, ...)` yields; `tokens` may be a count."""
    num_tokens = tokens if isinstance(tokens, (int, np.integer)) else len(tokens)
    windows = -(-(num_tokens - 1) // seq_len)
    return -(-windows // batch_size) if num_tokens > 1 else 0


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int,
                 rows: slice | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (batch int32 (B, seq_len+1), weights float32 (B, seq_len)) over the whole split.

    Window w holds tokens[w*seq_len : w*seq_len + seq_len + 1], so windows do not overlap in
    their targets and every token but the first is predicted exactly once. The last window
    and batch are padded with token 0 and weight 0, keeping one batch shape. `rows` selects
    this process's rows of each global batch.
    """
    if len(tokens) < 2:
        raise ValueError(f"split has {len(tokens)} tokens; evaluation needs at least 2")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be positive")
    num_targets = len(tokens) - 1
    row_ids = np.arange(batch_size)[rows if rows is not None else slice(None)]
    for b in range(num_eval_batches(len(tokens), batch_size, seq_len)):
        batch = np.zeros((len(row_ids), seq_len + 1), dtype=np.int32)
        weights = np.zeros((len(row_ids), seq_len), dtype=np.float32)
        for i, row in enumerate(row_ids):
            start = (b * batch_size + row) * seq_len
            n = min(seq_len, num_targets - start)
            if n > 0:
                batch[i, :n + 1] = tokens[start:start + n + 1]
                weights[i, :n] = 1.0
        yield batch, weights
