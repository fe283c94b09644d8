"""The pictures of an Inspection: attention heatmaps (layer x head), the next-token entropy strip,
the logit-lens grid, and the embedding scatter.

Each function returns a matplotlib `Figure` built without pyplot (no global figure state, any
backend): a notebook shows it with `display(fig)`, a script saves it with `fig.savefig(path)`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from gpt2_jax.interpret import embeddings as embeddings_lib
from gpt2_jax.interpret import forward


def _fontsize(n: int, most: float = 8.0) -> float:
    """Tick label size that keeps n labels legible on a panel (smaller for longer texts)."""
    return max(3.0, min(most, 220.0 / max(n, 1)))


def _rotation(labels: Sequence[str]) -> int:
    """Upright labels when every one is a character or two (byte-level models), else vertical."""
    return 0 if all(len(x) <= 2 for x in labels) else 90


def _indices(kind: str, chosen: Sequence[int] | None, size: int) -> list[int]:
    return list(range(size)) if chosen is None else [forward.check_index(kind, i, size) for i in chosen]


def attention_grid(ins: forward.Inspection, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None, panel: float = 1.9) -> Figure:
    """A layers x heads grid of attention heatmaps (query rows, key columns), tokens on the axes of
    the left column and the bottom row."""
    layers, heads = _indices("layer", layers, ins.n_layer), _indices("head", heads, ins.n_head)
    t = len(ins.tokens)
    fig = Figure(figsize=(panel * len(heads) + 1.2, panel * len(layers) + 0.8), dpi=100, layout="constrained")
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    size = _fontsize(t, 6)
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(ins.attention[layer, head], vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=7, pad=2)
            ax.set_xticks(range(t), ins.tokens if r == len(layers) - 1 else [""] * t, rotation=_rotation(ins.tokens),
                          fontsize=size)
            ax.set_yticks(range(t), ins.tokens if c == 0 else [""] * t, fontsize=size)
            ax.tick_params(length=0, pad=1)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.suptitle("attention: query (row) attends to key (column)", fontsize=9)
    return fig


def entropy_strip(ins: forward.Inspection, per_row: int = 40) -> Figure:
    """The text, token by token, with a strip under each token coloured by the entropy (bits) of the
    model's next-token distribution there; long texts wrap every per_row tokens."""
    bits = ins.entropy_bits
    t = len(ins.tokens)
    rows = [range(s, min(s + per_row, t)) for s in range(0, t, per_row)]
    width = min(per_row, t)
    fig = Figure(figsize=(0.32 * width + 2.2, 0.95 * len(rows) + 0.9), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    top = float(np.nanmax(bits)) or 1.0
    image = None
    for ax, span in zip(axes, rows):
        values = np.full((1, width), np.nan)
        values[0, :len(span)] = bits[span.start:span.stop]
        image = ax.imshow(values, vmin=0.0, vmax=top, cmap="plasma", aspect="auto")
        labels = [ins.tokens[i] for i in span] + [""] * (width - len(span))
        ax.xaxis.tick_top()
        ax.set_xticks(range(width), labels, fontsize=_fontsize(width, 9), rotation=_rotation(labels))
        ax.set_yticks([])
        for j, v in enumerate(values[0, :len(span)]):
            ax.text(j, 0, f"{v:.1f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 * top else "black")
        ax.tick_params(length=0)
    fig.colorbar(image, ax=list(axes), label="bits", fraction=0.03)
    fig.suptitle(f"next-token entropy (bits) under each token; mean {np.nanmean(bits):.2f}", fontsize=9)
    return fig


def logit_lens_grid(ins: forward.Inspection, max_positions: int = 48) -> Figure:
    """Layers x positions: each cell is the top next token read off the residual stream there
    (through the final LayerNorm and the tied head), coloured by the probability that reading gives
    the true next token. Shows the first max_positions positions."""
    n = min(len(ins.tokens), max_positions)
    prob = ins.lens_true_prob[:, :n]
    layers = ins.lens_layers
    fig = Figure(figsize=(0.5 * n + 2.4, 0.42 * len(layers) + 1.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    cmap = _cmap("viridis")
    image = ax.imshow(np.ma.masked_invalid(prob), vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
    for layer in range(len(layers)):
        for pos in range(n):
            label = ins.label(ins.lens_top_ids[layer, pos, 0])
            dark = np.isnan(prob[layer, pos]) or prob[layer, pos] < 0.6
            ax.text(pos, layer, label[:6], ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_xticks(range(n), ins.tokens[:n], rotation=_rotation(ins.tokens[:n]), fontsize=_fontsize(n, 8))
    ax.set_xlabel("input token (position)", fontsize=8)
    top = ax.secondary_xaxis("top")
    nxt = (ins.tokens[1:n + 1] + ["-"])[:n]
    top.set_xticks(range(n), nxt, rotation=_rotation(nxt), fontsize=_fontsize(n, 8))
    top.set_xlabel("true next token", fontsize=8)
    ax.invert_yaxis()  # the embeddings at the bottom, the last block on top
    fig.colorbar(image, ax=ax, label="p(true next token)", fraction=0.03)
    shown = f"positions 0-{n - 1} of {len(ins.tokens)}" if n < len(ins.tokens) else f"{n} positions"
    fig.suptitle(f"logit lens: top token per layer, coloured by p(true next token); {shown}", fontsize=9)
    return fig


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="lightgray")  # the last position has no next token


def embedding_scatter(proj: embeddings_lib.Projection) -> Figure:
    """The chosen tokens' embeddings on their first two principal components, each labelled."""
    fig = Figure(figsize=(5.5, 4.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    x, y = proj.points[:, 0], proj.points[:, 1]
    ax.scatter(x, y, s=14, color="tab:blue")
    for label, xi, yi in zip(proj.labels, x, y):
        ax.annotate(label, (xi, yi), fontsize=8, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel(f"PC1 ({100 * proj.explained[0]:.1f}% of variance)", fontsize=8)
    ax.set_ylabel(f"PC2 ({100 * proj.explained[1]:.1f}% of variance)", fontsize=8)
    ax.set_title(f"token embeddings of {len(proj.ids)} tokens, 2-D PCA", fontsize=9)
    ax.grid(alpha=0.3)
    return fig
