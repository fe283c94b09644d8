"""Validation: `validate(cfg)` raises ConfigError naming the first impossible value; `model_config`."""

from __future__ import annotations

import difflib
import pathlib
from typing import Iterable

from ml_collections import config_dict

from gpt2_jax.config import distill
from gpt2_jax.config import reward as reward_section
from gpt2_jax.config.base import DTYPES, TASKS, TOKEN_TASKS, ConfigError
from gpt2_jax.config.keys import check_keys
from gpt2_jax.data import labelled, sources, tokenizers
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.model import lora as lora_lib
from gpt2_jax.optim import groups
from gpt2_jax.optim import optimizers as optim
from gpt2_jax.optim import schedules
from gpt2_jax.parallel import profiling, sharding


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
    if cfg.task.kind in TOKEN_TASKS:  # a task's sources are checked with the task keys
        _check_source(d.source)
    o = cfg.optim
    _choice(cfg, "optim.name", optim.OPTIMIZERS)
    _choice(cfg, "optim.schedule", schedules.SCHEDULES)
    _check(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _check(o.name != "schedule_free_adamw" or o.schedule == "constant", "optim.schedule",
           f"{o.schedule!r} decays the learning rate, which schedule_free_adamw replaces by averaging; "
           "set optim.schedule=constant (warmup_steps still applies)")
    _check(o.adam_lr is None or o.adam_lr > 0, "optim.adam_lr", f"must be positive, got {o.adam_lr}")
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
    _check(t.row_groups >= 0, "train.row_groups", f"must be >= 0 (0: auto), got {t.row_groups}")
    _check(d.batch_size % max(t.row_groups, 1) == 0, "train.row_groups",
           f"{t.row_groups} does not divide data.batch_size={d.batch_size}")
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
    if cfg.task.kind == "reward":
        reward_section.check(cfg, mc.n_positions, lambda key, message: _check(False, key, message))
    distill.validate(cfg, mc.n_layer)


def _validate_posttrain(cfg: config_dict.ConfigDict) -> None:
    """The task, finetune and early-stopping keys."""
    _choice(cfg, "task.kind", TASKS)
    _check(cfg.task.aux_lm_weight >= 0, "task.aux_lm_weight", "must be >= 0")
    lora = cfg.finetune.lora
    _check(lora.rank >= 0, "finetune.lora.rank", f"must be >= 0 (0: no LoRA), got {lora.rank}")
    _check(lora.alpha > 0, "finetune.lora.alpha", f"must be positive, got {lora.alpha}")
    for key, check in (("finetune.lora.targets", lambda: lora_lib.parse_targets(lora.targets)),
                       ("finetune.lr_multipliers", lambda: groups.parse_multipliers(cfg.finetune.lr_multipliers)),
                       ("data.source", lambda: labelled.check_source(
                           cfg.data.source, "lm" if cfg.task.kind in TOKEN_TASKS else cfg.task.kind))):
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
