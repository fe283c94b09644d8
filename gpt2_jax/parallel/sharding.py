"""Device mesh, logical-to-mesh axis rules, and the shardings of state and batches.

The mesh has axes ('data', 'fsdp', 'tensor'). The model names every parameter and activation
dimension logically ('batch', 'embed', 'heads', 'mlp', 'vocab', ...); a rule set maps those
names to mesh axes, so data parallelism, FSDP and tensor parallelism are config choices. Pure
data parallelism (what pmap gives) is the mesh (N, 1, 1) of the same jit code path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both: FSDP is data parallel with sharded weights

_COMMON = (("batch", BATCH_AXES), ("length", None), ("kv", None), ("positions", None))
RULE_PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    "dp": _COMMON + (("embed", None), ("heads", None), ("mlp", None), ("vocab", None)),
    "fsdp": _COMMON + (("embed", "fsdp"), ("heads", None), ("mlp", None), ("vocab", None)),
    "tp": _COMMON + (("embed", None), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor")),
    "fsdp+tp": _COMMON + (("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor")),
}


class ShardingError(ValueError):
    """A mesh or layout that cannot work; the one-line message names both numbers and the fix."""


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Mesh shape within a slice/node (ici) and across slices/nodes (dcn), axes ('data', 'fsdp', 'tensor')."""

    ici: tuple[int, int, int] = (-1, 1, 1)
    dcn: tuple[int, int, int] = (1, 1, 1)
    rules: str = "fsdp+tp"

    @classmethod
    def from_config(cls, mesh_cfg) -> "MeshSpec":
        """From the config's `mesh` section."""
        return cls(ici=tuple(int(mesh_cfg[a]) for a in AXES),
                   dcn=tuple(int(mesh_cfg[f"dcn_{a}"]) for a in AXES), rules=str(mesh_cfg.rules))


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(f"{a}={n}" for a, n in zip(AXES, shape)) + ")"


def resolve_shape(spec: MeshSpec, num_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici, dcn) shapes with -1 filled in; ShardingError if they do not use exactly num_devices."""
    dcn = spec.dcn
    if any(n < 1 for n in dcn):
        raise ShardingError(f"mesh dcn shape {_fmt(dcn)} must be positive; set mesh.dcn_* to 1 or more")
    slices = math.prod(dcn)
    if num_devices % slices:
        raise ShardingError(f"{num_devices} devices cannot split into {slices} slices/nodes (mesh.dcn_*); "
                            f"make the product of mesh.dcn_* divide {num_devices}")
    per_slice = num_devices // slices
    ici = list(spec.ici)
    free = [i for i, n in enumerate(ici) if n == -1]
    if len(free) > 1:
        raise ShardingError(f"mesh {_fmt(ici)} has more than one -1; set all but one of mesh.data/fsdp/tensor")
    fixed = math.prod(n for n in ici if n != -1)
    if free:
        if per_slice % fixed:
            raise ShardingError(f"mesh {_fmt(ici)}: {per_slice} devices per slice are not divisible by {fixed}; "
                                f"choose mesh sizes whose product divides {per_slice}")
        ici[free[0]] = per_slice // fixed
    if math.prod(ici) != per_slice:
        raise ShardingError(f"mesh {_fmt(ici)} x dcn {_fmt(dcn)} needs {math.prod(ici) * slices} devices but "
                            f"{num_devices} are available; set mesh sizes whose product is {num_devices} "
                            f"(or -1 for one of them)")
    return tuple(ici), tuple(dcn)


def device_grid(spec: MeshSpec, devices: Sequence[Any]) -> np.ndarray:
    """Devices arranged as the (data, fsdp, tensor) grid; with dcn > 1, each slice (TPU) or process
    (GPU/CPU clusters) holds one contiguous ici block, so only the dcn axes cross the slow network."""
    ici, dcn = resolve_shape(spec, len(devices))
    slices = math.prod(dcn)
    if slices == 1:
        return np.asarray(mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True))
    key = "slice_index" if hasattr(devices[0], "slice_index") else "process_index"
    found = len({getattr(d, key) for d in devices})
    if found != slices:
        unit = "slices" if key == "slice_index" else "processes"
        raise ShardingError(f"mesh.dcn_* asks for {slices} slices/nodes but the devices come from {found} {unit}; "
                            f"make the product of mesh.dcn_* equal {found}")
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=key == "process_index")


def make_mesh(spec: MeshSpec, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices of all processes)."""
    devices = list(devices if devices is not None else jax.devices())
    axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)  # Explicit axes break Linen's gathers
    return jax.sharding.Mesh(device_grid(spec, devices), AXES, axis_types=axis_types)


