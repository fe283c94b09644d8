"""Experiment configs: one base config, experiment files that override it, checked overrides.

An experiment file defines `get_config()` returning `base_config()` with the fields that differ
changed. `load_config(path, overrides)` runs it, applies `--config.a.b=value` overrides with type
checks, and validates: an unknown key, a wrong type or an impossible value raises `ConfigError`
with one line naming the key (and, for a typo, the closest valid key).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import pathlib
from typing import Any, Iterable

from ml_collections import config_dict

from gpt2_jax.data import labelled, sources, tokenizers
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.optim import groups
from gpt2_jax.optim import optimizers as optim
from gpt2_jax.optim import schedules
from gpt2_jax.parallel import profiling, sharding

SECTIONS = ("model", "data", "optim", "train", "mesh", "eval", "checkpoint", "task", "finetune")
TASKS = ("lm", "classify", "sft")
DTYPES = ("float32", "bfloat16", "float16")
INT_LIMIT = 2 ** 31 - 1  # steps, sizes and seeds become int32 inside jitted code


class ConfigError(ValueError):
    """A config problem the user can fix; the message is one line naming the key."""


def base_config() -> config_dict.ConfigDict:
    """Defaults for every key. Experiments override only what differs."""
    ph = config_dict.placeholder
    c = config_dict.ConfigDict()
    c.model = dict(
        preset="tiny",  # a key of model.PRESETS; fields below that are set override it
        n_layer=ph(int), n_head=ph(int), n_embd=ph(int), n_positions=ph(int),
        vocab_size=ph(int),  # default: the tokenizer's vocabulary
        vocab_multiple=1,  # round the embedding table up (e.g. 128: 50257 -> 50304)
        embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0,
        init_std=0.02, dtype="float32", param_dtype="float32",
        attention="auto",  # auto | xla | cudnn | blocked
        remat="none",  # none | full | dots
    )
    c.data = dict(
        source="shakespeare/plays",  # shakespeare[/...] | tfds:NAME[/CONFIG] | text:GLOB | jsonl:GLOB:FIELD
        text_field="text",  # the text feature of a tfds: source
        tokenizer="byte",  # byte | gpt2 | gpt2:/dir_or_file | sentencepiece:/path/to/x.model
        data_dir="~/tensorflow_datasets",
        train_split="train", eval_split="validation", test_split="test",
        # A text:/jsonl: glob without {split}: the share held out for each of validation and test
        # (data/holdout.py); 0: every split reads the same text and test is not held out.
        holdout_fraction=0.05,
        seq_len=256, batch_size=32, seed=0,
        prepare_workers=0,  # processes that tokenize a split (0: one per CPU core)
        prefetch=2,  # training batches built ahead of the device
    )
    c.optim = dict(
        name="adamw", lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        schedule="cosine", warmup_steps=100, min_lr_ratio=0.1, decay_steps=ph(int),
        accum_steps=1, label_smoothing=0.0,
    )
    c.train = dict(
        steps=1000, seed=0, run_dir="runs/default",
        log_every=50, eval_every=250, progress=True, tensorboard=True,
        sample_prompt="ROMEO:", sample_tokens=200, sample_temperature=0.8, sample_top_k=40,
        loss_chunk=0,  # > 0: cross-entropy this many positions at a time (no whole-batch fp32 logits)
        profile_steps="",  # "A:B": jax.profiler trace of steps A..B-1 into <run_dir>/profile
        # Stop when `metric` (val_loss, val_accuracy, ...; "" = off) has not improved by more than
        # min_delta for `patience` evaluations; mode auto: max for accuracy/F1, else min.
        early_stopping=dict(metric="", mode="auto", patience=3, min_delta=0.0),
    )
    # Devices per slice/node on each axis (-1: all remaining); dcn_*: slices/nodes on each axis.
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1,
                  rules="fsdp+tp")  # dp | fsdp | tp | fsdp+tp, or 'logical=axis,...' (parallel/sharding.py)
    c.eval = dict(batch_size=32, max_batches=ph(int))  # None: the whole split
    c.checkpoint = dict(every=500, max_to_keep=3, keep_best=1, async_save=True,
                        resume_from="latest",  # latest (the newest good step) | best | a step number
                        init_from="")  # an export or run dir whose params start a new run (fine-tuning)
    c.task = dict(
        kind="lm",  # lm | classify (data.source: jsonl:GLOB:TEXT,LABEL, tfds:, shakespeare/genre) |
                    # sft (data.source: jsonl:GLOB:PROMPT,COMPLETION)
        label_field="label",  # classify, tfds: sources: the label feature
        labels="",  # classify: label names in id order, comma-separated ("" = sorted names found in train)
        aux_lm_weight=0.0,  # classify: weight of the auxiliary language-model loss (GPT-1's lambda)
    )
    c.finetune = dict(
        freeze="",  # comma-separated globs over param paths (h_0/attn/qkv_kernel), or embeddings | body | blocks:A-B
        lr_multipliers="",  # PATTERN=FACTOR,...: e.g. score=10 trains a new head at 10x the body's lr
        lora=dict(rank=0, alpha=16.0, targets="qkv,attn_out,mlp"),  # rank 0: off; else base weights frozen
    )
    return c


def _load_experiment(path: str) -> config_dict.ConfigDict:
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found; pass an experiments/*.py file")
    spec = importlib.util.spec_from_file_location(f"_experiment_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        cfg = module.get_config()
    except AttributeError as e:
        if not hasattr(module, "get_config"):
            raise ConfigError(f"{path} defines no get_config(); it must return a ConfigDict") from None
        raise ConfigError(f"{path}: {_one_line(e)}") from None
    except TypeError as e:
        raise ConfigError(f"{path}: {_one_line(e)}") from None
    if not isinstance(cfg, config_dict.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, expected a ConfigDict")
    return cfg


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def flatten(tree: config_dict.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """{'section.key': value} of a ConfigDict or of its saved dict form."""
    out, nested = {}, config_dict.ConfigDict if isinstance(tree, config_dict.ConfigDict) else dict
    for k in tree.keys():
        v = tree[k]
        if isinstance(v, nested):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unknown_key_error(key: str, valid: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see gpt2_jax/config.py:base_config for valid keys"
    return ConfigError(f"unknown config key {key}{hint}")


def check_keys(cfg: config_dict.ConfigDict) -> None:
    """Raise ConfigError if cfg has a key that base_config() does not."""
    valid = flatten(base_config())
    for key in flatten(cfg):
        if key not in valid:
            raise _unknown_key_error(key, valid)


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text  # a bare string such as --config.data.tokenizer=gpt2


def _coerce(key: str, value: Any, want: type) -> Any:
    if value is None:
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {key} wants true/false, got {value!r}")
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e4 written for steps
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
        raise ConfigError(f"config key {key} wants {want.__name__}, got {shown} ({type(value).__name__})")
    if want is float and not math.isfinite(value):
        raise ConfigError(f"config key {key} wants a finite number, got {value!r}")
    if want is int and abs(value) > INT_LIMIT:
        raise ConfigError(f"config key {key}: {value} is out of range (at most {INT_LIMIT:,} in size)")
    return value


def apply_override(cfg: config_dict.ConfigDict, assignment: str) -> None:
    """Apply one `a.b=value` (or `--config.a.b=value`) override in place, type-checked."""
    text = assignment.removeprefix("--").removeprefix("config.")
    if "=" not in text:
        raise ConfigError(f"override {assignment!r} needs the form --config.section.key=value")
    key, raw = text.split("=", 1)
    parts = key.split(".")
    valid = flatten(base_config())
    if key not in valid:
        raise _unknown_key_error(key, valid)
    node = cfg
    for p in parts[:-1]:
        node = node[p]
    want = base_config()
    for p in parts[:-1]:
        want = want[p]
    wanted_type = want.get_type(parts[-1])
    value = _parse_value(raw)
    if value is None and wanted_type is str and want[parts[-1]] is not None:
        value = raw  # e.g. --config.model.remat=none: a choice named 'none', not a missing value
    elif value is None and want[parts[-1]] is not None:  # only unset-by-default keys take none
        raise ConfigError(f"config key {key} wants {wanted_type.__name__}, got none")
    value = _coerce(key, value, wanted_type)
    node[parts[-1]] = value


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key}: {message}")


def _choice(cfg, key: str, choices: Iterable[str]) -> None:
    section, name = key.split(".")
    value = cfg[section][name]
    choices = tuple(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(choices)}{hint}")


def _check_tokenizer(name: str) -> None:
    try:
        kind, path = tokenizers.split_name(name)
    except ValueError as e:
        raise ConfigError(f"config key data.tokenizer: {e}") from None
    if path and not pathlib.Path(path).expanduser().exists():
        fix = (f"train one with `gpt2-jax tokenizer train --source SOURCE --vocab-size N --out {path}`"
               if kind == "sentencepiece" else "point it at a .tiktoken file or a folder of GPT-2 BPE files")
        raise ConfigError(f"config key data.tokenizer: {path} not found; fix the path or {fix}")


def model_config(cfg: config_dict.ConfigDict, vocab_size: int | None = None) -> model_lib.GPT2Config:
    """The GPT2Config for cfg.model: preset, then explicit fields, then the tokenizer's vocab."""
    m = cfg.model
    _choice(cfg, "model.preset", model_lib.PRESETS)
    fields = dict(model_lib.PRESETS[m.preset])
    for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        if m[name] is not None:
            fields[name] = m[name]
    if "vocab_size" not in fields and vocab_size is not None:
        fields["vocab_size"] = vocab_size
    for name in ("vocab_multiple", "embd_dropout", "attn_dropout", "resid_dropout", "init_std",
                 "dtype", "param_dtype", "attention", "remat"):
        fields[name] = m[name]
    return model_lib.GPT2Config(**fields)


