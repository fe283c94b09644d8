"""Detokenizers that undo the word tokenization of published benchmark texts before BPE scoring.

WikiText and PTB ship pre-tokenized ("don 't", "3 @,@ 000", "( word )"); GPT-2 was evaluated on
text with that tokenization undone, so it sees ordinary prose. The rules below are the ones
published with Megatron-LM's zero-shot GPT-2 evaluation and reused by lm-evaluation-harness
(WikiText, PTB, LAMBADA). They are registered by name; `get(name)` returns one.
Word counts for word-level perplexity are always taken from the original, tokenized text.
"""

from __future__ import annotations

import re
from typing import Callable

Detokenizer = Callable[[str], str]

# WikiText escapes separators inside numbers as " @x@ ".
_WIKITEXT_NUMBER_SEPARATORS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
_WIKITEXT_PUNCTUATION = ((" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "))
# Space just inside a pair of brackets or quotes, e.g. "( a b )" -> "(a b)".
_WIKITEXT_PAIRS = tuple((re.compile(rf"{re.escape(o)}\s*([^{re.escape(c)}]*?)\s*{re.escape(c)}"), rf"{o}\1{c}")
                        for o, c in ("()", "[]", "{}", '""', "''"))
_WIKITEXT_HEADINGS = (("= = = =", "===="), ("= = =", "==="), ("= =", "=="))
_WIKITEXT_MISC = ((" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"), (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s"))


def _replace_all(text: str, pairs) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def wikitext(text: str) -> str:
    """WikiText-2/-103 detokenizer (contractions, number separators, punctuation, brackets, headings)."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    text = _replace_all(text, _WIKITEXT_NUMBER_SEPARATORS)
    text = _replace_all(text, _WIKITEXT_PUNCTUATION)
    for pattern, replacement in _WIKITEXT_PAIRS:
        text = pattern.sub(replacement, text)
    return _replace_all(text, _WIKITEXT_HEADINGS + _WIKITEXT_MISC)


_PTB_RULES = ((" '", "'"), (" \n", "\n"), ("\n ", "\n"), (" n't", "n't"), (" N ", "1 "), ("$ 1", "$1"), ("# 1", "#1"))


def ptb(text: str) -> str:
    """Penn Treebank (Mikolov's LM version) detokenizer: contractions, "N" numbers, currency signs."""
    return _replace_all(text, _PTB_RULES)


def lambada(text: str) -> str:
    """LAMBADA detokenizer: typographic double quotes to ASCII, surrounding whitespace stripped (Megatron
    also puts a newline in front, where lambada.py puts EOS)."""
    return text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"').strip()


def identity(text: str) -> str:
    """The text unchanged."""
    return text


DETOKENIZERS: dict[str, Detokenizer] = {"none": identity, "wikitext": wikitext, "ptb": ptb, "lambada": lambada}


def get(name: str) -> Detokenizer:
    """The detokenizer registered as `name`; ValueError naming the choices otherwise."""
    if name not in DETOKENIZERS:
        raise ValueError(f"unknown detokenizer {name!r}; choose one of {sorted(DETOKENIZERS)}")
    return DETOKENIZERS[name]
