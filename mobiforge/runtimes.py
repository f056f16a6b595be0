"""Run an exported artifact in its own runtime, whichever backend wrote it (``mobiforge.backends``).

``load_runner(path, threads)`` returns a callable that takes a float32 NCHW batch (normalised as the checkpoint's
preprocessing says) and returns float32 logits as numpy arrays, whatever the artifact's own input types.
``profile_artifact`` times it there (``mobiforge profile model.pte``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobiforge.backends import Runner, backend_for
from mobiforge.errors import MobiforgeError
from mobiforge.profile import BudgetCheck, LatencyStats, Verdicts, budget_checks, measure_latency


def runtime_of(path: str | Path) -> str:
    """The runtime name of an artifact (``executorch``, ``tflite``, ``onnx``...), by its suffix."""
    return backend_for(path).name


def _unreadable(path: Path, runtime: str, error: Exception) -> MobiforgeError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return MobiforgeError(f"{path}: {runtime} cannot load this file ({reason}); export it again with mobiforge export")


def input_shape(path: str | Path) -> tuple[int, ...]:
    """The input shape the artifact was exported with, read from the file itself (a dynamic batch reads as 1)."""
    path = _existing(path)
    backend = backend_for(path)
    backend.check_header(path)
    try:
        return tuple(backend.impl().input_shape(path))
    except (ImportError, MobiforgeError):
        raise
    except Exception as error:  # a damaged or foreign file: each runtime raises its own exception type
        raise _unreadable(path, backend.name, error) from None


def load_runner(path: str | Path, threads: int = 1) -> Runner:
    """A callable running ``path`` in its runtime with ``threads`` threads (see the module docstring)."""
    path = _existing(path)
    backend = backend_for(path)
    backend.check_header(path)
    try:
        return backend.impl().runner(path, threads)
    except MobiforgeError:
        raise
    except Exception as error:  # a damaged or foreign file: each runtime raises its own exception type
        raise _unreadable(path, backend.name, error) from None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MobiforgeError(f"{path} does not exist")
    return path


@dataclass
class ArtifactProfile(Verdicts):
    """An exported artifact timed in its own runtime (``mobiforge profile model.pte``)."""

    path: str
    runtime: str
    file_bytes: int
    input_shape: list[int]
    threads: int
    latency: LatencyStats
    budgets: list[BudgetCheck] = field(default_factory=list)


def profile_artifact(
    path: str | Path,
    threads: int = 1,
    max_size_bytes: int | None = None,
    max_latency_ms: float | None = None,
    min_seconds: float = 1.0,
) -> ArtifactProfile:
    """Time an ExecuTorch, LiteRT or ONNX file at batch 1 in its runtime on ``threads`` threads, with the input shape
    stored in the file. ``max_size_bytes`` is checked against the file size (here the file is what ships)."""
    path = Path(path)
    runner = load_runner(path, threads)
    shape = input_shape(path)
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    latency = measure_latency(lambda: runner(batch), min_seconds=min_seconds)
    return ArtifactProfile(
        path=str(path),
        runtime=runtime_of(path),
        file_bytes=path.stat().st_size,
        input_shape=list(shape),
        threads=threads,
        latency=latency,
        budgets=budget_checks("file size", path.stat().st_size, max_size_bytes, latency, max_latency_ms),
    )
