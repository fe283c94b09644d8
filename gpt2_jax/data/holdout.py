"""Held-out parts of a corpus that has no splits of its own.

A `text:` or `jsonl:` glob without `{split}` reads the same files for every split, so training,
validation and test would be the same text. Training such a source uses three parts carved from
it deterministically instead, named `train~holdout<F>`, `validation~holdout<F>` and
`test~holdout<F>` (F = `data.holdout_fraction`); any command takes these names as splits
(`gpt2-jax eval --data text:corpus.txt@test~holdout0.05`):

* at least 1/F documents: whole documents, ranked by a hash of their index; the first round(F*n)
  are test, the next round(F*n) validation, the rest train (each part in document order);
* fewer (e.g. one file): each document is cut by characters; its last F is test, the F before
  that validation, the first 1-2F train.

The parts depend only on the documents and F, never on a seed, the tokenizer or the machine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Iterator, Sequence

PARTS = ("train", "validation", "test")
ROLE_PARTS = {"train": "train", "eval": "validation", "test": "test"}  # config role -> part
_NAME = re.compile(r"^(train|validation|test)~holdout([0-9.eE+-]+)$")


def part_name(part: str, fraction: float) -> str:
    """The split name of one held-out part, e.g. `test~holdout0.05`."""
    if part not in PARTS:
        raise ValueError(f"held-out part {part!r} is not one of {PARTS}")
    return f"{part}~holdout{fraction:g}"


def parse(split: str) -> tuple[str, float] | None:
    """(part, fraction) of a held-out split name, or None for an ordinary split name."""
    m = _NAME.match(split)
    if not m:
        return None
    try:
        fraction = float(m.group(2))
    except ValueError:
        return None
    if not 0 < fraction < 0.5:
        raise ValueError(f"split {split!r}: the held-out fraction must be in (0, 0.5), got {fraction:g}")
    return m.group(1), fraction


def role_splits(source_has_splits: bool, names: dict[str, str], fraction: float) -> dict[str, str]:
    """{role: split name} to read: `names` as given, or held-out part names when the source has
    no splits of its own and `fraction` > 0 (roles: train, eval, test)."""
    if source_has_splits or fraction <= 0:
        return dict(names)
    return {role: part_name(ROLE_PARTS[role], fraction) for role in names}


def _rank(index: int) -> bytes:
    return hashlib.sha256(str(index).encode()).digest()


@dataclasses.dataclass(frozen=True)
class HeldOut(Sequence[str]):
    """The documents of one part of `whole` (a `sources.Documents`: texts plus a fingerprint)."""

    whole: Sequence[str]
    part: str
    fraction: float
    text_field: str = "text"

    @property
    def by_documents(self) -> bool:
        """Whether the parts are whole documents (else character ranges of every document)."""
        return len(self.whole) * self.fraction >= 1

    @property
    def fingerprint(self) -> dict:
        """The whole source's fingerprint plus how this part was cut (read back by `describe`)."""
        cut = {"part": self.part, "fraction": self.fraction, "of_documents": len(self.whole),
               "by": "documents" if self.by_documents else "characters", "documents": len(self)}
        return {**getattr(self.whole, "fingerprint", {}), "holdout": cut}

    @functools.cached_property
    def _plan(self) -> list[tuple[int, int | None, int | None]]:
        """(document index, first char, end char) of each document of this part, in order."""
        n = len(self.whole)
        if self.by_documents:
            k = round(n * self.fraction)
            order = sorted(range(n), key=_rank)
            chosen = {"test": order[:k], "validation": order[k:2 * k], "train": order[2 * k:]}[self.part]
            return [(i, None, None) for i in sorted(chosen)]
        plan = []
        for i in range(n):
            length = len(self.whole[i])
            cut = round(length * self.fraction)
            lo, hi = {"test": (length - cut, length), "validation": (length - 2 * cut, length - cut),
                      "train": (0, length - 2 * cut)}[self.part]
            if hi > lo:
                plan.append((i, lo, hi))
        return plan

    def __len__(self) -> int:
        return len(self._plan)

    def __getitem__(self, index: int) -> str:
        i, lo, hi = self._plan[index]
        text = self.whole[i]
        return text if lo is None else text[lo:hi]

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


def describe(fingerprint: dict) -> str | None:
    """What a held-out part is, in words, from its fingerprint (None for an ordinary split)."""
    cut = fingerprint.get("holdout")
    if not cut:
        return None
    part, f = cut["part"], cut["fraction"]
    share = "the rest, not held out" if part == "train" else "held out"
    if cut["by"] == "documents":
        return (f"{share}: {cut['documents']} of {cut['of_documents']} whole documents "
                f"(data.holdout_fraction={f:g}, chosen by a hash of each document's index)")
    pct = f"{100 * f:g}%"
    where = {"train": f"the first {100 - 200 * f:g}%", "validation": f"the {pct} before the last {pct}",
             "test": f"the last {pct}"}[part]
    return f"{share}: {where} of the characters of each of {cut['of_documents']} document(s) " \
           f"(data.holdout_fraction={f:g})"
