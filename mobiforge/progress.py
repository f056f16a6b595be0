"""Progress reporting: the ``Reporter`` protocol every long-running step talks to, and its silent default.

The library never prints: training, pruning and ship hand their progress to a reporter. The CLI passes a rich
one (``mobiforge.cli.progress``); Python callers get ``SilentReporter`` unless they pass their own. This module is
in the bottom layer and imports nothing heavy, so every layer above can accept a reporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class StepInfo:
    """What the progress callback receives after every training step."""

    epoch: int
    step: int
    steps: int
    loss: float
    lr: float
    images_per_second: float


class Reporter(Protocol):
    """Receives progress; the CLI renders it with rich, the library default stays silent."""

    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, info: StepInfo) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    """A ``Reporter`` that drops everything; subclass it to handle only the events you need."""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def step(self, info: StepInfo) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass
