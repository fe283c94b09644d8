"""Parameter groups: a partition of the parameter tree into frozen leaves and trainable groups with
learning-rate multipliers, and the optax optimizer over that partition.

A group label is given to every leaf by its path (`h_0/attn/qkv_kernel`): a leaf matched by a
freeze pattern is `frozen` (optax.set_to_zero, so it carries no optimizer state), any other leaf
gets the multiplier of the first multiplier pattern that matches it (default 1). Patterns are
fnmatch globs matched against a leaf's path and each of its leading parts (`h_[0-3]` matches
`h_2/mlp/fc_kernel`); callers may pass aliases that stand for several patterns.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Mapping, Sequence

import jax
import optax

FROZEN = "frozen"


def key_names(path) -> tuple[str, ...]:
    """('h_0', 'attn', 'qkv_kernel') for a pytree key path: each dict key, attribute name or index."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return tuple(parts)


def path_name(path) -> str:
    """'h_0/attn/qkv_kernel' for a pytree key path (dict keys and attributes joined by '/')."""
    return "/".join(key_names(path))


def leaf_paths(tree) -> list[str]:
    """The path name of every leaf of tree, in leaf order."""
    return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def parse_patterns(text: str, aliases: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Comma-separated patterns, each alias replaced by the patterns it stands for (order kept)."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if item:
            out.extend((aliases or {}).get(item, (item,)))
    return out


def parse_multipliers(text: str) -> list[tuple[str, float]]:
    """'score=10,h_5=2' -> [('score', 10.0), ('h_5', 2.0)]; ValueError naming a bad item."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        pattern, eq, value = item.partition("=")
        try:
            mult = float(value)
        except ValueError:
            mult = -1.0
        if not eq or not pattern.strip() or not mult > 0:
            raise ValueError(f"lr multiplier {item!r} must look like PATTERN=FACTOR with FACTOR > 0, e.g. score=10")
        out.append((pattern.strip(), mult))
    return out


def matches(pattern: str, path: str) -> bool:
    """Whether pattern matches path or one of its leading parts ('h_0' matches 'h_0/attn/out_bias')."""
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def group_name(multiplier: float) -> str:
    """The label of a trainable group with this learning-rate multiplier ('lr_x1', 'lr_x10')."""
    return f"lr_x{multiplier:g}"


def param_labels(params, freeze: Sequence[str] = (), multipliers: Sequence[tuple[str, float]] = (),
                 always_frozen: Sequence[str] = ()) -> Any:
    """A tree like params whose leaves are group labels: FROZEN or group_name(multiplier).

    `always_frozen` patterns (e.g. the base weights under LoRA) are frozen without being checked;
    a `freeze` or multiplier pattern that matches no leaf is a ValueError naming it, and so is a
    partition that leaves nothing to train.
    """
    paths = leaf_paths(params)
    for pattern in freeze:
        if not any(matches(pattern, p) for p in paths):
            raise ValueError(f"freeze pattern {pattern!r} matches no parameter; parameter paths look like "
                             f"{', '.join(paths[:3])} (globs, comma-separated)")
    for pattern, _ in multipliers:
        if not any(matches(pattern, p) for p in paths):
            raise ValueError(f"lr multiplier pattern {pattern!r} matches no parameter; parameter paths look like "
                             f"{', '.join(paths[:3])}")

    def label(path: str) -> str:
        if any(matches(p, path) for p in (*freeze, *always_frozen)):
            return FROZEN
        return group_name(next((m for p, m in multipliers if matches(p, path)), 1.0))

    labels = [label(p) for p in paths]
    if all(lab == FROZEN for lab in labels):
        raise ValueError("every parameter is frozen; freeze fewer patterns so something is trained")
    return jax.tree.unflatten(jax.tree.structure(params), labels)


def trainable_mask(labels) -> Any:
    """True where a leaf is trained."""
    return jax.tree.map(lambda lab: lab != FROZEN, labels)


def count_by_label(params, labels) -> dict[str, int]:
    """{label: number of scalars} over a param tree (arrays or ShapeDtypeStructs)."""
    out: dict[str, int] = {}
    for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
        out[lab] = out.get(lab, 0) + math.prod(x.shape)
    return out


def multiplier_of(label: str) -> float:
    """The learning-rate multiplier of a trainable group label."""
    return float(label.removeprefix("lr_x"))


def partitioned(labels, make_tx, lr) -> optax.GradientTransformation:
    """optax.partition over labels: FROZEN leaves get set_to_zero (no state), every other group
    make_tx(lr x its multiplier). lr is a float or a schedule."""
    groups = sorted(set(jax.tree.leaves(labels)) - {FROZEN})
    scaled = lambda m: lr if m == 1.0 else (lambda s: lr(s) * m) if callable(lr) else lr * m
    transforms = {g: make_tx(scaled(multiplier_of(g))) for g in groups}
    transforms[FROZEN] = optax.set_to_zero()
    return optax.partition(transforms, labels)


def state_bytes(opt_state) -> int:
    """Bytes of an optimizer state (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(opt_state))
