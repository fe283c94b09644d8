"""Class probabilities of texts with a trained classifier's params, in fixed-size jitted batches."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.posttrain import classify


@dataclasses.dataclass(frozen=True)
class Classification:
    """One text's predicted label, its id, and the probability of every label."""

    label: str
    label_id: int
    probabilities: dict[str, float]


def encode_texts(encode: Callable[[str], list[int]], texts: Sequence[str], seq_len: int,
                 pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (N, seq_len) right-padded with pad_id, lengths); each text keeps its first seq_len tokens."""
    tokens = np.full((len(texts), seq_len), pad_id, np.int32)
    lengths = np.empty(len(texts), np.int32)
    for i, text in enumerate(texts):
        ids = encode(text)[:seq_len]
        if not ids:
            raise ValueError(f"text {i} is empty; a classifier needs at least one token")
        tokens[i, :len(ids)], lengths[i] = ids, len(ids)
    return tokens, lengths


def make_probabilities(model: model_lib.GPT2, task: classify.ClassifyTask) -> Callable:
    """jitted (params, tokens, lengths) -> softmax probabilities (B, num_labels)."""
    return jax.jit(lambda params, tokens, lengths: jax.nn.softmax(task.logits(params, model, tokens, lengths)[0]))


def classify_texts(probabilities: Callable, params, task: classify.ClassifyTask, encode: Callable[[str], list[int]],
                   texts: Sequence[str], seq_len: int, batch_size: int = 32) -> list[Classification]:
    """Classification of every text, batch_size at a time (the last batch padded: one compiled shape).
    The width is the longest text rounded up to a power of two (at most seq_len): the head reads each
    text's last real token, which never attends to the padding after it, so short texts cost less."""
    tokens, lengths = encode_texts(encode, texts, seq_len, task.pad_id)
    tokens = tokens[:, :min(seq_len, max(16, 1 << (int(lengths.max()) - 1).bit_length()))]
    n = len(texts)
    pad = -n % batch_size
    tokens = np.concatenate([tokens, np.full((pad, tokens.shape[1]), task.pad_id, np.int32)])
    lengths = np.concatenate([lengths, np.ones(pad, np.int32)])
    probs = np.concatenate([np.asarray(probabilities(params, tokens[i:i + batch_size], lengths[i:i + batch_size]))
                            for i in range(0, len(tokens), batch_size)])[:n]
    return [Classification(task.id2label[int(p.argmax())], int(p.argmax()),
                           {name: float(v) for name, v in zip(task.id2label, p)}) for p in probs]
