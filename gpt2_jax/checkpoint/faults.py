"""How a checkpoint fault becomes one line: damaged steps, saves that could not be written, and
the third-party noise around them (tracebacks of errors that are re-raised and reported anyway)."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import re
import shutil
import sys

TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix of a step being written
# Orbax/tensorstore errors that mean the bytes on disk are not what was written.
_DAMAGE_SIGNS = ("DATA_LOSS", "Error decoding", "decompress", "checksum")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the run, step and the fix."""


class DamagedCheckpoint(CheckpointError):
    """A step whose files are not what was saved (cut short, missing, garbage); `.step`, `.file`."""

    def __init__(self, directory: pathlib.Path, step: int, file: str, problem: str):
        self.step, self.file = step, file
        super().__init__(f"checkpoint step {step} in {directory} is damaged: {file} {problem}")


class CheckpointWriteError(CheckpointError):
    """A save that could not be written (disk full, permissions); the message names the directory."""


def one_line(e: BaseException) -> str:
    """'Type: message' on one line, at most ~200 characters of the message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _disk_full(e: BaseException | None) -> bool:
    while e is not None:
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def write_error(where: pathlib.Path, e: BaseException, step: int | None = None) -> CheckpointWriteError:
    """One line: which step (default: the newest unfinished one on disk) could not be written where
    and why, what is kept, and what to do."""
    where = pathlib.Path(where)
    unfinished = sorted(int(p.name.split(".")[0]) for p in where.glob(f"*{TMP_MARK}*") if p.name.split(".")[0].isdigit())
    good = sorted(int(p.name) for p in where.iterdir() if p.name.isdigit()) if where.is_dir() else []
    step = step if step is not None else unfinished[-1] if unfinished else None
    what = f"checkpoint step {step}" if step is not None else "a checkpoint"
    full = _disk_full(e)
    cause = (f"no space left on device ({shutil.disk_usage(where).free / 2**20:.1f} MiB free)" if full
             else one_line(e))
    kept = f"earlier steps are intact (latest: step {good[-1]})" if good else "no earlier step was saved"
    fix = "free space or move train.run_dir to a larger disk" if full else "fix that"
    return CheckpointWriteError(f"{what} could not be written to {where}: {cause}; the unfinished step is never "
                                f"read and {kept}; {fix}, then run the same command again to resume")


def damage(where: pathlib.Path, step: int, e: BaseException) -> DamagedCheckpoint | None:
    """A DamagedCheckpoint naming the file when Orbax failed because bytes on disk do not decode."""
    while e is not None:
        text = " ".join(str(e).split())
        if any(sign in text for sign in _DAMAGE_SIGNS):
            files = [f for f in re.findall(r'local file "([^"]+)"', text) if not f.endswith("/")]  # not the db dir
            arrays = re.findall(r'Error reading "([^"/]+)[^"]*" in OCDBT', text)
            root = pathlib.Path(where) / str(step)
            rel = os.path.relpath(files[-1], root) if files else f"state (array {arrays[0]})" if arrays else "state"
            detail = ": ".join(re.sub(r"\s*\[tensorstore_spec.*$", "", text).split(": ")[-2:])[:160]
            return DamagedCheckpoint(where, step, rel, f"does not decode ({detail})")
        e = e.__cause__ or e.__context__
    return None


def quiet_closed_loop_callbacks() -> None:
    """Drop the 'Event loop is closed' tracebacks tensorstore's callbacks print after a failed restore
    has already been reported (they come through sys.unraisablehook); anything else still prints."""
    previous = sys.unraisablehook
    if getattr(previous, "_gpt2_jax", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook._gpt2_jax = True
    sys.unraisablehook = hook


class _ReraisedSaveErrors(logging.Filter):
    """Drops the log records (with tracebacks) of a failed background save: Orbax's own, and asyncio's
    'Task exception was never retrieved' for its write tasks. `wait_until_finished` re-raises that
    error, and `save`/`finish` report it in one line."""

    SIGNS = ("raised an exception", "in background save thread", "Save Finalize thread")
    ORBAX_NAMES = ("_SignalingThread", "background save thread", "Save Finalize thread", "Handler Commit")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.name == "asyncio":
            return not ("never retrieved" in str(record.msg) and "orbax" in record.getMessage())
        text = record.getMessage()
        # Orbax logs some through absl from its own threads, where the caller's path is not Orbax's.
        from_orbax = "orbax" in record.pathname or any(name in text for name in self.ORBAX_NAMES)
        return not (from_orbax and any(sign in text for sign in self.SIGNS))


def quiet_reraised_save_errors() -> None:
    """Install `_ReraisedSaveErrors` on the absl logger Orbax logs to and on asyncio's (once)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ReraisedSaveErrors) for f in logger.filters):
            logger.addFilter(_ReraisedSaveErrors())
