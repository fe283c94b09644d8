"""LoRA: low-rank adapters on GPT-2's kernels, kept beside the base params and merged into them.

An adapted kernel is W + (alpha / rank) * A @ B, with A (in..., rank) and B (rank, out...) over
the kernel's input and output dimensions, B initialised to zero so the adapted model starts
exactly equal to the base. The adapters carry the kernel's logical axis names (A its input
axes, B its output axes), so they shard like the weights they adapt. `merge` is the whole
forward-pass change: the model code is untouched, and an export writes the merged weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.model.gpt2 import GPT2Config

KEY = "lora"  # the adapters' entry at the top of a param tree
# target name -> (module, kernel, number of input dims, logical names of the kernel)
TARGETS = {
    "qkv": ("attn", "qkv_kernel", 1, ("embed", None, "heads", "kv")),
    "attn_out": ("attn", "out_kernel", 2, ("heads", "kv", "embed")),
    "mlp_in": ("mlp", "fc_kernel", 1, ("embed", "mlp")),
    "mlp_out": ("mlp", "proj_kernel", 1, ("mlp", "embed")),
}
ALIASES = {"mlp": ("mlp_in", "mlp_out")}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Which kernels get adapters, their rank and alpha (the update is scaled by alpha / rank)."""

    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = ("qkv", "attn_out", "mlp_in", "mlp_out")

    @property
    def scale(self) -> float:
        """alpha / rank, the factor on A @ B."""
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        """JSON form, saved in checkpoint meta."""
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraSpec":
        """Inverse of to_dict."""
        return cls(int(d["rank"]), float(d["alpha"]), tuple(d["targets"]))


def parse_targets(text: str) -> tuple[str, ...]:
    """'qkv,attn_out,mlp' -> the target names (mlp = mlp_in + mlp_out); ValueError on an unknown one."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        names = ALIASES.get(item, (item,))
        for name in names:
            if name not in TARGETS:
                raise ValueError(f"LoRA target {item!r} is not one of {', '.join([*TARGETS, *ALIASES])}")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("LoRA needs at least one target kernel, e.g. qkv,attn_out,mlp")
    return tuple(out)


def _kernel_shape(cfg: GPT2Config, kernel: str) -> tuple[int, ...]:
    d, h, hd = cfg.n_embd, cfg.n_head, cfg.head_dim
    return {"qkv_kernel": (d, 3, h, hd), "out_kernel": (h, hd, d), "fc_kernel": (d, 4 * d),
            "proj_kernel": (4 * d, d)}[kernel]


def init_adapters(cfg: GPT2Config, spec: LoraSpec, rng: jax.Array) -> dict:
    """Boxed adapters {h_i: {module: {kernel: {'a', 'b'}}}}: A ~ N(0, 1/fan_in), B = 0."""
    dtype = jnp.dtype(cfg.param_dtype)
    out: dict[str, Any] = {}
    keys = jax.random.split(rng, cfg.n_layer * len(spec.targets))
    for i in range(cfg.n_layer):
        for j, target in enumerate(spec.targets):
            module, kernel, n_in, names = TARGETS[target]
            shape = _kernel_shape(cfg, kernel)
            fan_in = math.prod(shape[:n_in])
            a = jax.random.normal(keys[i * len(spec.targets) + j], (*shape[:n_in], spec.rank), dtype)
            a = a / math.sqrt(fan_in)
            b = jnp.zeros((spec.rank, *shape[n_in:]), dtype)
            out.setdefault(f"h_{i}", {}).setdefault(module, {})[kernel] = {
                "a": nn.LogicallyPartitioned(a, (*names[:n_in], None)),
                "b": nn.LogicallyPartitioned(b, (None, *names[n_in:])),
            }
    return out


def delta(a: jax.Array, b: jax.Array) -> jax.Array:
    """A @ B over the rank axis: the kernel-shaped low-rank update (before scaling)."""
    return jnp.tensordot(a, b, axes=1)


def merge(params: dict, adapters: dict, spec: LoraSpec) -> dict:
    """params with every adapted kernel replaced by W + scale * A @ B (in W's dtype)."""
    out = dict(params)
    for layer, modules in adapters.items():
        block = dict(out[layer])
        for module, kernels in modules.items():
            mod = dict(block[module])
            for kernel, ab in kernels.items():
                w = mod[kernel]
                mod[kernel] = w + (spec.scale * delta(ab["a"], ab["b"]).astype(jnp.float32)).astype(w.dtype)
            block[module] = mod
        out[layer] = block
    return out


def adapter_shapes(cfg: GPT2Config, spec: LoraSpec) -> dict:
    """Boxed ShapeDtypeStructs of the adapters (their logical names included), without allocating."""
    return jax.eval_shape(lambda key: init_adapters(cfg, spec, key), jax.random.key(0))


def count(cfg: GPT2Config, spec: LoraSpec) -> int:
    """Number of adapter parameters."""
    total = 0
    for target in spec.targets:
        _, kernel, n_in, _ = TARGETS[target]
        shape = _kernel_shape(cfg, kernel)
        total += spec.rank * (math.prod(shape[:n_in]) + math.prod(shape[n_in:]))
    return total * cfg.n_layer
