"""A task's split as fixed-size token rows in memory: classification (tokens, length, label) and
prompt->completion (tokens, per-target weights), read from data/labelled.py's sources.

Every example is one row, right-padded: causal attention never lets a real token see padding or
another example, and the padded positions carry no loss.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from gpt2_jax.data import labelled


@dataclasses.dataclass
class ExampleSplit:
    """Arrays with one row per example ({'tokens': (N, T), ...}), and the split's name."""

    arrays: dict[str, np.ndarray]
    name: str
    texts: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def num_tokens(self) -> int:
        """Token slots of one pass (padding included), for epoch accounting."""
        return int(self.arrays["tokens"].size)

    def rows(self, index: np.ndarray, pad: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """The rows at `index`; -1 gives a padding row (`pad[name]`, default 0, in every column)."""
        index = np.asarray(index)
        out = {}
        for name, a in self.arrays.items():
            rows = a[np.maximum(index, 0)].copy()
            rows[index < 0] = (pad or {}).get(name, 0)
            out[name] = rows
        return out


def label_names(pairs: labelled.Pairs, given: str) -> tuple[str, ...]:
    """id2label: task.labels if set, else the source's own names, else the sorted label names of
    `pairs` (or LABEL_0.. when its labels are ids)."""
    if given.strip():
        return tuple(s.strip() for s in given.split(",") if s.strip())
    if pairs.names:
        return pairs.names
    if all(isinstance(x, int) for x in pairs.second):
        return tuple(f"LABEL_{i}" for i in range(max(pairs.second) + 1))
    if any(isinstance(x, int) for x in pairs.second):
        raise ValueError("labels mix names and ids; write them all as names, or set task.labels to map the ids")
    return tuple(sorted(set(pairs.second)))


def label_ids(pairs: labelled.Pairs, names: Sequence[str]) -> np.ndarray:
    """The id of each example's label; a name not in names, or an id out of range, is a one-line error."""
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(pairs), np.int32)
    for i, (label, where) in enumerate(zip(pairs.second, pairs.where)):
        if isinstance(label, int):
            if not 0 <= label < len(names):
                raise ValueError(f"label id {label} at {where} is outside id2label (0..{len(names) - 1}: "
                                 f"{', '.join(names)}); fix the example or set task.labels")
            out[i] = label
        elif label in index:
            out[i] = index[label]
        else:
            raise ValueError(f"label {label!r} at {where} is not in id2label ({', '.join(names)}); "
                             "add it to task.labels or fix the example")
    return out


def class_counts(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """{name: examples} of every class (0 for absent ones)."""
    counts = np.bincount(labels, minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


def classify_split(pairs: labelled.Pairs, split: str, source: str, names: Sequence[str],
                   encode: Callable[[str], list[int]], seq_len: int, pad_id: int) -> ExampleSplit:
    """tokens (N, seq_len) padded with pad_id (each text truncated to seq_len tokens), lengths, labels.

    A split with a single class, or an empty text, is a one-line error naming it."""
    labels = label_ids(pairs, names)
    present = sorted({names[i] for i in labels})
    if len(present) < 2:
        raise ValueError(f"the {split} split of {source} holds only class {present or ['(none)']}; a classifier "
                         "needs examples of at least two classes there (check the split's files or task.labels)")
    tokens = np.full((len(pairs), seq_len), pad_id, np.int32)
    lengths = np.empty(len(pairs), np.int32)
    for i, (text, where) in enumerate(zip(pairs.first, pairs.where)):
        ids = encode(text)[:seq_len]
        if not ids:
            raise ValueError(f"the text at {where} is empty; remove the example")
        tokens[i, :len(ids)] = ids
        lengths[i] = len(ids)
    return ExampleSplit({"tokens": tokens, "lengths": lengths, "labels": labels}, split, list(pairs.first))


def sft_split(pairs: labelled.Pairs, split: str, encode: Callable[[str], list[int]], seq_len: int,
              eos_id: int) -> ExampleSplit:
    """tokens (N, seq_len + 1) = EOS + prompt + completion + EOS (a document start, as pre-training
    saw it), truncated on the right and padded with EOS, and weights (N, seq_len): 1 where the target
    (the next token) is a completion token or its EOS.

    A completion with no token left after truncation is a one-line error naming the example."""
    tokens = np.full((len(pairs), seq_len + 1), eos_id, np.int32)
    weights = np.zeros((len(pairs), seq_len), np.float32)
    for i, (prompt, completion, where) in enumerate(zip(pairs.first, pairs.second, pairs.where)):
        p = [eos_id] + encode(prompt)
        seq = (p + encode(completion) + [eos_id])[:seq_len + 1]
        if len(seq) <= len(p):
            raise ValueError(f"the completion at {where} is empty after truncation to data.seq_len + 1 = "
                             f"{seq_len + 1} tokens (EOS + prompt take {len(p)}); raise data.seq_len or shorten "
                             "the prompt")
        tokens[i, :len(seq)] = seq
        weights[i, len(p) - 1:len(seq) - 1] = 1.0  # target j is token j + 1
    return ExampleSplit({"tokens": tokens, "weights": weights}, split, list(pairs.first))
