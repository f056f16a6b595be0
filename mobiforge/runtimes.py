"""Run an exported artifact in its own runtime, whichever backend wrote it (``mobiforge.backends``).

``load_runner(path, threads)`` returns a callable that takes a float32 NCHW batch (normalised as the checkpoint's
preprocessing says) and returns float32 logits as numpy arrays, whatever the artifact's own input types.
``profile_artifact`` times it there (``mobiforge profile model.pte``); ``predict_artifact`` and
``evaluate_artifact`` classify images with it (``mobiforge predict model.pte photo.jpg``), reading the class names
and preprocessing from the files export writes beside every artifact (``labels.txt``, ``<artifact>.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backends import Interface, Runner, backend_for
from mobiforge.config import DataConfig
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.inference import CheckpointEval, evaluate_samples, ranked_predictions
from mobiforge.models.base import Preprocess
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


def load_runner(path: str | Path, threads: int = 1, interface: Interface | None = None) -> Runner:
    """A callable running ``path`` in its runtime with ``threads`` threads (see the module docstring). A runtime
    whose files may take uint8 pixels gets the ``interface`` that says how the model normalises them (default: the
    one export recorded beside the file)."""
    path = _existing(path)
    backend = backend_for(path)
    backend.check_header(path)
    try:
        if backend.pixel_input:
            return backend.impl().runner(path, threads, interface or _recorded_interface(path))
        return backend.impl().runner(path, threads)
    except MobiforgeError:
        raise
    except Exception as error:  # a damaged or foreign file: each runtime raises its own exception type
        raise _unreadable(path, backend.name, error) from None


def _recorded_interface(path: Path) -> Interface | None:
    """The interface export recorded beside ``path`` (None when it wrote nothing there)."""
    if not sidecar(path).is_file():
        return None
    info = artifact_info(path)
    pre = info.preprocess
    # pixels: the runner reads from the file itself whether it takes pixels; the normalisation is what it needs here
    return Interface(pre.mean, pre.std, tuple(info.classes), pixels=True)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():  # a file, or a folder for a runtime whose artifacts are bundles (.mlpackage)
        raise MobiforgeError(f"{path} does not exist")
    return path


def artifact_bytes(path: str | Path) -> int:
    """The size of an artifact as it ships: the file, or every file of a bundle folder."""
    path = Path(path)
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


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


# ------------------------------------------------------------------------------------------ classify with a file

LABELS_FILE = "labels.txt"  # beside every artifact: one class name per line, in the order of the model's outputs


def write_labels(folder: Path, classes: list[str]) -> Path:
    """``labels.txt`` in ``folder``, as the mobile SDKs (MediaPipe, ML Kit) and ``predict`` read it."""
    return write_atomic(folder / LABELS_FILE, "".join(f"{name}\n" for name in classes))


def sidecar(path: str | Path) -> Path:
    """Export's report beside an artifact: ``model.pte`` -> ``model.pte.json``."""
    return Path(f"{path}.json")


@dataclass
class ArtifactInfo:
    """What classifying with an artifact needs besides the file: its class names and preprocessing."""

    classes: list[str]
    preprocess: Preprocess


def artifact_info(path: str | Path) -> ArtifactInfo:
    """The class names and preprocessing of an exported file, from its ``.json`` report (``labels.txt`` beside
    it names the classes when the report predates them)."""
    path = Path(path)
    report = sidecar(path)
    try:
        data = json.loads(report.read_text())
        preprocess = Preprocess.from_dict(data["preprocess"])
        classes = data.get("classes")
    except FileNotFoundError:
        raise MobiforgeError(
            f"{path}: no {report.name} beside it; classifying needs the preprocessing that mobiforge export "
            "records there (export the checkpoint again, or use the checkpoint itself)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MobiforgeError(f"{report}: not an export report with a preprocessing ({error})") from None
    labels = path.parent / LABELS_FILE
    if not classes and labels.is_file():
        classes = [line for line in labels.read_text().splitlines() if line]
    if not classes or not all(isinstance(name, str) for name in classes):
        raise MobiforgeError(f"{path}: no class names in {report.name} or {LABELS_FILE} beside it")
    return ArtifactInfo(list(classes), preprocess)


class RuntimeModel(nn.Module):
    """An artifact in its runtime as a module: float32 NCHW in, logits out (one image at a time where the file
    takes batch 1, as phones run it)."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        self.runner = load_runner(path, threads)
        self.batched = backend_for(path).batched

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batches = [images] if self.batched else list(images.split(1))
        return torch.cat([torch.from_numpy(np.asarray(self.runner(batch.numpy()))) for batch in batches])


def predict_artifact(path: str | Path, images: list[str], top_k: int = 5, threads: int = 1) -> list[dict[str, Any]]:
    """Top-``top_k`` classes with probabilities for each image, computed in the artifact's own runtime."""
    path = _existing(path)  # a missing file is named as missing, not as missing its report
    info = artifact_info(path)
    return ranked_predictions(RuntimeModel(path, threads), info.classes, info.preprocess, images, top_k)


def evaluate_artifact(
    path: str | Path, data: str | None, split: str = "val", workers: int = 0, skip_bad_images: bool = False
) -> CheckpointEval:
    """Top-1/top-5, per-class accuracy and confusion of an artifact, run in its runtime, on a split of ``data``."""
    if not data:
        raise MobiforgeError(f"{path}: an exported file does not record its data; pass --data FOLDER")
    path = _existing(path)
    info = artifact_info(path)
    model = RuntimeModel(path, threads=1)
    return evaluate_samples(model, info.classes, info.preprocess, DataConfig(data=data), split, 1, workers,
                            skip_bad_images)  # fmt: skip
