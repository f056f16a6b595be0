"""Where mobiforge keeps what it downloads or materialises (weights, built-in datasets)."""

from __future__ import annotations

import os
from pathlib import Path


def mobiforge_home() -> Path:
    """``$MOBIFORGE_HOME``, default ``~/.cache/mobiforge``."""
    return Path(os.environ.get("MOBIFORGE_HOME", Path.home() / ".cache" / "mobiforge"))


def shareable(path: str | os.PathLike[str]) -> str:
    """``path`` as a file meant to be shared (a report, a model card) may show it: relative paths as given, paths
    under the working directory relative to it, any other absolute path as ``.../<its last part>`` (a local
    absolute path says nothing to the reader and leaks the author's file layout)."""
    given = Path(path)
    if not given.is_absolute():
        return str(path)
    with_cwd = Path.cwd().resolve()
    resolved = given.resolve()
    if resolved.is_relative_to(with_cwd):
        return str(resolved.relative_to(with_cwd))  # "." for the working directory itself
    return f".../{given.name}"


def without_local_paths(text: str, *paths: str | os.PathLike[str]) -> str:
    """``text`` with each of ``paths`` (as given and resolved) written as ``shareable`` writes it."""
    for path in paths:
        for form in sorted({str(path), str(Path(path).resolve())}, key=len, reverse=True):
            if Path(form).is_absolute():
                text = text.replace(form, shareable(path))
    return text
