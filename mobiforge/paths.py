"""Where mobiforge keeps what it downloads or materialises (weights, built-in datasets)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobiforge.config import BUILTIN_DATASETS


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


def shareable_command(command: str) -> str:
    """A shell command with each absolute path argument (or ``--flag=PATH``) written as ``shareable`` writes it."""
    words = []
    for word in shlex.split(command):
        flag, equals, value = word.partition("=") if word.startswith("--") else ("", "", word)
        words.append(f"{flag}{equals}{shareable(value)}" if Path(value).is_absolute() else word)
    return shlex.join(words)


def without_local_paths(text: str, *paths: str | os.PathLike[str]) -> str:
    """``text`` with each of ``paths`` (as given and resolved) written as ``shareable`` writes it."""
    for path in paths:
        for form in sorted({str(path), str(Path(path).resolve())}, key=len, reverse=True):
            if Path(form).is_absolute():
                text = text.replace(form, shareable(path))
    return text


# The fields of an export report or a ship state that hold local paths; a shared file holds them relative.
RUN_FILE = "run.json"  # in every run folder: the kind of run that made it and the command

PATH_FIELDS = ("path", "checkpoint", "out", "run_dir", "artifact", "data", "teacher", "runs_dir", "cache_dir",
               "init_from")  # fmt: skip
NOT_PATHS = (*BUILTIN_DATASETS, "auto", "none")  # values of those fields that name something else


def portable_record(record: Any, folder: Path) -> Any:
    """``record`` (JSON-like) with every path field (``PATH_FIELDS``) relative to ``folder``: files meant to travel
    (an artifact's report, ship's state, a run's config) hold no absolute path of the machine that wrote them."""
    return _map_paths(record, lambda path: relative_to(path, folder))


def local_record(record: Any, folder: Path) -> Any:
    """``portable_record`` undone: every relative path field read as relative to ``folder``, then resolved."""
    return _map_paths(record, lambda path: str((folder / path).resolve()))


def _map_paths(record: Any, convert: Callable[[str], str]) -> Any:
    if isinstance(record, dict):
        return {
            key: convert(value) if _is_path_field(key, value) else _map_paths(value, convert)
            for key, value in record.items()
        }
    if isinstance(record, list):
        return [_map_paths(value, convert) for value in record]
    return record


def _is_path_field(key: str, value: Any) -> bool:
    return key in PATH_FIELDS and isinstance(value, str) and bool(value) and value not in NOT_PATHS


def relative_to(path: str, folder: Path) -> str:
    """``path`` (absolute, or relative to the working directory) relative to ``folder``, with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()
