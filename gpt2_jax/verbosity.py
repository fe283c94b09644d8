"""How much the libraries underneath say. By default gpt2_jax hides their chatter: absl warnings
(Orbax's read-only notices, TFDS's folder checks) and TFDS's banners and progress bars while it
builds a dataset. `gpt2-jax ... --verbose`, or `set_verbose(True)` in a notebook, shows all of it.

The lowest stage: any stage may import it; it imports nothing of gpt2_jax.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator

# absl's logger carries what Orbax and TFDS log through absl.logging.
THIRD_PARTY_LOGGERS = ("absl",)
_state = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False, the default) third-party warnings and banners from now on."""
    _state["verbose"] = bool(verbose)
    level = logging.NOTSET if verbose else logging.ERROR
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def is_verbose() -> bool:
    """Whether third-party chatter is shown."""
    return _state["verbose"]


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Within: third-party loggers report errors only, unless verbose; their levels come back after."""
    if is_verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Within: also drop what is printed to stdout/stderr (TFDS's banners and bars), unless verbose.
    Wrap only third-party calls: our own one-line errors are raised, never printed, inside."""
    with quiet_logs():
        if is_verbose():
            yield
            return
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
