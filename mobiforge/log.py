"""The ``mobiforge`` logger: library code reports what it decided through it, never by printing.

Users see one-line errors and the progress their reporter draws; maintainers ask for more with ``--debug`` or
``MOBIFORGE_DEBUG=1``, which turns on this logger's debug records and the full traceback behind a one-line error.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("mobiforge")
DEBUG_ENV = "MOBIFORGE_DEBUG"


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given, or ``MOBIFORGE_DEBUG`` set to anything but empty or 0."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def configure(debug: bool) -> None:
    """Send the logger's records to stderr: warnings and above, or everything with ``debug``."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
