"""The ``mobiforge`` logger: library code reports what it decided through it, never by printing.

Users see one-line errors and the progress their reporter draws; maintainers ask for more with ``--debug`` or
``MOBIFORGE_DEBUG=1``, which turns on this logger's debug records and the full traceback behind a one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Iterator

logger = logging.getLogger("mobiforge")
DEBUG_ENV = "MOBIFORGE_DEBUG"

# Warnings addressed to the authors of a dependency, not to our users: torch warns, once per process, that torchao
# 0.18 registers an Enum with pytree (printed by every export, quantize and ship run).
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given, or ``MOBIFORGE_DEBUG`` set to anything but empty or 0."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


_command = ["the Python API"]  # what started this process's work, recorded in each run folder it makes


def set_command(argv: list[str]) -> None:
    """Called by the CLI with its arguments (run folders record the command that made them)."""
    _command[0] = shlex.join(["mobiforge", *argv])


def command() -> str:
    return _command[0]


# Libraries that log warnings a user cannot act on: coremltools names, at import, every Apple framework it cannot
# load on Linux, and the scikit-learn and torch versions it was not tested with
QUIET_LOGGERS = ("coremltools",)


def configure(debug: bool) -> None:
    """Send the logger's records to stderr: warnings and above, or everything with ``debug``."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Native libraries' own log lines (ExecuTorch's runtime prints ``[threadpool.cpp:66] Resetting threadpool``
    and ``[cpuinfo_utils.cpp]`` lines straight to file descriptor 2) are dropped while the block runs, unless debug
    output was asked for: the output a user reads is theirs. Python exceptions still carry their messages."""
    if debug_requested():
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
