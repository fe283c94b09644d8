"""On-demand jax.profiler traces of a window of steps (`--profile-steps A:B`)."""

from __future__ import annotations

import jax


def parse_steps(text: str) -> tuple[int, int] | None:
    """'A:B' -> (A, B), the steps A..B-1 to trace; '' -> None. ValueError names the fix."""
    if not text:
        return None
    first, sep, last = text.partition(":")
    try:
        start, stop = int(first), int(last)
    except ValueError:
        start = stop = -1
    if not sep or start < 0 or stop <= start:
        raise ValueError(f"{text!r} is not A:B with 0 <= A < B (e.g. 10:15 traces steps 10 to 14)")
    return start, stop


class ProfileWindow:
    """Starts a jax.profiler trace before step `start` and stops it once step `stop - 1` is done."""

    def __init__(self, steps: tuple[int, int] | None, log_dir: str):
        self.steps, self.log_dir, self.active = steps, str(log_dir), False

    def before(self, step: int) -> None:
        """Call before running step `step`."""
        if self.steps and step == self.steps[0]:
            jax.profiler.start_trace(self.log_dir)
            self.active = True

    def after(self, step: int, outputs) -> None:
        """Call after dispatching step `step` with its outputs (waited for before the trace stops)."""
        if self.active and step == self.steps[1] - 1:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        """Stop a trace still running (a loop that ended inside the window)."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
