"""Pairs of fields per example, for tasks: (text, label) to classify, (prompt, completion) to imitate.

Sources (`data.source` of a task run):

* `jsonl:GLOB:A,B`: each non-blank line of each matching file is a JSON object with fields A and B
  (`{split}` in GLOB becomes the split name). For classification B is a label name or an id.
* `tfds:NAME[/CONFIG]` (classification): a TFDS dataset prepared in `data_dir`, text in
  `data.text_field`, label in `task.label_field` (a ClassLabel feature keeps its names).
* `shakespeare/genre` (classification): the First Folio genre task (genre.py).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from gpt2_jax.data import genre, local_files, sources


@dataclasses.dataclass(frozen=True)
class Pairs:
    """The examples of one split: first and second field of each, where each came from, and the
    label names the source itself declares (TFDS ClassLabel, the genre task), if any."""

    first: list[str]
    second: list  # str, or int label ids
    where: list[str]  # 'file:line' (or 'play passage i', 'record i'), for error messages
    names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.first)


def _jsonl_fields(source: str) -> tuple[str, tuple[str, ...]]:
    pattern, _, fields = source[len(sources.JSONL_PREFIX):].rpartition(":")
    return pattern, tuple(f.strip() for f in fields.split(","))


def check_source(source: str, kind: str) -> None:
    """ValueError naming the fix unless `source` can feed a task of `kind` (lm: any text source)."""
    if kind == "lm":
        return
    if source.startswith(sources.JSONL_PREFIX):
        pattern, fields = _jsonl_fields(source)
        if pattern and len(fields) == 2 and all(fields):
            return
    elif kind == "classify" and (source == genre.SOURCE or (source.startswith(sources.TFDS_PREFIX)
                                                             and len(source) > len(sources.TFDS_PREFIX))):
        return
    want = ("jsonl:GLOB:TEXT,LABEL, tfds:NAME (with task.label_field) or shakespeare/genre" if kind == "classify"
            else "jsonl:GLOB:PROMPT,COMPLETION")
    raise ValueError(f"{source!r} cannot feed task {kind}; use {want}")


def has_own_splits(source: str) -> bool:
    """Whether the splits of a text or task source are different texts (the genre task: whole plays)."""
    return source == genre.SOURCE or sources.has_own_splits(source)


def read_pairs(source: str, split: str, data_dir: str | os.PathLike, text_field: str = "text",
               label_field: str = "label", labels_are_ids: bool = True) -> Pairs:
    """The examples of `split` of a task source (see the module docstring), in a fixed order.

    labels_are_ids: whether a jsonl second field may be an integer id (classification) or must be text.
    """
    if source == genre.SOURCE:
        rows = genre.read_split(split, data_dir)
        return Pairs([r[0] for r in rows], [r[1] for r in rows], [f"{r[2]} passage {i}" for i, r in enumerate(rows)],
                     genre.LABELS)
    if source.startswith(sources.TFDS_PREFIX):
        return _tfds_pairs(source, split, data_dir, text_field, label_field)
    pattern, fields = _jsonl_fields(source)
    files = sources._local_files(pattern.replace("{split}", split), source)  # pylint: disable=protected-access
    first, second, where = [], [], []
    kinds = (str, (str, int) if labels_are_ids else str)
    for path in files:
        for number, (a, b) in local_files.jsonl_rows(path, fields, kinds):
            first.append(a)
            second.append(b)
            where.append(f"{path}:{number}")
    return Pairs(first, second, where)


def _tfds_pairs(source: str, split: str, data_dir, text_field: str, label_field: str) -> Pairs:
    name = source[len(sources.TFDS_PREFIX):]
    records, _ = sources._catalog_split(name, split, pathlib.Path(data_dir).expanduser())  # pylint: disable=protected-access
    for field, key in ((text_field, "data.text_field"), (label_field, "task.label_field")):
        if len(records) and field not in records[0]:
            raise ValueError(f"{source} split {split!r} has no feature {field!r} (features: {sorted(records[0])}); "
                             f"set {key} to the right feature")
    first, second = [], []
    for i in range(len(records)):
        r = records[i]
        text = r[text_field]
        first.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
        label = r[label_field]
        second.append(label.decode("utf-8") if isinstance(label, bytes) else int(label))
    names = None
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    folder = sources._catalog_dir(name, pathlib.Path(data_dir).expanduser())  # pylint: disable=protected-access
    feature = tfds.builder_from_directory(os.fspath(folder)).info.features[label_field]
    if hasattr(feature, "names"):
        names = tuple(feature.names)
    return Pairs(first, second, [f"{source}:{split} record {i}" for i in range(len(first))], names)
