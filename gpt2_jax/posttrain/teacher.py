"""A distillation teacher: opened from a run directory, an export or a Hugging Face GPT-2 directory,
checked against the student (tokenizer, context, layer map, width) in one line each before anything
compiles, read onto the student's mesh, and the student's layer init copied from it."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import jax
import numpy as np

from gpt2_jax.checkpoint import export as export_lib
from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.config import ConfigError
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.weights import huggingface

COPIED = ("wte", "wpe", "ln_f")  # what a layer init copies besides the named blocks


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher's model config, where it came from, and how to read its params onto a mesh."""

    path: str
    kind: str  # run | export | hf
    step: int
    cfg: model_lib.GPT2Config
    tokenizer: dict  # its tokenizer spec
    read: Callable[[Any], Any]  # abstract params with shardings -> params

    def describe(self) -> dict:
        """Checkpoint meta: which teacher, which step."""
        return {"path": self.path, "kind": self.kind, "step": self.step, "n_layer": self.cfg.n_layer,
                "n_embd": self.cfg.n_embd}


def _fail(message: str) -> None:
    raise ConfigError(f"config key distill.teacher: {message}")


def open_teacher(path: str) -> Teacher:
    """The teacher at `path` (a run directory, an export, or a HF directory), its params not yet read."""
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        _fail(f"{p} does not exist; point it at a run directory (e.g. runs/default, written by "
              "`gpt2-jax train --config experiments/default.py`), an export or a Hugging Face GPT-2 directory")
    if (p / "config.json").is_file() and not (p / ckpt.CHECKPOINT_SUBDIR).is_dir() \
            and not (p / export_lib.EXPORT_FILE).is_file():
        return _open_hf(p)
    try:
        src = export_lib.open_source(p, "latest")
    except ckpt.CheckpointError as e:
        _fail(str(e))
    if src.task.get("kind") == "classify":
        _fail(f"{src.path} is a sequence classifier, not a language model; distill from a language model's run")
    return Teacher(str(src.path), src.kind, src.step, src.model_config, src.meta["tokenizer"], src.read_params)


def _open_hf(p: pathlib.Path) -> Teacher:
    cfg = huggingface.config_from_hf(json.loads((p / "config.json").read_text()))
    spec_file = p / huggingface.TOKENIZER_SPEC
    tok = json.loads(spec_file.read_text()) if spec_file.is_file() else {"kind": "gpt2_bpe", "vocab_size": 50257,
                                                                          "eos_id": 50256}

    def read(target):
        params = huggingface.load_hf_directory(p)[1]
        if "score" in params:
            _fail(f"{p} is a sequence classifier, not a language model")
        return jax.tree.map(lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding), params, target)

    return Teacher(str(p.resolve()), "hf", 0, cfg, tok, read)


def _identity(spec: dict) -> tuple:
    """What makes two tokenizers the same ids: kind, vocabulary, EOS and the files' contents (not paths)."""
    files = tuple(sorted(f.get("sha256", "") for f in spec.get("files", [])))
    return spec.get("kind"), spec.get("vocab_size"), spec.get("eos_id"), files if all(files) else ()


def check_student(teacher: Teacher, student: model_lib.GPT2Config, tokenizer_spec: dict, name: str) -> None:
    """One-line errors for a teacher the student cannot learn from: another tokenizer, context or vocabulary."""
    if _identity(teacher.tokenizer) != _identity(tokenizer_spec):
        _fail(f"{teacher.path} was trained with tokenizer {teacher.tokenizer.get('kind')} "
              f"({teacher.tokenizer.get('vocab_size')} ids), the student uses data.tokenizer={name} "
              f"({tokenizer_spec.get('vocab_size')} ids); set data.tokenizer to the teacher's")
    if teacher.cfg.vocab_size != student.vocab_size:
        _fail(f"{teacher.path} has vocab_size {teacher.cfg.vocab_size}, the student {student.vocab_size}; "
              "unset model.vocab_size (vocab_multiple may differ)")
    if teacher.cfg.n_positions != student.n_positions:
        _fail(f"{teacher.path} has context {teacher.cfg.n_positions}, the student model.n_positions="
              f"{student.n_positions}; set model.n_positions={teacher.cfg.n_positions}")


def check_layers(layers: tuple[int, ...], student: model_lib.GPT2Config, teacher: model_lib.GPT2Config,
                 key: str = "distill.student_init") -> None:
    """One-line errors for a layer map the student cannot take: indices out of range, another width."""
    bad = [i for i in layers if i >= teacher.n_layer]
    if bad:
        raise ConfigError(f"config key {key}: teacher block {bad[0]} does not exist (the teacher has "
                          f"{teacher.n_layer} blocks, 0..{teacher.n_layer - 1})")
    if len(layers) != student.n_layer:
        raise ConfigError(f"config key {key}: names {len(layers)} teacher blocks for a student of "
                          f"{student.n_layer}; name one per student block")
    if student.n_embd != teacher.n_embd or student.n_head != teacher.n_head:
        what = "narrower" if student.n_embd < teacher.n_embd else "wider" if student.n_embd > teacher.n_embd else \
            "split into other heads"
        raise ConfigError(f"config key {key}: the student ({student.n_embd} wide, {student.n_head} heads) is {what} "
                          f"than the teacher ({teacher.n_embd} wide, {teacher.n_head} heads), so its blocks cannot be "
                          "copied; use distill.student_init=random or the teacher's width and heads")


def spread_layers(n_student: int, n_teacher: int) -> tuple[int, ...]:
    """Teacher blocks evenly spread over the student's, ending at the last: (1, 3, 5) for 3 of 6."""
    return tuple(round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student))


def copy_layers(params: dict, teacher: dict, layers: tuple[int, ...], vocab_size: int) -> dict:
    """The student's params with the embeddings, ln_f and block i = teacher block layers[i] copied
    (the first vocab_size embedding rows: each side may pad its table to another multiple)."""
    cast = lambda like, x: jax.tree.map(lambda a, b: b.astype(a.dtype), like, x)
    out = dict(params)
    emb = params["wte"]["embedding"]
    out["wte"] = {"embedding": emb.at[:vocab_size].set(teacher["wte"]["embedding"][:vocab_size].astype(emb.dtype))}
    out["wpe"] = cast(params["wpe"], teacher["wpe"])
    out["ln_f"] = cast(params["ln_f"], teacher["ln_f"])
    for i, j in enumerate(layers):
        out[f"h_{i}"] = cast(params[f"h_{i}"], teacher[f"h_{j}"])
    return out


def teacher_model(teacher: model_lib.GPT2Config, student: model_lib.GPT2Config) -> model_lib.GPT2:
    """The teacher's module, computing in the student's dtype and attention, without dropout or remat."""
    return model_lib.GPT2(dataclasses.replace(teacher, dtype=student.dtype, attention=student.attention,
                                              remat="none", embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0))