def validate(cfg: config_dict.ConfigDict) -> None:
    """Raise ConfigError naming the first impossible or unknown value in cfg."""
    check_keys(cfg)
    mc = model_config(cfg)
    for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        _check(getattr(mc, name) > 0, f"model.{name}", f"must be positive, got {getattr(mc, name)}")
    _check(mc.n_embd % mc.n_head == 0, "model.n_embd",
           f"{mc.n_embd} is not divisible by model.n_head={mc.n_head}")
    _check(cfg.model.vocab_multiple >= 1, "model.vocab_multiple", "must be >= 1")
    for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
        _check(0.0 <= cfg.model[name] < 1.0, f"model.{name}", f"must be in [0, 1), got {cfg.model[name]}")
    _choice(cfg, "model.dtype", DTYPES)
    _choice(cfg, "model.param_dtype", DTYPES)
    _choice(cfg, "model.attention", model_lib.ATTENTION_IMPLEMENTATIONS)
    _choice(cfg, "model.remat", model_lib.REMAT_POLICIES)
    _check(cfg.model.init_std > 0, "model.init_std", f"must be positive, got {cfg.model.init_std}")
    _check_tokenizer(cfg.data.tokenizer)
    d = cfg.data
    _check(d.seed >= 0, "data.seed", f"must be >= 0, got {d.seed}")
    _check(d.seq_len > 0, "data.seq_len", f"must be positive, got {d.seq_len}")
    _check(d.seq_len <= mc.n_positions, "data.seq_len",
           f"{d.seq_len} exceeds the model's context model.n_positions={mc.n_positions}")
    _check(d.batch_size > 0, "data.batch_size", f"must be positive, got {d.batch_size}")
    _check(d.prepare_workers >= 0, "data.prepare_workers", f"must be >= 0, got {d.prepare_workers}")
    _check(d.prefetch >= 1, "data.prefetch", f"must be >= 1, got {d.prefetch}")
    _check(0 <= d.holdout_fraction < 0.5, "data.holdout_fraction",
           f"must be in [0, 0.5) (0: no held-out parts), got {d.holdout_fraction}")
    if cfg.task.kind == "lm":  # a task's sources are checked with the task keys
        _check_source(d.source)
    o = cfg.optim
    _choice(cfg, "optim.name", optim.OPTIMIZERS)
    _choice(cfg, "optim.schedule", schedules.SCHEDULES)
    _check(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optim.b1", "b1 and b2 must be in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(o.accum_steps >= 1, "optim.accum_steps", f"must be >= 1, got {o.accum_steps}")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    _check(o.eps > 0, "optim.eps", f"must be positive, got {o.eps}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0: no clipping), got {o.grad_clip}")
    _check(0 <= o.label_smoothing < 1, "optim.label_smoothing", "must be in [0, 1)")
    t = cfg.train
    _check(t.steps >= 0, "train.steps", f"must be >= 0, got {t.steps}")
    _check(o.warmup_steps <= max(t.steps, 1), "optim.warmup_steps",
           f"{o.warmup_steps} exceeds train.steps={t.steps}")
    for name in ("log_every", "eval_every"):
        _check(t[name] > 0, f"train.{name}", f"must be positive, got {t[name]}")
    _check(t.loss_chunk >= 0, "train.loss_chunk", f"must be >= 0 (0: whole-batch logits), got {t.loss_chunk}")
    for name in ("seed", "sample_tokens", "sample_top_k"):
        _check(t[name] >= 0, f"train.{name}", f"must be >= 0, got {t[name]}")
    _check(t.sample_temperature >= 0, "train.sample_temperature",
           f"must be >= 0 (0: greedy), got {t.sample_temperature}")
    _check(not t.early_stopping.metric or bool(d.eval_split), "train.early_stopping.metric",
           f"{t.early_stopping.metric!r} needs validation metrics but data.eval_split is empty; set data.eval_split "
           "or train.early_stopping.metric=''")
    try:
        profiling.parse_steps(t.profile_steps)
    except ValueError as e:
        raise ConfigError(f"config key train.profile_steps: {e}") from None
    try:
        optim.optimizer_from_config(cfg)  # the schedule's own rules (warmup, decay_steps per kind)
    except ValueError as e:
        raise ConfigError(f"config key optim.schedule: {e}") from None
    _check(cfg.eval.batch_size > 0, "eval.batch_size", "must be positive")
    mb = cfg.eval.max_batches
    _check(mb is None or mb >= 1, "eval.max_batches", f"must be >= 1 (or none: the whole split), got {mb}")
    _check(cfg.checkpoint.every > 0, "checkpoint.every", "must be positive")
    _check(cfg.checkpoint.max_to_keep >= 1, "checkpoint.max_to_keep", "must be >= 1")
    _check(cfg.checkpoint.keep_best >= 0, "checkpoint.keep_best", f"must be >= 0, got {cfg.checkpoint.keep_best}")
    r = cfg.checkpoint.resume_from
    _check(r in ("latest", "best") or r.isdigit(), "checkpoint.resume_from",
           f"must be latest, best or a step, got {r!r}")
    for name in ("data", "fsdp", "tensor"):
        v = cfg.mesh[name]
        _check(v == -1 or v >= 1, f"mesh.{name}", f"must be -1 (all remaining devices) or >= 1, got {v}")
        _check(cfg.mesh[f"dcn_{name}"] >= 1, f"mesh.dcn_{name}", f"must be >= 1, got {cfg.mesh[f'dcn_{name}']}")
    _check([cfg.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) <= 1, "mesh.data",
           "at most one of mesh.data/fsdp/tensor may be -1")
    try:
        sharding.logical_rules(cfg.mesh.rules)
    except sharding.ShardingError as e:
        raise ConfigError(f"config key {e}") from None
    _validate_posttrain(cfg)


def _validate_posttrain(cfg: config_dict.ConfigDict) -> None:
    """The task, finetune and early-stopping keys."""
    _choice(cfg, "task.kind", TASKS)
    _check(cfg.task.aux_lm_weight >= 0, "task.aux_lm_weight", "must be >= 0")
    lora = cfg.finetune.lora
    _check(lora.rank >= 0, "finetune.lora.rank", f"must be >= 0 (0: no LoRA), got {lora.rank}")
    _check(lora.alpha > 0, "finetune.lora.alpha", f"must be positive, got {lora.alpha}")
    for key, check in (("finetune.lora.targets", lambda: lora_lib.parse_targets(lora.targets)),
                       ("finetune.lr_multipliers", lambda: groups.parse_multipliers(cfg.finetune.lr_multipliers)),
                       ("data.source", lambda: labelled.check_source(cfg.data.source, cfg.task.kind))):
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"config key {key}: {e}") from None
    es = cfg.train.early_stopping
    _check(not es.metric or es.metric.startswith("val_"), "train.early_stopping.metric",
           f"{es.metric!r} must be a validation metric such as val_loss or val_accuracy")
    _check(es.mode in ("auto", "min", "max"), "train.early_stopping.mode", f"{es.mode!r} is not auto, min or max")
    _check(es.patience >= 1, "train.early_stopping.patience", f"must be >= 1, got {es.patience}")
    _check(es.min_delta >= 0, "train.early_stopping.min_delta", f"must be >= 0, got {es.min_delta}")
    _check(not es.metric or cfg.data.eval_split, "train.early_stopping.metric", "needs data.eval_split")


def _check_source(source: str) -> None:
    try:
        canonical, split = sources.split_source(source)
    except ValueError as e:
        raise ConfigError(f"config key data.source: {e}") from None
    _check(split is None, "data.source", f"{source!r} pins split {split!r}; name the corpus only "
           f"({canonical!r}) and set data.train_split / eval_split / test_split")


def load_config(path: str, overrides: Iterable[str] = ()) -> config_dict.ConfigDict:
    """Run an experiment file's get_config(), apply overrides, validate; returns the config."""
    cfg = _load_experiment(path)
    check_keys(cfg)
    for assignment in overrides:
        apply_override(cfg, assignment)
    validate(cfg)
    return cfg


def to_json(cfg: config_dict.ConfigDict) -> str:
    """The config as indented JSON (saved beside every run and checkpoint)."""
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def from_dict(d: dict) -> config_dict.ConfigDict:
    """Rebuild a config saved by to_json, checked against the current base config."""
    cfg = base_config()
    flat = flatten(config_dict.ConfigDict(d))
    for key, value in flat.items():
        apply_override(cfg, f"{key}={value!r}")
    validate(cfg)
    return cfg
