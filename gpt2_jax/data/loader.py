"""Batches from a prepared token split, with no iterator state, and a background prefetcher.

Training windows of T+1 tokens start at offsets given by a stateless rule: row `r` of the global
batch of step `s` starts at `window_offsets(seed, s, r, ...)`. So the batch of a step is a pure
function of (seed, step), each process reads only its rows of the global batch, and resuming
needs nothing but the step number. `eval_batches` walks a split once in order instead, every
token but the first predicted exactly once. `Prefetcher` builds the next batches in a thread
while the device works on the current one.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np


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


def example_indices(seed: int, step: int, batch_size: int, num_examples: int, rows: slice | None = None) -> np.ndarray:
    """Returns which of num_examples examples rows `rows` of the batch of `step` hold.

    The examples are read in epochs, each a fresh permutation seeded by (seed, epoch): batch
    position p = step * batch_size + row is example perm(p // num_examples)[p % num_examples], so
    every example is seen once per epoch and the batch is a pure function of (seed, step).
    """
    if num_examples < 1:
        raise ValueError("the split has no examples")
    pos = step * batch_size + np.arange(batch_size)[rows if rows is not None else slice(None)]
    epochs = pos // num_examples
    out = np.empty(len(pos), np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng((seed, int(epoch))).permutation(num_examples)
        out[epochs == epoch] = perm[pos[epochs == epoch] % num_examples]
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


def epochs_seen(step: int, tokens_per_step: int, num_tokens: int) -> float:
    """Returns how many passes over a split of `num_tokens` tokens `step` steps amount to."""
    return step * tokens_per_step / max(num_tokens, 1)


class Prefetcher:
    """Iterates `make(step)` for steps [start, stop) with up to `depth` results built ahead in a thread.

    `make` may do host work and the host-to-device copy (`jax.make_array_from_process_local_data`
    is safe off the main thread); an exception in it is raised at the step that needed it.
    Use as a context manager, or call `close()`, to stop the thread early.
    """

    def __init__(self, make: Callable[[int], object], start: int, stop: int, depth: int = 2):
        """Starts the worker thread at once."""
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._make, self._start, self._stop = make, start, stop
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        for step in range(self._start, self._stop):
            try:
                item = (step, self._make(step), None)
            except BaseException as e:  # handed to the consumer, who re-raises it
                item = (step, None, e)
            while not self._closed.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._closed.is_set() or item[2] is not None:
                return

    def get(self, step: int) -> object:
        """Returns `make(step)`; steps must be asked for in order, start first."""
        got, value, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        if got != step:
            raise RuntimeError(f"prefetcher holds step {got}, step {step} was asked for; ask in order")
        return value

    def __iter__(self) -> Iterator[tuple[int, object]]:
        for step in range(self._start, self._stop):
            yield step, self.get(step)

    def close(self) -> None:
        """Stops the worker thread (idempotent)."""
        self._closed.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
