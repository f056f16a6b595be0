"""Ship's time as a value: a ``TimeBudget`` is a stretch of the run's wall clock that a stage plans in, and hands on
in shares to the stages inside it. Times are ``time.time()`` values; durations are seconds."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class TimeBudget:
    """From ``start`` to ``deadline``, the last ``reserve`` seconds held back for the stages after it (the exports);
    at most ``seconds`` of it its own (a share); ``spare``: seconds of the stages after it that it may take when they
    could not use them, leaving only ``spare_reserve`` held back (its own export's; None: all of ``reserve``)."""

    deadline: float
    reserve: float = 0.0
    seconds: float = math.inf
    spare: float = 0.0
    spare_reserve: float | None = None
    start: float = field(default_factory=lambda: time.time())  # (read when made: tests may fix the clock)

    @property
    def cutoff(self) -> float:
        """The latest its own work may end without eating into the reserve."""
        return self.deadline - self.reserve

    @property
    def end(self) -> float:
        """When its own work is to end: its share's end, or the cutoff when that comes first."""
        return min(self.cutoff, self.start + self.seconds)

    @property
    def latest(self) -> float:
        """The latest its work may end with every spare second taken."""
        return self.deadline - min(self.reserve, self.reserve if self.spare_reserve is None else self.spare_reserve)

    def left(self) -> float:
        """Seconds from now to its end (negative once past it)."""
        return self.end - time.time()

    def split(self, reserve: float) -> TimeBudget:
        """The time before ``reserve`` more seconds held back at the end (for the stages after it), from now."""
        return TimeBudget(self.deadline, self.reserve + reserve, self.seconds - (time.time() - self.start))

    def share(self, fraction: float, keep: float = 0.0) -> TimeBudget:
        """``fraction`` of the time left, from now. The rest, and the reserve beyond ``keep`` seconds of it, is spare:
        the share may take it (``take_spare``) when the stages it was held for cannot use it."""
        usable = self.left()
        seconds = usable * fraction
        return TimeBudget(self.deadline, self.reserve, seconds, usable - seconds + self.reserve - keep, keep)

    def take_spare(self, seconds: float | None = None) -> None:
        """Take ``seconds`` of the spare time (all of it by default), and with them the later cutoff."""
        taken = self.spare if seconds is None else min(self.spare, max(0.0, seconds))
        self.seconds, self.spare = self.seconds + taken, self.spare - taken
        if self.spare_reserve is not None:
            self.reserve = min(self.reserve, self.spare_reserve)
