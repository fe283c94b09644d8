"""The `gpt2-jax predict` job: a trained classifier's label and probabilities for every record of a
JSONL file, written as JSONL (each input record with `predicted` and `probabilities` added)."""

from __future__ import annotations

import json
import os
import pathlib

from gpt2_jax import api
from gpt2_jax.data import local_files


def predict_jsonl(run: str, input_path: str, out: str, field: str = "text", step: str | int = "best",
                  batch_size: int = 32, label_field: str = "label") -> dict:
    """Classify `field` of every record of input_path with the classifier in run; write out.

    Returns {'records', 'out', and 'accuracy' when every record has label_field}."""
    model = api.load(run, step=step)
    path = pathlib.Path(input_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--input {path} not found; pass a JSONL file with a {field!r} field per line")
    texts = [text for _, (text,) in local_files.jsonl_rows(path, (field,))]
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    predictions = model.classify(texts, batch_size=batch_size)
    out_path = pathlib.Path(out).expanduser()
    tmp = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for record, p in zip(records, predictions):
            f.write(json.dumps({**record, "predicted": p.label, "probabilities": p.probabilities}) + "\n")
    os.replace(tmp, out_path)  # never a half-written file under the asked name
    summary = {"records": len(records), "out": str(out_path)}
    if records and all(label_field in r for r in records):
        summary["accuracy"] = sum(str(r[label_field]) == p.label for r, p in zip(records, predictions)) / len(records)
    return summary
