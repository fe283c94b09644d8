"""Metric sinks for a run: one JSON object per line in metrics.jsonl, and TensorBoard scalars."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else str(f)  # JSON has no NaN/inf


class MetricsWriter:
    """Appends metrics to run_dir/metrics.jsonl and (optionally) TensorBoard event files."""

    def __init__(self, run_dir: str | pathlib.Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter  # imported lazily: it is slow to import

                self._tb = SummaryWriter(str(pathlib.Path(run_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        """Record metrics for step; keys get `prefix` (e.g. 'val_') in both sinks."""
        if not self.enabled:
            return
        row = {"step": int(step), **{f"{prefix}{k}": _plain(v) for k, v in metrics.items()}}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # e.g. a full disk: name the file (the error alone does not)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | pathlib.Path) -> list[dict[str, Any]]:
    """All rows of run_dir/metrics.jsonl (a half-written last line is skipped)."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
