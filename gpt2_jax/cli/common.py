"""What every command module shares: usage errors, `--config.*` override parsing, mesh flags, the
optional JSON copy of a command's result, the XLA flags a GPU run gets and the host malloc settings
(both read from `env`)."""

from __future__ import annotations

import importlib.util
import json
from typing import Any


class UsageError(ValueError):
    """A command line that cannot run; printed as one `gpt2-jax: error:` line."""


def silent(*args, **kwargs) -> None:
    """A `print` that prints nothing (the voice of every process but 0)."""


def split_overrides(extra: list[str]) -> list[str]:
    """Collect `--config.a.b=v` / `--config.a.b v` pairs; anything else is a usage error."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise UsageError(f"unrecognized argument {arg!r}; config overrides look like --config.optim.lr=3e-4")
        if "=" not in arg:
            if i + 1 >= len(extra):
                raise UsageError(f"{arg} needs a value, e.g. {arg}=VALUE")
            arg, i = f"{arg}={extra[i + 1]}", i + 1
        out.append(arg)
        i += 1
    return out


def no_overrides(command: str, overrides: list[str]) -> None:
    """Refuse `--config.*` overrides for a command that reads no experiment config."""
    if overrides:
        raise UsageError(f"{command} takes no --config overrides")


def mesh_sizes(text: str) -> tuple[int, int, int]:
    """`--mesh DATA,FSDP,TENSOR` as three ints (-1: the rest of the devices)."""
    sizes = text.split(",")
    if len(sizes) != 3 or not all(s.strip().lstrip("-").isdigit() for s in sizes):
        raise UsageError(f"--mesh {text!r} needs three sizes DATA,FSDP,TENSOR, e.g. 1,8,1 (-1: the rest)")
    return tuple(int(s) for s in sizes)


def write_json(path: str | None, obj: Any) -> None:
    """Also write a command's result as indented JSON when `--json PATH` was given."""
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)


# XLA flags set for GPU runs (a flag already in XLA_FLAGS wins; GPT2_JAX_GPU_FLAGS=0 sets none).
# The latency-hiding scheduler overlaps fsdp/data-parallel collectives with compute (NVIDIA's JAX
# containers set it too); `gpt2-jax bench sweep --plan gpu` measures the step with and without.
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)
_CUDA_PLUGINS = ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12", "jax_cuda13_plugin", "jax_cuda12_plugin")


def keep_host_memory(env) -> bool:
    """On a CPU backend, have malloc reuse freed host memory (parallel/host_memory.py) unless
    GPT2_JAX_KEEP_HOST_MEMORY=0; before JAX starts a backend. True if applied."""
    from gpt2_jax.parallel import host_memory

    if env.get("GPT2_JAX_KEEP_HOST_MEMORY", "1") == "0" or jax_backend_is_gpu(env):
        return False
    return host_memory.reuse_freed_memory()


def jax_backend_is_gpu(env) -> bool:
    """Whether JAX will start on a GPU: JAX_PLATFORMS names one first, or unset with a CUDA plugin installed."""
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] in ("cuda", "gpu", "rocm")
    for name in _CUDA_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:
            continue
    return False


def add_gpu_xla_flags(env) -> list[str]:
    """Append GPU_XLA_FLAGS to env['XLA_FLAGS'] when JAX will run on a GPU (before JAX starts); the added ones."""
    if env.get("GPT2_JAX_GPU_FLAGS", "1") == "0" or not jax_backend_is_gpu(env):
        return []
    present = {flag.split("=")[0] for flag in env.get("XLA_FLAGS", "").split()}
    added = [flag for flag in GPU_XLA_FLAGS if flag.split("=")[0] not in present]
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *added]).strip()
    return added
