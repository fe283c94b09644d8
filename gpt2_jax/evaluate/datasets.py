"""Evaluation datasets named on the command line: `[NAME=]SOURCE[@SPLIT]`, read and scored.

SOURCE is a data source of `data/sources.py` (`shakespeare/plays`, `text:GLOB`, ...), SPLIT
defaults to `test`. NAME labels the table column; a NAME of the GPT-2 paper's Table 3 (wikitext2,
wikitext103, ptb, lambada, enwik8, text8, 1bw) also picks that dataset's protocol (detokenizer,
task) and its reference values, e.g. `wikitext103=text:~/data/wikitext-103/wiki.test.tokens`.
LAMBADA files hold one passage per line, plain text or JSON lines with a "text" field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from gpt2_jax.data import sources
from gpt2_jax.evaluate import lambada as lambada_lib
from gpt2_jax.evaluate import scoring as evaluate_lib

# name -> (task, detokenizer) for the datasets of the GPT-2 paper's Table 3 that can be scored here.
KNOWN = {
    "wikitext2": ("lm", "wikitext"), "wikitext103": ("lm", "wikitext"), "ptb": ("lm", "ptb"),
    "lambada": ("lambada", "lambada"), "enwik8": ("lm", "none"), "text8": ("lm", "none"), "1bw": ("lm", "none"),
}
UNSUPPORTED = {"cbt_cn": "CBT (a 10-way cloze choice) is not implemented",
               "cbt_ne": "CBT (a 10-way cloze choice) is not implemented"}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One dataset to evaluate: its column name, where its text comes from, and how it is scored."""

    name: str
    source: str
    split: str = "test"
    task: str = "lm"  # lm | lambada
    detokenizer: str = "none"


def parse(spec: str) -> EvalSet:
    """An EvalSet from `[NAME=]SOURCE[@SPLIT]`; ValueError naming the problem otherwise."""
    name, eq, rest = spec.partition("=")
    if not eq or ":" in name or "/" in name:  # no NAME: the '=' (if any) belongs to the source
        name, rest = "", spec
    if not rest or rest.endswith("@"):
        raise ValueError(f"dataset {spec!r} is not [NAME=]SOURCE[@SPLIT], e.g. plays=shakespeare/plays@test")
    source, split = sources.split_source(rest)
    split = split or "test"
    name = name or _default_name(source)
    if name in UNSUPPORTED:
        raise ValueError(f"dataset {name}: {UNSUPPORTED[name]}; leave it out")
    task, detok = KNOWN.get(name, ("lm", "none"))
    return EvalSet(name, source, split, task, detok)


def _default_name(source: str) -> str:
    if source.startswith(sources.TEXT_PREFIX):
        stem = os.path.basename(source[len(sources.TEXT_PREFIX):].rstrip("/")).split(".")[0]
        return re.sub(r"[^A-Za-z0-9_-]+", "_", stem) or "text"
    return source.rsplit("/", 1)[-1]


def read_texts(evalset: EvalSet, data_dir: str) -> list[str]:
    """The documents of the set (LAMBADA: its passages, one per non-empty line)."""
    docs = list(sources.read_documents(evalset.source, evalset.split, data_dir))
    if evalset.task != "lambada":
        return docs
    lines = [line for doc in docs for line in doc.splitlines() if line.strip()]
    return [_passage(line, evalset) for line in lines]


def _passage(line: str, evalset: EvalSet) -> str:
    if not line.lstrip().startswith("{"):
        return line
    try:
        return json.loads(line)["text"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{evalset.source}: line {line[:60]!r} is not JSON with a 'text' field") from None


def evaluate_set(model, params, tokenizer, evalset: EvalSet, data_dir: str, *, context: int | None = None,
                 stride: int | None = None, scorer: evaluate_lib.TokenScorer | None = None,
                 batch_size: int = 8, progress: bool = False) -> dict:
    """The metrics of one set (evaluate.evaluate_texts or lambada.evaluate_lambada), labelled with it."""
    texts = read_texts(evalset, data_dir)
    if evalset.task == "lambada":
        out = lambada_lib.evaluate_lambada(model, params, texts, tokenizer, batch_size=batch_size,
                                           detokenizer=evalset.detokenizer, scorer=scorer, progress=progress)
    else:
        out = evaluate_lib.evaluate_texts(model, params, texts, tokenizer, context=context, stride=stride,
                                          batch_size=batch_size, detokenizer=evalset.detokenizer, scorer=scorer,
                                          progress=progress, desc=evalset.name)
    return {**dataclasses.asdict(evalset), **out}


def evaluate_weights(weights, evalsets: list[EvalSet], data_dir: str, *, context: int | None = None,
                     stride: int | None = None, batch_size: int = 8, progress: bool = False) -> dict[str, dict]:
    """{set name: metrics} for one model (convert.Weights) on each set, sharing one compiled scorer."""
    from gpt2_jax.model import gpt2 as model_lib

    model = model_lib.GPT2(weights.config)
    scorer = evaluate_lib.TokenScorer(model, weights.params, batch_size, progress=progress)
    return {s.name: evaluate_set(model, scorer.params, weights.tokenizer, s, data_dir, context=context,
                                 stride=stride, scorer=scorer, progress=progress) for s in evalsets}
