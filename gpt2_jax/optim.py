"""Optimizer and learning-rate schedules: AdamW with decoupled weight decay on >=2-D weights only,
global-norm clipping and gradient accumulation, all as one optax GradientTransformation."""

from __future__ import annotations

from typing import Any

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant", "wsd")
OPTIMIZERS = ("adamw",)


def _decay_tail(kind: str, peak_lr: float, min_ratio: float, steps: int, decay_steps: int) -> optax.Schedule:
    """The post-warmup part of a schedule, as a function of steps since warmup ended."""
    min_lr = min_ratio * peak_lr
    if kind == "cosine":
        return optax.cosine_decay_schedule(peak_lr, max(steps, 1), alpha=min_ratio)
    if kind == "linear":
        return optax.linear_schedule(peak_lr, min_lr, transition_steps=max(steps, 1))
    if kind == "constant":
        return optax.constant_schedule(peak_lr)
    # wsd: hold the peak, then decay linearly over the last `decay_steps`.
    stable = steps - decay_steps
    return optax.join_schedules(
        [optax.constant_schedule(peak_lr), optax.linear_schedule(peak_lr, min_lr, max(decay_steps, 1))],
        boundaries=[stable],
    )


def make_schedule(kind: str, peak_lr: float, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float = 0.1, decay_steps: int | None = None) -> optax.Schedule:
    """Learning rate as a function of the step: linear warmup from 0 to `peak_lr`, then `kind`.

    'cosine' and 'linear' decay to `min_lr_ratio * peak_lr` at `total_steps`; 'constant' holds the peak;
    'wsd' (warmup-stable-decay) holds the peak, then decays linearly to the minimum over the last
    `decay_steps` (default 20% of `total_steps`). Past `total_steps` the final value is held.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULES}")
    if total_steps < 0 or not 0 <= warmup_steps <= max(total_steps, 1):
        raise ValueError(f"need 0 <= warmup_steps <= total_steps; got {total_steps=}, {warmup_steps=}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1]; got {min_lr_ratio}")
    if decay_steps is not None and kind != "wsd":
        raise ValueError(f"decay_steps applies only to kind='wsd', not {kind!r}; leave it unset")
    total_steps = max(total_steps, warmup_steps)  # total_steps=0 (no training) still gets a valid schedule
    after_warmup = total_steps - warmup_steps
    if kind == "wsd":
        decay_steps = min(round(0.2 * total_steps), after_warmup) if decay_steps is None else decay_steps
        if not 0 <= decay_steps <= after_warmup:
            raise ValueError(f"wsd decay_steps={decay_steps} must be in [0, total_steps - warmup_steps]"
                             f" = [0, {after_warmup}]")
    tail = _decay_tail(kind, peak_lr, min_lr_ratio, after_warmup, decay_steps or 0)
    if warmup_steps == 0:
        return tail
    warmup = optax.linear_schedule(0.0, peak_lr, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, tail], boundaries=[warmup_steps])


def learning_rate_at(lr: float | optax.Schedule, step) -> Any:
    """The learning rate used at `step`, for logging (works inside jit)."""
    return lr(step) if callable(lr) else lr


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
                   accum_steps: int = 1) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW (decay masked to >= 2-D params), optionally accumulated.

    grad_clip <= 0 disables clipping. With accum_steps > 1 gradients are averaged over that many
    calls (optax.MultiSteps) and the update (clipping included) is applied on the last one; a
    schedule then counts optimizer updates, not micro-steps.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}; choose one of {OPTIMIZERS}")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1; got {accum_steps}")
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    tx = optax.chain(*parts)
    if accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum_steps).gradient_transformation()
    return tx
