"""BLEU and chrF of generated continuations of held-out passages against their true continuations.

`passages` picks N windows of prompt + continuation tokens, spread evenly over every token of a
set's documents (deterministic, each inside one document); whoever generates (jobs/continuations.py,
with generate/) decodes the prompts, and `overlap_scores` scores the hypotheses against the true
continuations with sacrebleu's corpus BLEU and chrF, returning their standard signatures.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Passage:
    """One held-out passage: the prompt's token ids and the true continuation's."""

    document: int
    start: int
    prompt: list[int]
    reference: list[int]


def passages(documents: Sequence[np.ndarray], n: int, prompt_tokens: int, new_tokens: int) -> list[Passage]:
    """n passages of prompt_tokens + new_tokens tokens, starting at evenly spaced offsets among all
    the places such a window fits inside one document."""
    if n < 1 or prompt_tokens < 1 or new_tokens < 1:
        raise ValueError(f"--generate {n} with {prompt_tokens}-token prompts and {new_tokens}-token continuations: "
                         "each must be at least 1")
    span = prompt_tokens + new_tokens
    fits = np.array([max(len(d) - span + 1, 0) for d in documents], np.int64)
    total = int(fits.sum())
    if total < n:
        raise ValueError(f"the set has room for {total} passages of {span} tokens ({prompt_tokens} prompt + "
                         f"{new_tokens} continuation), fewer than --generate {n}; ask for fewer or shorter ones")
    ends = np.cumsum(fits)
    out = []
    for i in range(n):
        k = (2 * i + 1) * total // (2 * n)  # the middle of the i-th of n equal slices
        d = int(np.searchsorted(ends, k, side="right"))
        start = k - int(ends[d] - fits[d])
        ids = [int(x) for x in documents[d][start:start + span]]
        out.append(Passage(d, start, ids[:prompt_tokens], ids[prompt_tokens:]))
    return out


def overlap_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """sacrebleu corpus BLEU and chrF of hypotheses[i] against references[i], with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references; give one per reference")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()), "generated": len(hypotheses)}
