"""Weights-only exports, and one way to read weights from either a run directory or an export.

An export is a directory with `params/` (an Orbax pytree of the model parameters, bf16 or fp32,
no optimizer state), `tokenizer/` (copies of the tokenizer's files, if it has any) and
`export.json` (format, model shape, the run's config, tokenizer spec, step, metrics, task). It is
written under a temporary name and renamed into place, so a half-written export never exists.
A classifier's export keeps its head (`score`); LoRA adapters are merged into the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import heads
from gpt2_jax.model import lora as lora_lib

EXPORT_FILE = "export.json"
FORMAT = "gpt2_jax.export/1"
DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class Source:
    """Saved weights and what describes them: a run's checkpoint step, or an export."""

    path: pathlib.Path  # the run directory or the export directory
    kind: str  # 'run' | 'export'
    step: int
    config: dict  # the run's resolved config
    meta: dict  # tokenizer spec, model fields, metrics, versions

    @property
    def model_config(self) -> model_lib.GPT2Config:
        """The GPT2Config the weights were saved with."""
        return model_lib.GPT2Config(**self.meta["model"])

    @property
    def task(self) -> dict:
        """What the weights were trained for: {'kind': 'lm' | 'sft' | 'classify', ...} (checkpoint meta)."""
        return self.meta.get("task") or {"kind": "lm"}

    @property
    def lora(self) -> lora_lib.LoraSpec | None:
        """The run's LoRA adapters (None without, and for exports, whose weights hold them merged)."""
        spec = self.task.get("lora")
        return lora_lib.LoraSpec.from_dict(spec) if spec and self.kind == "run" else None

    def read_params(self, abstract_params: Any) -> Any:
        """The params, restored onto abstract_params' shardings and dtypes (ShapeDtypeStructs).

        A run's LoRA adapters are merged into the kernels unless abstract_params asks for them
        (a 'lora' entry, as LoRA's own tree); a head is read when abstract_params has its entry."""
        if self.kind == "export":
            return _restore_export_params(self.path, abstract_params)
        spec = self.lora
        merge = spec is not None and lora_lib.KEY not in abstract_params
        target = {**abstract_params, lora_lib.KEY: _adapter_target(self.model_config, spec, abstract_params)} \
            if merge else abstract_params
        manager = ckpt.make_manager(self.path, read_only=True)
        try:
            params = ckpt.restore_params(manager, self.step, target)
        finally:
            manager.close()
        if merge:
            params = dict(params)
            params = lora_lib.merge(params, params.pop(lora_lib.KEY), spec)
        return params


def _adapter_target(cfg: model_lib.GPT2Config, spec: lora_lib.LoraSpec, like: Any) -> Any:
    """Abstract adapters in fp32, whole on every device of the first leaf's mesh (they are small)."""
    first = jax.tree.leaves(like)[0].sharding
    where = NamedSharding(first.mesh, P()) if isinstance(first, NamedSharding) else first
    shapes = nn.meta.unbox(lora_lib.adapter_shapes(cfg, spec))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=where), shapes)


def open_source(path: str | os.PathLike, step: str | int = "latest") -> Source:
    """A run directory (step 'latest' | 'best' | int), one of its step directories, or an export."""
    p = pathlib.Path(path).expanduser().resolve()
    if (p / EXPORT_FILE).is_file():
        return _open_export(p)
    if p.name.isdigit() and p.parent.name == ckpt.CHECKPOINT_SUBDIR and step == "latest":
        p, step = p.parent.parent, int(p.name)  # run/checkpoints/<step>
    if not (p / ckpt.CHECKPOINT_SUBDIR).is_dir():
        what = "does not exist" if not p.exists() else "is neither a run directory (no checkpoints/) nor an export"
        raise ckpt.CheckpointError(f"{p} {what} (no {EXPORT_FILE}); pass a train.run_dir or a gpt2-jax export --out")
    manager = ckpt.make_manager(p, read_only=True)
    try:
        step = ckpt.resolve_step(manager, step)
        config, meta = ckpt.restore_json(manager, step)
    finally:
        manager.close()
    if "model" not in meta or "tokenizer" not in meta:
        raise ckpt.CheckpointError(f"checkpoint step {step} in {p} has no model/tokenizer in meta/metadata; "
                                   "it was not written by gpt2-jax train")
    return Source(p, "run", step, config, meta)


