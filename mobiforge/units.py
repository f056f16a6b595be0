"""Reading and writing the quantities people type: sizes (``1MB``), durations (``100ms``, ``30m``), counts (``150M``).

One parser per kind. A bare number is read in the unit its flag names (``--time-budget 45`` is minutes,
``--max-latency 25`` milliseconds): the caller says which, so the same text never means two things in one place.
"""

from __future__ import annotations

import re

from mobiforge.errors import MobiforgeError

SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_NUMBER_AND_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def _split(text: str) -> tuple[float, str] | None:
    match = _NUMBER_AND_UNIT.fullmatch(text)
    return (float(match.group(1)), match.group(2).lower()) if match else None


def parse_size(text: str) -> int:
    """``"1MB"`` -> 1_000_000 bytes (SI units; ``KiB``/``MiB`` for powers of two; a bare number is bytes)."""
    parsed = _split(text)
    if parsed is None or parsed[1] not in SIZE_UNITS:
        raise MobiforgeError(f"cannot read size {text!r}: write it like 1MB, 800KB or 2MiB")
    return int(parsed[0] * SIZE_UNITS[parsed[1]])


def parse_duration(text: str, bare_unit: str, flag: str = "duration", to: str = "s") -> float:
    """``"30m"`` -> 1800.0 seconds, ``"0.1s"`` with ``to="ms"`` -> 100.0; a bare number is in ``bare_unit``
    (units: the keys of SECONDS)."""
    parsed = _split(text)
    if parsed is None or parsed[1] not in ("", *SECONDS):
        raise MobiforgeError(f"{flag} {text!r}: write it with a unit, like 100ms, 0.1s, 30m or 1h")
    return parsed[0] * (SECONDS[parsed[1] or bare_unit] / SECONDS[to])


def parse_count(text: str, flag: str) -> int:
    """``"150M"`` -> 150_000_000 (K, M, G suffixes), for ``--target-macs`` / ``--target-params``."""
    parsed = _split(text)
    if parsed is None or parsed[1] not in COUNT_UNITS:
        raise MobiforgeError(f"{flag} {text!r}: write a count like 150M, 800K or 1.5M")
    return int(parsed[0] * COUNT_UNITS[parsed[1]])


def format_bytes(num_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{int(num_bytes)} B"


def counted(count: int, one: str, many: str | None = None) -> str:
    """``1 file is`` / ``3 files are``: a count and the words that agree with it (``many``: ``one`` + s)."""
    return f"{count:,} {one if count == 1 else many or one + 's'}"


NAMES_SHOWN = 10  # names a message or description lists before "and N more"


def named(names: list[str], shown: int = NAMES_SHOWN) -> str:
    """``a, b, c and 9,990 more``: a list of names that keeps a message to one readable line, however many."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more:,} more" if more > 0 else "")
