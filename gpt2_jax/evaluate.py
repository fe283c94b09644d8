"""Held-out evaluation: loss, perplexity and bits per byte over a whole token split, in order."""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from gpt2_jax import sharding
from gpt2_jax.data import loader, tokens as tokens_lib


def metrics_from_nll(total_nll: float, num_tokens: float, num_bytes: float) -> dict[str, float]:
    """loss (nats/token), perplexity and bits per byte from summed NLL over scored tokens/bytes."""
    loss = total_nll / max(num_tokens, 1.0)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": total_nll / math.log(2) / max(num_bytes, 1.0),
        "tokens": num_tokens,
    }


def evaluate_split(eval_step: Callable, params, split: tokens_lib.TokenSplit, batch_size: int, seq_len: int,
                   max_batches: int | None = None, progress: bool = False, desc: str = "eval",
                   batch_sharding: jax.sharding.NamedSharding | None = None) -> dict[str, float]:
    """Score every token of `split` once (non-overlapping windows of seq_len) and summarize.

    With batch_sharding, each process reads only the rows of each batch its devices hold and the
    batches are global arrays on that sharding's mesh.

    Bits per byte divide the NLL by the UTF-8 bytes the scored tokens stand for: the split's
    bytes-per-token ratio (from its header) times the number of scored tokens, which is exact
    when the whole split is scored.
    """
    total = num_batches = loader.num_eval_batches(split.tokens, batch_size, seq_len)
    if max_batches is not None:
        total = min(total, max_batches)
    nll_sum, count_sum = 0.0, 0.0
    pending = []
    rows = None if batch_sharding is None else sharding.local_rows(batch_sharding, (batch_size, seq_len + 1))
    batches = loader.eval_batches(split.tokens, batch_size, seq_len, rows=rows)
    for i, (batch, weights) in enumerate(tqdm(batches, total=total, desc=desc, disable=not progress, leave=False)):
        if i >= total:
            break
        if batch_sharding is not None:
            batch = jax.make_array_from_process_local_data(batch_sharding, batch, (batch_size, seq_len + 1))
            weights = jax.make_array_from_process_local_data(batch_sharding, weights, (batch_size, seq_len))
        pending.append(eval_step(params, batch, weights))
        if len(pending) > 2:  # fetch late so the device keeps working while the host waits
            n, c = jax.device_get(pending.pop(0))
            nll_sum, count_sum = nll_sum + float(n), count_sum + float(c)
    for n, c in jax.device_get(pending):
        nll_sum, count_sum = nll_sum + float(n), count_sum + float(c)
    header = split.header
    bytes_per_token = header["num_bytes"] / max(header["num_tokens"], 1)
    out = metrics_from_nll(nll_sum, count_sum, count_sum * bytes_per_token)
    out["complete"] = float(total == num_batches)
    return out
