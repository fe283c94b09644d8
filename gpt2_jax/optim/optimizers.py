"""Optimizers: AdamW (decoupled weight decay on >= 2-D weights only), Muon, Lion, Adafactor and
schedule-free AdamW, each behind global-norm clipping and gradient accumulation as one optax
GradientTransformation; built from a config's optim section.

Muon (optax.contrib.muon, as in the modded-nanogpt speedrun) orthogonalizes the momentum of the
blocks' matrices: q, k and v each as its own d x d matrix, the attention output as (heads*hd) x d,
both MLP kernels; the embeddings (tied to the LM head), biases, gains, a classification head and
LoRA adapters take Adam at `adam_lr`.

Schedule-free AdamW (optax.contrib.schedule_free, Defazio et al. 2024) trains at y but is meant to
be evaluated at the average x = (y - (1 - b1) z) / b1 it keeps implicitly; `eval_params` gives
the point to evaluate, sample and export for every optimizer (the params themselves for the others).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers

from gpt2_jax.optim import groups, schedules

OPTIMIZERS = ("adamw", "muon", "lion", "adafactor", "schedule_free_adamw")


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


def muon_dimensions(params) -> Any:
    """Per leaf: the optax MuonDimensionNumbers of a block matrix that Muon orthogonalizes, else
    None (Adam). Works on plain or boxed trees; a leaf is recognised by its name in the GPT-2 tree."""
    dims = {"qkv_kernel": MuonDimensionNumbers(0, (2, 3)),  # (d, 3, h, hd): q, k, v apart (axis 1 batched)
            "out_kernel": MuonDimensionNumbers((0, 1), 2),  # (h, hd, d)
            "fc_kernel": MuonDimensionNumbers(0, 1), "proj_kernel": MuonDimensionNumbers(0, 1)}

    def spec(path, x):
        names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        in_block = any(n.startswith("h_") for n in names) and not any(n.startswith("lora") for n in names)
        return dims.get(names[-1]) if names and in_block else None
    return jax.tree_util.tree_map_with_path(spec, params)


def _base_optimizer(kind: str, rate, b1: float, b2: float, eps: float, weight_decay: float,
                    adam_rate) -> optax.GradientTransformation:
    """One optimizer kind at learning rate `rate` (a float or schedule), before clipping and groups."""
    if kind == "adamw":
        return optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    if kind == "muon":
        return optax.contrib.muon(rate, beta=b1 if b1 > 0 else 0.95, eps=eps, weight_decay=weight_decay,
                                  adam_b1=b1, adam_b2=b2, adam_learning_rate=adam_rate,
                                  muon_weight_dimension_numbers=muon_dimensions)
    if kind == "lion":
        return optax.lion(rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
    if kind == "adafactor":  # factored second moments, no first moment; lr absolute, as Adam's
        return optax.adafactor(rate, multiply_by_parameter_scale=False, eps=1e-30,
                               weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)
    if kind == "schedule_free_adamw":  # AdamW without momentum inside the schedule-free average; b1 averages
        base = optax.chain(optax.scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
                           optax.add_decayed_weights(weight_decay, mask=decay_mask), optax.scale_by_learning_rate(rate))
        return optax.contrib.schedule_free(base, learning_rate=rate, b1=b1)
    raise ValueError(f"unknown optimizer kind {kind!r}; choose one of {OPTIMIZERS}")


def eval_params(opt_state, params) -> Any:
    """The params to evaluate, sample and export: schedule-free AdamW's average x = (y - (1-b1) z) / b1
    where its state holds z (per parameter group; frozen leaves stay as they are), else params."""
    is_sf = lambda s: isinstance(s, optax.contrib.ScheduleFreeState)  # noqa: E731
    for s in (s for s in jax.tree.leaves(opt_state, is_leaf=is_sf) if is_sf(s)):
        masked = lambda z: isinstance(z, optax.MaskedNode)  # noqa: E731 -- a leaf of another group
        params = jax.tree.map(lambda z, y: y if masked(z) else ((y - (1 - s.b1) * z) / s.b1).astype(y.dtype),
                              s.z, params, is_leaf=masked)
    return params


def make_optimizer(kind: str = "adamw", lr: float | optax.Schedule = 3e-4, b1: float = 0.9,
                   b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1, grad_clip: float = 1.0,
                   accum_steps: int = 1, labels: Any = None, adam_lr_ratio: float = 1.0) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> the optimizer `kind` (AdamW: decay masked to >= 2-D params),
    optionally accumulated.

    grad_clip <= 0 disables clipping. With accum_steps > 1 gradients are averaged over that many
    calls (optax.MultiSteps) and the update (clipping included) is applied on the last one; a
    schedule then counts optimizer updates, not micro-steps. `labels` (groups.param_labels) splits
    the optimizer by parameter group: frozen leaves get no update and no state, each other group its
    own lr multiplier; clipping stays global (frozen gradients count as zero). Muon's Adam-handled
    leaves run at lr * adam_lr_ratio (the same schedule shape).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}; choose one of {OPTIMIZERS}")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1; got {accum_steps}")
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []

    def build(rate):
        adam_rate = ((lambda step: rate(step) * adam_lr_ratio) if callable(rate) else rate * adam_lr_ratio)
        return _base_optimizer(kind, rate, b1, b2, eps, weight_decay, adam_rate)
    parts.append(build(lr) if labels is None else groups.partitioned(labels, build, lr))
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
    adam_lr_ratio = 1.0 if o.adam_lr is None else o.adam_lr / o.lr
    optimizer = make_optimizer(o.name, lr=schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                               grad_clip=o.grad_clip, labels=labels, adam_lr_ratio=adam_lr_ratio)
    return schedule, optimizer
