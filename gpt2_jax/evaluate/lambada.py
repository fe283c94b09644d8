"""LAMBADA: predict the last word of a passage; accuracy and perplexity of that word, two variants.

Each passage is split at its last space into a context and a target word (" word", space
included, as GPT-2 sees it). Both are encoded separately and scored in one forward pass with
EOS before the context; a passage longer than the model keeps the end of its context.
* whole word (GPT-2 paper, lm-evaluation-harness): correct when greedy decoding reproduces every
  BPE token of the word; perplexity = exp(mean over passages of the word's summed NLL).
* last token: correct when the argmax at the last position is the passage's final BPE token;
  perplexity = exp(mean NLL of that token). Its context includes the word's earlier tokens.
The stop-word filter of GPT-2's reported accuracy is not applied.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from gpt2_jax.evaluate import detokenize
from gpt2_jax.evaluate import scoring as evaluate_lib
from gpt2_jax.model import gpt2 as model_lib


def split_last_word(passage: str) -> tuple[str, str]:
    """(context, " word") of a passage; ValueError if it has no space to split at."""
    context, space, word = passage.rstrip().rpartition(" ")
    if not space or not word:
        raise ValueError(f"LAMBADA passage {passage[:60]!r} has no last word after a space; check the data file")
    return context, " " + word


def evaluate_lambada(model: model_lib.GPT2, params, passages: Sequence[str], tokenizer, *, batch_size: int = 8,
                     detokenizer: str = "lambada", scorer: evaluate_lib.TokenScorer | None = None,
                     progress: bool = False) -> dict:
    """acc / ppl (whole word) and acc_token / ppl_token (last BPE token) over the passages."""
    if not passages:
        raise ValueError("no LAMBADA passages to evaluate; check the data file")
    detok = detokenize.get(detokenizer)
    context_len = model.cfg.n_positions
    scorer = scorer or evaluate_lib.TokenScorer(model, params, batch_size, progress=progress)
    rows = []
    for passage in passages:
        context, word = split_last_word(detok(passage))
        ctx_ids, word_ids = tokenizer.encode(context), tokenizer.encode(word)
        ids = ([tokenizer.eos_id] + ctx_ids + word_ids)[-(context_len + 1):]
        rows.append((np.asarray(ids, np.int64), len(word_ids)))
    by_length: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(rows):
        by_length.setdefault(evaluate_lib.bucket_length(len(ids) - 1, context_len), []).append(i)
    word_nll, word_hit = np.zeros(len(rows)), np.zeros(len(rows), bool)
    last_nll, last_hit = np.zeros(len(rows)), np.zeros(len(rows), bool)
    for length, members in sorted(by_length.items()):
        inputs, targets = np.zeros((len(members), length), np.int32), np.zeros((len(members), length), np.int32)
        for r, i in enumerate(members):
            ids = rows[i][0]
            inputs[r, :len(ids) - 1], targets[r, :len(ids) - 1] = ids[:-1], ids[1:]
        nll, hit, _ = scorer.score_rows(inputs, targets, desc=f"lambada ({len(members)} passages of {length})")
        for r, i in enumerate(members):
            end, n_word = len(rows[i][0]) - 1, rows[i][1]
            word_nll[i], word_hit[i] = nll[r, end - n_word:end].sum(), hit[r, end - n_word:end].all()
            last_nll[i], last_hit[i] = nll[r, end - 1], hit[r, end - 1]
    return {"acc": float(word_hit.mean()), "ppl": math.exp(min(word_nll.mean(), 700.0)),
            "acc_token": float(last_hit.mean()), "ppl_token": math.exp(min(last_nll.mean(), 700.0)),
            "passages": len(rows), "protocol": f"last word after the final space; whole word: greedy match of all "
            f"its BPE tokens; last token: final BPE token; EOS before each passage; detokenizer {detokenizer}; "
            f"no stop-word filter"}