def logical_rules(name: str) -> tuple[tuple[str, Any], ...]:
    """A rule preset by name, or explicit rules 'logical=axis[+axis],...' (e.g. 'batch=data+fsdp,embed=fsdp')."""
    if name in RULE_PRESETS:
        return RULE_PRESETS[name]
    rules = dict(RULE_PRESETS["dp"])
    for item in filter(None, (s.strip() for s in name.split(","))):
        logical, _, axes = item.partition("=")
        if not _ or logical not in rules:
            raise ShardingError(f"mesh.rules {name!r}: {item!r} is not a preset ({', '.join(RULE_PRESETS)}) "
                                f"or a rule logical=axis with logical in {', '.join(rules)}")
        names = tuple(a for a in axes.split("+") if a and a != "none")
        bad = [a for a in names if a not in AXES]
        if bad:
            raise ShardingError(f"mesh.rules {name!r}: unknown mesh axis {bad[0]!r}; use data, fsdp or tensor")
        rules[logical] = names[0] if len(names) == 1 else (names or None)
    return tuple(rules.items())


def _axis_size(mesh_shape: Mapping[str, int], axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh_shape[a] for a in axes)


def batch_shards(mesh_shape: Mapping[str, int], rules) -> int:
    """How many blocks a batch's rows are split into: the size of the mesh axes of the 'batch' rule."""
    return _axis_size(mesh_shape, dict(rules).get("batch"))


def check_layout(mesh_shape: Mapping[str, int], rules, n_head: int, n_embd: int,
                 batch_sizes: dict[str, int]) -> None:
    """Fail fast, before compiling, when batches or heads cannot be split as the mesh asks.

    mesh_shape: axis name -> size (a Mesh's .shape).
    """
    r = dict(rules)
    rows = batch_shards(mesh_shape, rules)
    for key, size in batch_sizes.items():
        if size % rows:
            raise ShardingError(f"{key}={size} is not divisible by the {rows} batch shards (data x fsdp) of mesh "
                                f"{dict(mesh_shape)}; make {key} a multiple of {rows} or change the mesh")
    heads = _axis_size(mesh_shape, r.get("heads"))
    if n_head % heads:
        devices = math.prod(mesh_shape.values())
        allowed = max(k for k in range(1, heads + 1) if n_head % k == 0 and devices % k == 0)
        raise ShardingError(f"model.n_head={n_head} is not divisible by the tensor axis size {heads}; "
                            f"use mesh.tensor={allowed} (or a size dividing {n_head})")
    mlp = _axis_size(mesh_shape, r.get("mlp"))
    if (4 * n_embd) % mlp:
        raise ShardingError(f"the MLP width {4 * n_embd} is not divisible by the tensor axis size {mlp}; "
                            f"change mesh.tensor or model.n_embd")


def spec_for(shape: Sequence[int], names: Sequence[str | None], rules, mesh_shape: Mapping[str, int]) -> P:
    """PartitionSpec for an array with logical dim names; a mesh axis that does not divide its
    dimension is dropped (that dimension is replicated), e.g. a 257-row vocab on 8 tensor shards."""
    axes = nn.logical_to_mesh_axes(tuple(names), rules)
    fixed = [a if a is None or dim % _axis_size(mesh_shape, a) == 0 else None for dim, a in zip(shape, axes)]
    return P(*fixed)


def param_shardings(boxed_params, rules, mesh: jax.sharding.Mesh):
    """NamedShardings for a boxed (logically partitioned) abstract param tree."""
    def one(box):
        return NamedSharding(mesh, spec_for(box.value.shape, box.names, rules, mesh.shape))
    return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """A sharding that puts a whole copy on every device of mesh."""
    return NamedSharding(mesh, P())


