"""Where mobiforge keeps what it downloads or materialises (weights, built-in datasets)."""

from __future__ import annotations

import os
from pathlib import Path


def mobiforge_home() -> Path:
    """``$MOBIFORGE_HOME``, default ``~/.cache/mobiforge``."""
    return Path(os.environ.get("MOBIFORGE_HOME", Path.home() / ".cache" / "mobiforge"))
