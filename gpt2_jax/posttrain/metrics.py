"""Classification metrics from labels and logits: loss, accuracy, macro-F1, per-class recall, the
confusion matrix, and its picture."""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts: row = true class, column = predicted class."""
    m = np.zeros((num_labels, num_labels), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def f1_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, F1); 0 where a class is never predicted or never true."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, true = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def from_predictions(labels: np.ndarray, preds: np.ndarray, names: Sequence[str]) -> dict:
    """accuracy, macro_f1 (over the classes present in labels or preds), recall_<name> per class, confusion."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    m = confusion_matrix(labels, preds, len(names))
    _, recall, f1 = f1_scores(m)
    seen = (m.sum(axis=0) + m.sum(axis=1)) > 0
    out = {"accuracy": float(np.mean(labels == preds)) if len(labels) else 0.0,
           "macro_f1": float(np.mean(f1[seen])) if seen.any() else 0.0}
    out.update({f"recall_{name}": float(recall[i]) for i, name in enumerate(names) if m[i].sum() > 0})
    out["confusion"] = m.tolist()
    out["examples"] = float(len(labels))
    return out


def from_logits(labels: np.ndarray, logits: np.ndarray, names: Sequence[str]) -> dict:
    """from_predictions of the argmax, plus loss: the mean cross-entropy of the logits."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    loss = float(-np.mean(logp[np.arange(len(labels)), labels])) if len(labels) else 0.0
    return {"loss": loss, **from_predictions(labels, logits.argmax(axis=-1), names)}


def plot_confusion(confusion: Sequence[Sequence[int]], names: Sequence[str], path: str | pathlib.Path,
                   title: str = "") -> pathlib.Path:
    """Write the confusion matrix (counts, rows = true class) as a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.1 * len(names) + 1.8), dpi=100)
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > 0.6 * max(m.max(), 1) else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
