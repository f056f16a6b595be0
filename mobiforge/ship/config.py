"""The shapes ship's plan is made of: a grid row, the interruption, the runtime rows of the iOS package and the web
folder (their tuning values are in ``ship.policy``)."""

from __future__ import annotations

from dataclasses import dataclass

from mobiforge.backends.web import SHIPPED_WEB_FOLDER, WEB  # noqa: F401 - the row and folder ship writes
from mobiforge.errors import EXIT_INTERRUPTED, MobiforgeError


@dataclass(frozen=True)
class GridRow:
    """One architecture the search may try (at every input size of the data's regime; the model's ``Traits`` say
    which regimes)."""

    model: str
    width_mult: float | None


class ShipInterrupted(MobiforgeError):
    """Stopped by Ctrl-C; the finished stages are kept and a rerun resumes."""

    exit_code = EXIT_INTERRUPTED


CORE_ML = "coreml"  # the runtime row of the iOS package ship writes beside the shipped artifact
