"""Optimizers: AdamW with decoupled weight decay on >=2-D weights only, global-norm clipping and
gradient accumulation, all as one optax GradientTransformation; built from a config's optim section."""

from __future__ import annotations

from typing import Any

import jax
import optax

from gpt2_jax.optim import groups, schedules

OPTIMIZERS = ("adamw",)


def _leaf_name(path) -> str:
    """The last dict key on a pytree path ('' if none); boxes add attribute keys after it."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def decay_mask(params) -> Any:
    """Pytree of bools, True where weight decay applies: >= 2-D kernels and embeddings.

    Biases and LayerNorm params are excluded by name too, because the fused qkv bias is 3-D.
    Works on plain or boxed (nn.Partitioned) trees, and on ShapeDtypeStruct trees.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, x: len(x.shape) >= 2 and not _leaf_name(path).endswith(("bias", "scale")), params)


def make_optimizer(kind: str = "adamw", lr: float | optax.Schedule = 3e-4, b1: float = 0.9,
                   b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1, grad_clip: float = 1.0,
                   accum_steps: int = 1, labels: Any = None) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW (decay masked to >= 2-D params), optionally accumulated.

    grad_clip <= 0 disables clipping. With accum_steps > 1 gradients are averaged over that many
    calls (optax.MultiSteps) and the update (clipping included) is applied on the last one; a
    schedule then counts optimizer updates, not micro-steps. `labels` (groups.param_labels) splits
    AdamW by parameter group: frozen leaves get no update and no state, each other group its own
    lr multiplier; clipping stays global (frozen gradients count as zero).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}; choose one of {OPTIMIZERS}")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1; got {accum_steps}")
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    adamw = lambda rate: optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    parts.append(adamw(lr) if labels is None else groups.partitioned(labels, adamw, lr))
    tx = optax.chain(*parts)
    if accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum_steps).gradient_transformation()
    return tx


def optimizer_from_config(cfg, labels: Any = None) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """(schedule, optax optimizer) for a validated config's optim section over cfg.train.steps;
    `labels`: the parameter groups (groups.param_labels), None for one group of everything."""
    o = cfg.optim
    schedule = schedules.make_schedule(o.schedule, o.lr, cfg.train.steps, o.warmup_steps,
                                       min_lr_ratio=o.min_lr_ratio, decay_steps=o.decay_steps)
    optimizer = make_optimizer(lr=schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                               grad_clip=o.grad_clip, labels=labels)
    return schedule, optimizer
