"""The shapes ship's plan is made of: a grid row, the interruption, the iOS package's runtime row (its tuning values
are in ``ship.policy``)."""

from __future__ import annotations

from dataclasses import dataclass

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
