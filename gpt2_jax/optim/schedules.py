"""Learning-rate schedules: linear warmup, then cosine, linear, constant or warmup-stable-decay."""

from __future__ import annotations

from typing import Any

import optax

SCHEDULES = ("cosine", "linear", "constant", "wsd")


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
