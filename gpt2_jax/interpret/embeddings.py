"""The token embedding table (the tied input/output matrix): which tokens it puts together.

Nearest tokens by cosine similarity, and a 2-D PCA of chosen tokens' embeddings. Rows past the
tokenizer's vocabulary (padding for speed, `model.vocab_multiple`) are never candidates.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gpt2_jax.interpret import forward


def embedding_table(params, vocab_size: int) -> np.ndarray:
    """The (vocab_size, D) token embedding rows as float32 numpy, gathered from any devices."""
    return np.asarray(params["wte"]["embedding"][:vocab_size], np.float32)


def token_ids(tokenizer, tokens: Sequence[str | int]) -> list[int]:
    """Ids of tokens given as ids or as strings that each encode to exactly one token."""
    out = []
    for t in tokens:
        if isinstance(t, (int, np.integer)):
            if not 0 <= int(t) < tokenizer.vocab_size:
                raise ValueError(f"token id {t} is outside the vocabulary of {tokenizer.vocab_size} ids")
            out.append(int(t))
            continue
        ids = tokenizer.encode(t)
        if len(ids) != 1:
            raise ValueError(f"{t!r} is {len(ids)} tokens, not one; give single tokens (an id, or a string that "
                             "encodes to one token)")
        out.append(ids[0])
    if not out:
        raise ValueError("no tokens given; name at least one")
    return out


def nearest_tokens(table: np.ndarray, query_ids: Sequence[int], k: int = 10) -> list[list[tuple[int, float]]]:
    """For each query id, the k other tokens whose embeddings have the highest cosine similarity,
    as (id, similarity), most similar first."""
    if not 1 <= k < table.shape[0]:
        raise ValueError(f"k={k} must be between 1 and {table.shape[0] - 1} (the other tokens)")
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    sims = unit[list(query_ids)] @ unit.T
    sims[np.arange(len(query_ids)), list(query_ids)] = -np.inf  # a token is not its own neighbour
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[(int(j), float(sims[r, j])) for j in row] for r, row in enumerate(order)]


@dataclasses.dataclass(frozen=True, eq=False)
class Projection:
    """Chosen tokens' embeddings on their first two principal components."""

    ids: list[int]
    labels: list[str]
    points: np.ndarray  # (n, 2)
    explained: np.ndarray  # (2,) fraction of the chosen embeddings' variance on each component


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 2), explained variance ratio (2,)) of the rows of vectors on their top two
    principal components (SVD of the centred rows; signs fixed so each axis's largest |loading| is
    positive)."""
    if vectors.shape[0] < 2:
        raise ValueError("a PCA needs at least two tokens; name more")
    centred = vectors - vectors.mean(axis=0)
    u, s, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    points = (u * s * signs)[:, :2]
    if points.shape[1] < 2:  # two tokens give one component: the second axis is flat
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    var = s ** 2
    explained = np.pad(var[:2] / max(var.sum(), 1e-30), (0, max(0, 2 - len(var))))
    return points, explained


def project(table: np.ndarray, tokenizer, tokens: Sequence[str | int]) -> Projection:
    """The 2-D PCA of the chosen tokens' embeddings (duplicates dropped, order kept)."""
    ids = list(dict.fromkeys(token_ids(tokenizer, tokens)))
    points, explained = pca_2d(table[ids])
    return Projection(ids, [forward.token_label(tokenizer, i) for i in ids], points, explained)
