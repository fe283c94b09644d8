"""What `gpt2-jax inspect` writes: the four pictures as PNGs, the numbers as JSON, and the full
attention and residual-stream arrays as .npz."""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np

from gpt2_jax.interpret import embeddings as embeddings_lib
from gpt2_jax.interpret import forward, plots

FILES = ("attention.png", "entropy.png", "logit_lens.png", "embeddings.png", "inspection.json", "arrays.npz")


def write(ins: forward.Inspection, proj: embeddings_lib.Projection, neighbours: dict, out_dir: str | pathlib.Path,
          layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
          max_positions: int = 48) -> dict[str, str]:
    """Write FILES into out_dir (created); neighbours: {token: [(token, cosine), ...]} of
    LoadedModel.nearest_tokens. Returns {file name: path}."""
    # Every figure is built before anything is written: a bad layer or head index leaves no files.
    figures = {"attention.png": plots.attention_grid(ins, layers, heads), "entropy.png": plots.entropy_strip(ins),
               "logit_lens.png": plots.logit_lens_grid(ins, max_positions),
               "embeddings.png": plots.embedding_scatter(proj)}
    out = pathlib.Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figures.items():
        paths[name] = out / name
        fig.savefig(paths[name], bbox_inches="tight")
    numbers = {**ins.to_dict(), "embeddings": {
        "pca": {"tokens": proj.labels, "points": np.round(proj.points, 6).tolist(),
                "explained_variance": proj.explained.tolist()},
        "nearest_by_cosine": neighbours}}
    paths["inspection.json"] = out / "inspection.json"
    paths["inspection.json"].write_text(json.dumps(numbers, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["arrays.npz"] = out / "arrays.npz"
    np.savez_compressed(paths["arrays.npz"], ids=ins.ids, attention=ins.attention, residual=ins.residual)
    return {k: str(v) for k, v in paths.items()}
