"""Local TFDS builder `local_files`: text files or JSONL records as an array_record dataset.

One config per set of inputs: its name is a hash of the resolved paths, sizes and modification
times (and the JSONL field), so editing a file gives a new dataset instead of stale records.
Each example is `{'text', 'path'}`: a whole `.txt` file, or one line's `FIELD` of a `.jsonl`
file. Preparing needs no TensorFlow; reading is random access through `as_data_source`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Iterator

import tensorflow_datasets as tfds


def fingerprint(files: list[pathlib.Path], field: str | None, split: str) -> str:
    """Returns a config name hashing the files' paths, sizes and mtimes, the JSONL field and split."""
    digest = hashlib.sha256(f"field={field}\nsplit={split}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "f" + digest.hexdigest()[:16]


def text_records(path: pathlib.Path) -> Iterator[str]:
    """Yields the text of one UTF-8 file; an empty file or invalid UTF-8 is a one-line error."""
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{path} is empty; remove it or narrow the glob")
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 (byte {e.start}); convert it to UTF-8") from None


def jsonl_records(path: pathlib.Path, field: str) -> Iterator[str]:
    """Yields `record[field]` of each non-blank line; a bad line is a one-line error naming it."""
    for _, (text,) in jsonl_rows(path, (field,)):
        yield text


def jsonl_rows(path: pathlib.Path, fields: tuple[str, ...], kinds: tuple = ()) -> Iterator[tuple[int, tuple]]:
    """Yields (line number, the values of `fields`) of each non-blank line. Each value must be a
    string, or of the matching `kinds` entry (a type or tuple of types) when given; a bad line is a
    one-line error naming it."""
    count = 0
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number} is not valid JSON ({e.msg}); fix or remove the line") from None
                values = []
                for i, field in enumerate(fields):
                    kind = kinds[i] if i < len(kinds) else str
                    value = record.get(field) if isinstance(record, dict) else None
                    if not isinstance(value, kind) or isinstance(value, bool):
                        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                        what = "string" if kind is str else "string or integer"
                        raise ValueError(f"{path}:{number} has no {what} field {field!r} (has {keys}); "
                                         f"name the fields after the last ':' of the source")
                    values.append(value)
                count += 1
                yield number, tuple(values)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 (byte {e.start}); convert it to UTF-8") from None
    if not count:
        raise ValueError(f"{path} has no records; remove it or narrow the glob")


class LocalFiles(tfds.core.GeneratorBasedBuilder):
    """Local `.txt` files (one example each) or `.jsonl` lines, in sorted file order."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, files: list[pathlib.Path], field: str | None, split: str, **kwargs):
        """`files` (sorted) are read as text, or as JSONL taking `field` when it is set."""
        self._files, self._field, self._split = files, field, split
        name = fingerprint(files, field, split)
        super().__init__(config=tfds.core.BuilderConfig(name=name, description="local files"), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
            disable_shuffling=True)  # keep file order

    def _split_generators(self, dl_manager):
        return {self._split: self._generate_examples()}

    def _generate_examples(self):
        index = 0
        for path in self._files:
            records = jsonl_records(path, self._field) if self._field else text_records(path)
            for text in records:
                yield f"{index:09d}", {"text": text, "path": str(path)}
                index += 1
