"""What a run shows while it trains: a tqdm bar on a terminal; plain lines where the output goes
to a file or a pipe (CI logs, SLURM output files), where a bar's carriage returns and cursor
moves would land as raw escapes; nothing with train.progress=false. Each evaluation is one line
in every case. The bar's rate and ETA, and the lines' ETA, count training time only: evaluations
and checkpoint saves are paused out of them."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from tqdm.auto import tqdm

# A task's metrics worth a glance beside the loss: metric key -> (name shown, format).
SHOWN = {"accuracy": ("acc", "{:.3f}"), "reward_mean": ("reward", "{:.3f}"), "kl": ("kl", "{:.2f}")}


def bars_wanted(enabled: bool, stream=None) -> bool:
    """Whether to draw tqdm bars: asked for, and their stream (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(enabled) and bool(getattr(stream, "isatty", lambda: False)())


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """The progress of steps initial..total: a bar, plain lines every `every` steps, or silence."""

    def __init__(self, total: int, initial: int, enabled: bool, echo: Callable[[str], None], tokens_per_step: int,
                 every: int):
        self.total, self.initial, self.echo, self.every = total, initial, echo, every
        self.tokens_per_step = tokens_per_step
        self.mode = "bar" if bars_wanted(enabled) else ("lines" if enabled else "off")
        self.bar = (tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True) if self.mode == "bar"
                    else None)
        self.started = time.perf_counter()
        self.paused_s = 0.0
        self.mark = (initial, 0.0)  # (step, training seconds) of the last evaluation: tokens/s since then

    def training_seconds(self) -> float:
        """Wall time since the start, less the paused time."""
        return time.perf_counter() - self.started - self.paused_s

    def update(self) -> None:
        """One step done."""
        if self.bar is not None:
            self.bar.update(1)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Keep the body's time (an evaluation, a checkpoint save) out of the rate and the ETA."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.paused_s += dt
            if self.bar is not None:  # tqdm's elapsed time and its last rate sample skip the pause
                self.bar.start_t += dt
                self.bar.last_print_t += dt

    def _eta(self, step: int) -> str:
        done = step - self.initial
        return clock(self.training_seconds() / done * (self.total - step)) if done > 0 else "?"

    def train_metrics(self, step: int, m: dict) -> None:
        """Show a logged step's loss and speed (and a task's headline metrics, SHOWN): in the bar, or
        as a line every `every` steps."""
        shown = {name: fmt.format(m[key]) for key, (name, fmt) in SHOWN.items() if key in m}
        if self.bar is not None:
            mfu = {"mfu": f"{100 * m['mfu']:.1f}%"} if "mfu" in m else {}
            self.bar.set_postfix(loss=f"{m['loss']:.3f}", **shown, tok_s=f"{m.get('tokens_per_s', 0):.0f}", **mfu)
        elif self.mode == "lines" and step % self.every == 0:
            extra = "".join(f", {name} {value}" for name, value in shown.items())
            self.echo(f"step {step}/{self.total}: loss {m['loss']:.4f}{extra}, {m.get('tokens_per_s', 0):,.0f} "
                      f"tokens/s, elapsed {clock(time.perf_counter() - self.started)}, eta {self._eta(step)}")

    def evaluated(self, step: int, val: dict, note: str = "") -> None:
        """The one line of an evaluation: step, validation loss and bits per byte, the training
        tokens/s since the previous evaluation, and the wall time since the start."""
        seconds = self.training_seconds()
        steps = step - self.mark[0]
        rate = self.tokens_per_step * steps / max(seconds - self.mark[1], 1e-9)
        self.mark = (step, seconds)
        scores = "".join(f", {name} {val[key]:.4f}" for key, name in (
            ("val_bpb", "bits/byte"), ("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1"),
            ("val_reward", "reward"), ("val_reward_reference", "reference's reward"), ("val_kl", "KL")) if key in val)
        self.line(f"step {step}/{self.total}: val loss {val['val_loss']:.4f}{scores}{note}, "
                  f"{rate:,.0f} tokens/s, elapsed {clock(time.perf_counter() - self.started)}")

    def line(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self.bar is None:
            self.echo(text)
            return
        with tqdm.external_write_mode():
            self.echo(text)

    def close(self) -> None:
        """Close the bar (if any)."""
        if self.bar is not None:
            self.bar.close()