def _dict_keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(abstract_state, params_sharding, mesh: jax.sharding.Mesh):
    """TrainState of shardings: params as given; an optimizer-state leaf whose trailing dict keys
    name a parameter of the same shape (Adam's moments, muon's momentum) laid out like it; every
    other leaf (counts, Adafactor's factored rows, scalars) replicated. Matching by path and shape
    follows any optimizer's state: masked ones (frozen groups, muon's Adam part), whose structure
    optax's tree_map_params cannot follow, and factored ones, whose leaves are not param-shaped."""
    repl = replicated(mesh)
    is_sh = lambda x: isinstance(x, NamedSharding)
    shardings = {_dict_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_sharding, is_leaf=is_sh)[0]}
    shapes = {_dict_keys(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}

    def one(path, leaf):
        keys = _dict_keys(path)
        for i in range(len(keys)):
            if shapes.get(keys[i:]) == leaf.shape:
                return shardings[keys[i:]]
        return repl

    opt = jax.tree_util.tree_map_with_path(one, abstract_state.opt_state)
    return abstract_state.replace(step=repl, params=params_sharding, opt_state=opt, rng=repl)


def batch_sharding(mesh: jax.sharding.Mesh, rules, ndim: int, batch_dim: int = 0) -> NamedSharding:
    """Sharding of a token batch: its batch dim over the mesh axes of the 'batch' rule."""
    spec = [None] * ndim
    spec[batch_dim] = dict(rules).get("batch")
    return NamedSharding(mesh, P(*spec))


def local_rows(sharding: NamedSharding, global_shape: Sequence[int], batch_dim: int = 0) -> slice:
    """The contiguous range of batch rows that this process's devices hold."""
    index_map = sharding.addressable_devices_indices_map(tuple(global_shape))
    n = global_shape[batch_dim]
    spans = {idx[batch_dim].indices(n)[:2] for idx in index_map.values()}
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    if sum(e - s for s, e in spans) != hi - lo:
        raise ShardingError(f"this process's batch rows {sorted(spans)} are not contiguous; "
                            f"order the mesh so each process holds one block of the batch")
    return slice(lo, hi)


def abstract_on(shapes, shardings):
    """ShapeDtypeStructs of `shapes` (arrays or structs), each placed on its sharding in the matching tree:
    the target that restores or reads arrays straight onto a mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def global_batch(sharding: NamedSharding, global_shape: Sequence[int],
                 make_rows: Callable[[slice], np.ndarray], batch_dim: int = 0) -> jax.Array:
    """A global jax.Array from the rows this process holds, made by make_rows(slice of rows)."""
    rows = local_rows(sharding, global_shape, batch_dim)
    return jax.make_array_from_process_local_data(sharding, make_rows(rows), tuple(global_shape))


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh | None, rules):
    """Set mesh and activate rules (so logical constraints bind to mesh axes); no-op for mesh None."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def with_mesh(fn: Callable, mesh: jax.sharding.Mesh, rules) -> Callable:
    """fn run (and traced) inside mesh_context(mesh, rules).

    The wrapper also has `.lower(*args)` for ahead-of-time compilation and memory analysis.
    """
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with mesh_context(mesh, rules):
            return fn(*args, **kwargs)

    def lower(*args, **kwargs):
        with mesh_context(mesh, rules):
            return fn.lower(*args, **kwargs)

    call.lower = lower
    return call


def per_device_bytes(abstract_tree, shardings) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs laid out by shardings (the largest shard)."""
    total = 0
    for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(
            shardings, is_leaf=lambda v: isinstance(v, jax.sharding.Sharding))):
        total += math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
    return total


def describe(mesh: jax.sharding.Mesh) -> str:
    """'data=4 fsdp=2 tensor=1 over 8 cpu devices in 1 process' for logs."""
    axes = " ".join(f"{a}={n}" for a, n in mesh.shape.items())
    procs = len({d.process_index for d in mesh.devices.flat})
    return f"{axes} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices in {procs} process(es)"
