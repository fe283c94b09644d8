"""Rewards: functions (prompts, completions) -> one float per completion, called on the host.

Three kinds (config `reward.kind`): `lexical` (occurrences of listed words), `callable` (a
`module:function` the user writes), `classifier` (the probability a fine-tuned classifier gives a
named label). `checked` wraps any of them so a raise, a wrong length or a non-finite value is one
line naming the reward and the fix.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Sequence

import numpy as np

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class RewardError(ValueError):
    """A reward that raised or returned the wrong thing; one line naming it."""


def lexical(words: Sequence[str], whole_words: bool = True) -> RewardFn:
    """Reward = how many times the words occur in the completion (case-insensitive; whole words only
    unless whole_words is False)."""
    words = [w.strip().lower() for w in words if w.strip()]
    if not words:
        raise ValueError("the lexical reward needs at least one word")
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    pattern = re.compile(rf"\b(?:{alternatives})\b" if whole_words else f"(?:{alternatives})", re.IGNORECASE)

    def score(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [float(len(pattern.findall(c))) for c in completions]

    return score


def load_callable(spec: str) -> RewardFn:
    """The function named `module:function` (the module importable from the working directory or PYTHONPATH)."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardError(f"reward.callable {spec!r}: cannot import {module_name!r} ({e}); put it on PYTHONPATH "
                          "or in the working directory") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"reward.callable {spec!r}: {module_name} has no function {name!r}")
    return fn


def classifier(classify: Callable[[list[str]], list], id2label: Sequence[str], label: str, source: str) -> RewardFn:
    """Reward = the probability of `label` that `classify` (texts -> predict.Classification's, e.g.
    `gpt2_jax.load(run).classify`) gives each completion; the prompt is not shown to it."""
    if label not in id2label:
        raise RewardError(f"reward.label {label!r} is not a label of the classifier {source} "
                          f"({', '.join(id2label)}); pick one of those")

    def score(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        texts = [c if c else " " for c in completions]  # an empty completion still gets a probability
        return [c.probabilities[label] for c in classify(texts)]

    return score


def checked(fn: RewardFn, name: str) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """fn with its output checked: float32 (N,) of finite values, else RewardError in one line."""

    def call(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        try:
            out = fn(list(prompts), list(completions))
        except Exception as e:  # the user's code: any error becomes one line naming it
            raise RewardError(f"reward {name} raised {type(e).__name__}: {e}") from None
        try:
            values = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError):
            raise RewardError(f"reward {name} returned {type(out).__name__}, not floats; return one float per "
                              "completion") from None
        if values.shape != (len(completions),):
            raise RewardError(f"reward {name} returned shape {values.shape} for {len(completions)} completions; "
                              "return one float per completion")
        if not np.all(np.isfinite(values)):
            raise RewardError(f"reward {name} returned a NaN or inf; return finite floats")
        return values

    return call


def from_config(r, load_classifier: Callable[[str], object] | None = None) -> Callable:
    """The checked reward of config section r (`cfg.reward`); load_classifier(path) -> an object
    with `.classify(texts)` and `.task['id2label']` (api.load) for the classifier kind."""
    if r.kind == "lexical":
        return checked(lexical(r.words.split(","), r.whole_words), f"lexical({r.words})")
    if r.kind == "callable":
        return checked(load_callable(r.callable), r.callable)
    if load_classifier is None:
        raise RewardError("the classifier reward needs a loader of classifier runs")
    model = load_classifier(r.classifier)
    task = getattr(model, "task", {}) or {}
    if task.get("kind") != "classify":
        raise RewardError(f"reward.classifier {r.classifier} is a {task.get('kind', 'lm')} model, not a classifier; "
                          "train one with task.kind=classify (experiments/finetune_genre.py)")
    return checked(classifier(model.classify, task["id2label"], r.label, r.classifier), f"P({r.label})")
