"""How a train state is laid out in a checkpoint: each block's arrays stacked along a layer axis,
or the tree as it is.

Orbax spends about 2 ms of CPU per array on every save whatever the array's size (measured on the
2-core CPU: a 34 MB tree of 200 arrays costs 0.60 s of CPU per save, of 50 arrays 0.20 s, of one
0.06 s). A GPT-2 train state has 12 arrays per block three times over (params and two moments),
so per-array work is nearly all a save costs on a CPU, where it competes with the training step
for the same cores. Stacking `h_0 ... h_{L-1}` into one `h_layers` entry whose arrays carry a
leading axis of length L divides those arrays by L. The stacked axis is unsharded, so every other
axis keeps its sharding and a step restores onto any mesh as before. Which layout a step has is
read from its metadata, so both kinds of step restore.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable

import jax
import jax.numpy as jnp

from gpt2_jax.optim import groups as param_groups

STACKED = "h_layers"  # the key that replaces h_0 ... h_{L-1} in a stacked step
_LAYER = re.compile(r"^h_(\d+)$")


def leaf_paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    """(path of key strings, as Orbax saves them, leaf) for every leaf of tree, in flattening order."""
    return [(param_groups.key_names(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _layer_of(path: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    """(path with its first h_<i> entry replaced by STACKED, i), or (path, None) for a leaf outside the blocks."""
    for j, name in enumerate(path):
        m = _LAYER.match(name)
        if m:
            return path[:j] + (STACKED,) + path[j + 1:], int(m.group(1))
    return path, None


def _stackable_sharding(sharding: Any) -> bool:
    return isinstance(sharding, (jax.sharding.NamedSharding, jax.sharding.SingleDeviceSharding))


def stacked_sharding(sharding: Any) -> Any:
    """The sharding of L arrays of `sharding` stacked along a new, unsharded leading axis."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec),
                                          memory_kind=sharding.memory_kind)
    return sharding


def _groups(paths: list[tuple[str, ...]], leaves: list[Any], stack: Iterable[tuple[str, ...]] | None):
    """[(saved path, [leaf positions])]: one entry per saved array, block leaves grouped in layer order.

    stack=None (saving) stacks every complete group of equal shape, dtype and stackable sharding;
    otherwise (restoring) exactly the groups whose stacked path is in `stack`.
    """
    members: dict[tuple[str, ...], dict[int, int]] = {}
    for pos, path in enumerate(paths):
        stacked, layer = _layer_of(path)
        if layer is not None:
            members.setdefault(stacked, {})[layer] = pos
    chosen = set()
    for stacked, by_layer in members.items():
        group = [by_layer[i] for i in sorted(by_layer)]
        if stack is None:
            first = leaves[group[0]]
            if (len(group) > 1 and sorted(by_layer) == list(range(len(group)))
                    and all(isinstance(leaves[p], jax.Array) and leaves[p].shape == first.shape
                            and leaves[p].dtype == first.dtype and leaves[p].sharding == first.sharding
                            and _stackable_sharding(leaves[p].sharding) for p in group)):
                chosen.add(stacked)
        elif stacked in stack:
            chosen.add(stacked)
    out, done = [], set()
    for pos, path in enumerate(paths):
        stacked, layer = _layer_of(path)
        if layer is not None and stacked in chosen:
            if stacked not in done:
                done.add(stacked)
                out.append((stacked, [members[stacked][i] for i in sorted(members[stacked])]))
        else:
            out.append((path, [pos]))
    return out


def _nest(items: Iterable[tuple[tuple[str, ...], Any]]) -> dict:
    tree: dict = {}
    for path, value in items:
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


@functools.lru_cache(maxsize=16)
def _stacker(shardings: tuple) -> Any:
    # One compiled call per state shape; explicit output shardings keep each stacked array's layout.
    return jax.jit(lambda groups: [jnp.stack(g) for g in groups], out_shardings=list(shardings))


def to_saved(tree: Any) -> Any:
    """The nested dict of arrays a stacked step holds: tree's block arrays stacked per `h_layers` path
    (tree itself where no group of two or more blocks can be stacked)."""
    pairs = leaf_paths(tree)
    paths, leaves = [p for p, _ in pairs], [x for _, x in pairs]
    groups = _groups(paths, leaves, None)
    stacked = [(path, [leaves[p] for p in pos]) for path, pos in groups if STACKED in path]
    if not stacked:  # e.g. one block: the tree as is, so the step reads back as a tree-layout step
        return tree
    arrays = _stacker(tuple(stacked_sharding(m[0].sharding) for _, m in stacked))([m for _, m in stacked])
    values = dict(zip((path for path, _ in stacked), arrays))
    return _nest((path, values[path] if path in values else leaves[pos[0]]) for path, pos in groups)


def saved_keys(metadata_keys: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """The stacked paths (those containing `h_layers`) among a step's array keys."""
    return {k for k in metadata_keys if STACKED in k}


def is_stacked(metadata_keys: set[tuple[str, ...]]) -> bool:
    """Whether a step whose arrays have these key paths was saved stacked."""
    return bool(saved_keys(metadata_keys))


def saved_target(target: Any, metadata_keys: set[tuple[str, ...]]) -> dict:
    """The nested dict of ShapeDtypeStructs to restore a stacked step into, for the abstract `target`."""
    pairs = leaf_paths(target)
    stack = saved_keys(metadata_keys)
    out = []
    for path, pos in _groups([p for p, _ in pairs], [x for _, x in pairs], stack):
        first = pairs[pos[0]][1]
        if path in stack:
            first = jax.ShapeDtypeStruct((len(pos), *first.shape), first.dtype,
                                         sharding=stacked_sharding(first.sharding))
        out.append((path, first))
    return _nest(out)


def expected_keys(target: Any, metadata_keys: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """The array keys a step must hold to restore `target`: in a stacked step, a block's array is
    expected under `h_layers` unless the step holds it per layer."""
    if not is_stacked(metadata_keys):
        return {p for p, _ in leaf_paths(target)}
    keys = set()
    for path, _ in leaf_paths(target):
        stacked, layer = _layer_of(path)
        keys.add(path if layer is None or path in metadata_keys else stacked)
    return keys


def from_saved(saved: dict, target: Any, metadata_keys: set[tuple[str, ...]]) -> Any:
    """Rebuild target's tree from a restored stacked step: each stacked array split back into its
    layers, each on the sharding target gives it."""
    pairs = leaf_paths(target)
    leaves, stack = [x for _, x in pairs], saved_keys(metadata_keys)
    out: list[Any] = [None] * len(leaves)
    split, split_into = [], []
    for path, pos in _groups([p for p, _ in pairs], leaves, stack):
        value = _lookup(saved, path)
        if path in stack:
            split.append(value)
            split_into.append(pos)
        else:
            out[pos[0]] = value
    if split:
        shardings = [[leaves[p].sharding for p in pos] for pos in split_into]
        unstack = jax.jit(lambda xs: [[x[i] for i in range(x.shape[0])] for x in xs], out_shardings=shardings)
        for pos, parts in zip(split_into, unstack(split)):
            for p, part in zip(pos, parts):
                out[p] = part
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), out)
