"""Early stopping: stop when a validation metric has not improved for `patience` evaluations.

An evaluation improves on the best so far when its value is lower (mode 'min') or higher ('max')
by more than min_delta; the first evaluation sets the best. After `patience` evaluations in a row
without improvement the run stops. The state is plain JSON, saved in each checkpoint's meta, so
a resumed run counts on from where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# Metrics where larger is better; every other one (loss, ppl, bpb) is minimised.
MAXIMIZED = ("accuracy", "macro_f1", "f1", "recall")


def resolve_mode(metric: str, mode: str) -> str:
    """'min' or 'max' ('auto': max for accuracy/F1/recall metrics, else min)."""
    if mode != "auto":
        return mode
    return "max" if metric.removeprefix("val_").startswith(MAXIMIZED) else "min"


@dataclasses.dataclass
class EarlyStopping:
    """The patience rule over successive evaluations of one metric."""

    metric: str
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_step: int | None = None

    def improved(self, value: float) -> bool:
        """Whether value beats the best so far by more than min_delta."""
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, step: int, metrics: dict[str, Any]) -> bool:
        """Record one evaluation; True when the run should stop now."""
        if self.metric not in metrics:
            raise ValueError(f"train.early_stopping.metric {self.metric!r} is not reported by evaluation "
                             f"(it reports {', '.join(sorted(k for k in metrics if isinstance(metrics[k], float)))})")
        value = float(metrics[self.metric])
        if math.isfinite(value) and self.improved(value):
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.stopped_step = step
            return True
        return False

    def reason(self) -> str:
        """One line: why the run stopped (or that it did not)."""
        if self.stopped_step is None:
            return "not stopped"
        better = "below" if self.mode == "min" else "above"
        return (f"{self.metric} did not go {better} its best {self.best:.6g} (step {self.best_step}) by more than "
                f"{self.min_delta:g} in {self.patience} evaluation(s)")

    def state(self) -> dict:
        """JSON state (saved in checkpoint meta)."""
        return dataclasses.asdict(self)

    def summary(self) -> dict:
        """What results.json says: whether and at which step the run stopped, why, and the best step."""
        return {"metric": self.metric, "mode": self.mode, "patience": self.patience, "min_delta": self.min_delta,
                "stopped": self.stopped_step is not None, "stopped_step": self.stopped_step,
                "best_step": self.best_step, "best_value": self.best, "reason": self.reason()}


def from_config(es_cfg, saved: dict | None = None) -> EarlyStopping | None:
    """The EarlyStopping of a config's train.early_stopping section (None when metric is empty),
    continuing from `saved` state when it is for the same rule."""
    if not es_cfg.metric:
        return None
    rule = EarlyStopping(es_cfg.metric, resolve_mode(es_cfg.metric, es_cfg.mode), es_cfg.patience, es_cfg.min_delta)
    if saved and all(saved.get(k) == getattr(rule, k) for k in ("metric", "mode", "patience", "min_delta")):
        return EarlyStopping(**saved)
    return rule