def _open_export(p: pathlib.Path) -> Source:
    try:
        info = json.loads((p / EXPORT_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ckpt.CheckpointError(f"export {p}: {EXPORT_FILE} is not valid JSON ({type(e).__name__}: {e}); "
                                   "export the run again") from None
    if info.get("format") != FORMAT:
        raise ckpt.CheckpointError(f"export {p}: format {info.get('format')!r}, expected {FORMAT!r}")
    tokenizer = dict(info["tokenizer"])
    if "files" in tokenizer:  # copied beside the export; stored relative to it
        tokenizer["files"] = [{**f, "path": str(p / f["path"])} for f in tokenizer["files"]]
    meta = {"tokenizer": tokenizer, "model": info["model"], "metrics": info.get("metrics", {}),
            "versions": info.get("versions", {}), "exported_from": info.get("source"),
            "task": info.get("task") or {"kind": "lm"}}
    return Source(p, "export", int(info["step"]), info["config"], meta)


def saved_param_shapes(cfg: model_lib.GPT2Config, task: dict) -> dict:
    """ShapeDtypeStructs of the weights a run or export of `task` (its meta) holds: GPT-2's, and a
    classifier's head (adapters excluded: they are merged when read)."""
    shapes = dict(model_lib.param_shapes(cfg))
    if task.get("kind") == "classify":
        shapes[heads.SCORE_KEY] = heads.score_shapes(cfg, int(task["num_labels"]))
    return shapes


def _restore_export_params(p: pathlib.Path, abstract_params: Any) -> Any:
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract_params)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            return checkpointer.restore(p / "params", args=ocp.args.PyTreeRestore(
                item=abstract_params, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # Orbax raises several types for damaged or mismatched files
        raise ckpt.CheckpointError(f"cannot read the params of export {p}: {type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:200]}") from None


def _copy_tokenizer(spec: dict, out: pathlib.Path) -> dict:
    if "files" not in spec or spec.get("packaged"):
        return spec
    (out / "tokenizer").mkdir()
    files = []
    for f in spec["files"]:
        name = pathlib.Path(f["path"]).name
        shutil.copyfile(f["path"], out / "tokenizer" / name)
        files.append({**f, "path": f"tokenizer/{name}"})
    return {**spec, "files": files}


def export(run: str | os.PathLike, out: str | os.PathLike, step: str | int = "best",
           dtype: str = "bfloat16") -> pathlib.Path:
    """Write the params of `step` of run (no optimizer state) in `dtype` + config + tokenizer to out."""
    if dtype not in DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = pathlib.Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new --out directory")
    src = open_source(run, step)
    if src.kind != "run":
        raise ckpt.CheckpointError(f"{src.path} is already an export; pass the run directory it came from")
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = saved_param_shapes(src.model_config, src.task)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=one), shapes)
    params = jax.tree.map(lambda x: x.astype(dtype), src.read_params(abstract))  # LoRA merged in fp32
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # left by an export of this pid that was killed
    partial.mkdir(parents=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(partial / "params", args=ocp.args.PyTreeSave(params))
    config = json.loads(json.dumps(src.config))
    config.setdefault("model", {})["param_dtype"] = dtype
    info = {"format": FORMAT, "step": src.step, "source": str(src.path), "dtype": dtype,
            "model": {**src.meta["model"], "param_dtype": dtype}, "config": config,
            "tokenizer": _copy_tokenizer(src.meta["tokenizer"], partial),
            "metrics": src.meta.get("metrics", {}), "versions": src.meta.get("versions", {}),
            "task": {**src.task, "lora": None, "lora_merged": src.task.get("lora")}}
    (partial / EXPORT_FILE).write_text(json.dumps(info, indent=2))
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(partial, out)
    return out
