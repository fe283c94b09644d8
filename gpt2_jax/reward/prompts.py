"""Prompts of a reward run: windows of prompt_tokens tokens from a text source's prepared splits, or
the prompts of a JSONL file (left-truncated, left-padded with EOS to prompt_tokens tokens).

Every prompt is exactly prompt_tokens real tokens (EOS padding is text the model has seen between
documents), so the sampler and the update see the same plain causal sequence.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from gpt2_jax.data import loader

EVAL_SEED = 1_000_003  # evaluation prompts: fixed windows, apart from any training seed


def encode_prompt(ids: list[int], length: int, eos_id: int) -> np.ndarray:
    """ids as exactly `length` tokens: the last ones kept, EOS in front of a short prompt."""
    ids = list(ids)[-length:]
    return np.asarray([eos_id] * (length - len(ids)) + ids, np.int32)


def read_jsonl(path: str, field: str, encode, length: int, eos_id: int) -> np.ndarray:
    """(N, length) int32 prompts of a JSONL file's `field`; one-line ValueErrors for a bad file."""
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"reward.prompts {path}: no such file; write one JSON object per line with a "
                         f"{field!r} field")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"reward.prompts {path} line {n}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f"reward.prompts {path} line {n}: no string field {field!r}; set "
                             "reward.prompt_field")
        rows.append(encode_prompt(encode(record[field]), length, eos_id))
    if not rows:
        raise ValueError(f"reward.prompts {path} holds no prompts")
    return np.stack(rows)


class Prompts:
    """Where a run's prompts come from: `fixed` (N, P) JSONL prompts, or windows of the splits."""

    def __init__(self, length: int, fixed: np.ndarray | None = None):
        self.length, self.fixed = length, fixed

    def train(self, split, seed: int, step: int, batch_size: int, rows: slice | None = None) -> np.ndarray:
        """Rows `rows` of the (B, P) prompts of micro-step `step`, a pure function of (seed, step)."""
        if self.fixed is not None:
            return self.fixed[loader.example_indices(seed, step, batch_size, len(self.fixed), rows)]
        return loader.train_batch(split.tokens, seed, step, batch_size, self.length - 1, rows)

    def evaluation(self, split, n: int) -> np.ndarray:
        """The (n, P) prompts every evaluation of `split` uses (the first n of a JSONL file)."""
        if self.fixed is not None:
            return self.fixed[:n]
        return loader.train_batch(split.tokens, EVAL_SEED, 0, n, self.length - 1)
