"""Run an exported artifact in its own runtime, whichever backend wrote it (``mobiforge.backends``).

``load_runner(path, threads)`` returns a callable that takes an NCHW batch (normalised as the checkpoint's
preprocessing says; a torch tensor or a numpy array, of any strides and float dtype) and returns float32 logits as
a numpy array, whatever the artifact's own input types. It is the one way every command reaches a runtime (the
gate, ``predict``, ``eval``, ``serve``, ``profile``): the batch is made the C-contiguous float32 NCHW array the
runners expect here, so no caller can hand a runtime memory laid out otherwise than it reads it.
``profile_artifact`` times it there (``mobiforge profile model.pte``); ``predict_artifact`` and
``evaluate_artifact`` classify images with it (``mobiforge predict model.pte photo.jpg``), reading the class names
and preprocessing from the model card ship writes beside its file, or the files export writes beside every artifact
(``labels.txt``, ``<artifact>.json``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backend_api import Interface, Runner, backend_for, is_artifact
from mobiforge.card import CARD_FILE, ModelCard
from mobiforge.config import BUILTIN_DATASETS, DataConfig
from mobiforge.data import unprintable_class
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.inference import CheckpointEval, evaluate_samples, ranked_predictions
from mobiforge.models.base import Preprocess
from mobiforge.paths import local_record, portable_record
from mobiforge.profile import BudgetCheck, LatencyStats, Verdicts, budget_checks, measure_latency
from mobiforge.untrusted import vet


def runtime_of(path: str | Path) -> str:
    """The runtime name of an artifact (``executorch``, ``tflite``, ``onnx``...), by its suffix."""
    return backend_for(path).name


def _unreadable(path: Path, runtime: str, error: Exception) -> MobiforgeError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return MobiforgeError(f"{path}: {runtime} cannot load this file ({reason}); export it again with mobiforge export")


def input_shape(path: str | Path) -> tuple[int, ...]:
    """The input shape the artifact was exported with, read from the file itself (a dynamic batch reads as 1). A
    file not seen before is loaded in a child process first (``mobiforge.untrusted``)."""
    path = _existing(path)
    backend = backend_for(path)
    backend.check_header(path)
    vet(path)
    try:
        return tuple(backend.impl().input_shape(path))
    except (ImportError, MobiforgeError):
        raise
    except Exception as error:  # a damaged or foreign file: each runtime raises its own exception type
        raise _unreadable(path, backend.name, error) from None


def load_runner(path: str | Path, threads: int = 1, interface: Interface | None = None, vetted: bool = False) -> Runner:
    """A callable running ``path`` in its runtime with ``threads`` threads (see the module docstring). A runtime
    whose files may take uint8 pixels gets the ``interface`` that says how the model normalises them (default: the
    one export recorded beside the file, or the file's own metadata). A file not seen before is loaded in a child
    process first (``mobiforge.untrusted``)."""
    path = _existing(path)
    backend = backend_for(path)
    backend.check_header(path)
    vet(path)
    try:
        if backend.pixel_input:
            run = backend.impl().runner(path, threads, interface or _recorded_interface(path))
        else:
            run = backend.impl().runner(path, threads)
    except MobiforgeError:
        raise
    except Exception as error:  # a damaged or foreign file: each runtime raises its own exception type
        raise _unreadable(path, backend.name, error) from None

    def run_contiguous(batch: np.ndarray | torch.Tensor) -> np.ndarray:
        return run(runtime_input(batch))

    return run_contiguous


def runtime_input(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """``batch`` as every runner takes it: a C-contiguous float32 NCHW numpy array. A tensor from a torchvision
    transform has channels-last strides; a runtime reading its buffer as NCHW would see the pixels scrambled."""
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().cpu().float().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


def _recorded_interface(path: Path) -> Interface | None:
    """The interface recorded beside ``path`` or in the file's own metadata (None when there is neither)."""
    try:
        info = artifact_info(path)
    except MobiforgeError:
        return None
    pre = info.preprocess
    # pixels: the runner reads from the file itself whether it takes pixels; the normalisation is what it needs here
    return Interface(pre.mean, pre.std, tuple(info.classes), pixels=True)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():  # a file, or a folder for a runtime whose artifacts are bundles (.mlpackage)
        raise MobiforgeError(f"{path} does not exist")
    return path


def artifact_bytes(path: str | Path) -> int:
    """The size of an artifact as it ships: the file, or every file of a bundle folder. Of a folder that holds a
    runtime beside its model (the web's), the model file: the budget is the model's, and the runtime's files are the
    same for every model (the export's notes give the folder's size)."""
    path = Path(path)
    if path.is_dir() and is_artifact(path) and backend_for(path).loads:
        return backend_for(path).loaded_file(path).stat().st_size
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


def remove_artifact(path: Path) -> None:
    """Remove an artifact: a file, or a folder artifact (the web's, a Core ML package) with what it holds."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def copy_artifact(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` with its report, whose paths (relative to the file's folder) are rewritten
    for the new folder, so that ``eval target`` still finds the data it was verified on. A folder artifact (the
    web's) is copied whole, replacing one at ``target``."""
    if source.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    if sidecar(source).is_file():
        report = local_record(json.loads(sidecar(source).read_text()), source.parent)
        report["path"] = str(target)
        write_atomic(sidecar(target), json.dumps(portable_record(report, target.parent), indent=2))


@dataclass
class ArtifactInfo:
    """What classifying with an artifact needs besides the file: its class names and preprocessing, and the data
    split export verified it on (empty when the file travelled without its report)."""

    classes: list[str]
    preprocess: Preprocess
    data: dict[str, Any] = field(default_factory=dict)


def artifact_info(path: str | Path) -> ArtifactInfo:
    """The class names and preprocessing of an exported file: from the model card beside a shipped file (ship's run
    folder), else from its ``.json`` report (``labels.txt`` beside it names the classes when the report predates
    them); without either, from the file's own metadata where its runtime writes one (a ``.tflite``'s labels and
    normalisation, as MediaPipe reads them)."""
    path = Path(path)
    carded = _card_info(path)
    report = sidecar(path)
    try:
        data = json.loads(report.read_text())
        preprocess = carded.preprocess if carded else Preprocess.from_dict(data["preprocess"])
        classes = carded.classes if carded else data.get("classes")
    except FileNotFoundError:
        embedded = carded or _embedded_info(path)
        if embedded is not None:
            return embedded
        raise MobiforgeError(
            f"{path}: no {report.name} beside it; classifying needs the preprocessing that mobiforge export "
            "records there (export the checkpoint again, or use the checkpoint itself)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:  # nested too deep: RecursionError
        raise MobiforgeError(f"{report}: not an export report with a preprocessing ({_first_line(error)})") from None
    labels = path.parent / LABELS_FILE
    if not classes and labels.is_file():
        try:
            classes = [line for line in labels.read_text(encoding="utf-8").splitlines() if line]
        except (OSError, UnicodeDecodeError) as error:
            raise MobiforgeError(f"{labels}: unreadable ({type(error).__name__}); export the model again") from None
    if not classes or not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise MobiforgeError(f"{path}: no class names in {report.name} or {LABELS_FILE} beside it")
    if (bad := unprintable_class(classes)) is not None:
        raise MobiforgeError(f"{report}: the class name {bad[:80]!r} holds a control character; export it again")
    recorded = data.get("data") if isinstance(data, dict) and isinstance(data.get("data"), dict) else {}
    return ArtifactInfo(list(classes), preprocess, recorded)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:160] if str(error) else type(error).__name__


def _card_info(path: Path) -> ArtifactInfo | None:
    """Classes and preprocessing from the model card beside ``path`` when the card describes that file, else None
    (an exported file has no card; a card before ``crop_pct`` was recorded leaves it to the report)."""
    card_path = path.parent / CARD_FILE
    if not card_path.is_file():
        return None
    try:
        card = ModelCard.load(card_path)
        given = card.preprocessing
        if card.artifact.file != path.name or given.crop_pct is None or not card.classes:
            return None
        stored = {"img_size": given.crop, "crop_pct": given.crop_pct, "interpolation": given.interpolation}
        preprocess = Preprocess.from_dict({**stored, "mean": given.mean, "std": given.std})
    except (OSError, ValueError, TypeError, RecursionError) as error:
        raise MobiforgeError(f"{card_path}: not a model card ({_first_line(error)}); ship the model again") from None
    if not all(isinstance(name, str) for name in card.classes) or (bad := unprintable_class(card.classes)):
        raise MobiforgeError(f"{card_path}: a class name that is not plain text ({bad!r:.80}); ship the model again")
    return ArtifactInfo(list(card.classes), preprocess)


def _embedded_info(path: Path) -> ArtifactInfo | None:
    """Classes and preprocessing from the file's own metadata (``embedded_info`` of its backend), or None. The
    file carries no resize rule: the whole image is resized to its input, as MediaPipe's classifier does."""
    backend = backend_for(path)
    if not path.is_file():
        return None
    backend.check_header(path)
    embedded = backend.impl().embedded_info(path)
    if embedded is None:
        return None
    classes, mean, std = embedded
    side = input_shape(path)[-1]
    return ArtifactInfo(list(classes), Preprocess(img_size=side, crop_pct=1.0, mean=mean, std=std))


class RuntimeModel(nn.Module):
    """An artifact in its runtime as a module: float32 NCHW in, logits out (one image at a time where the file
    takes batch 1, as phones run it; in chunks of ``RUN_CHUNK`` where it takes any batch)."""

    def __init__(self, path: Path, threads: int = 1, interface: Interface | None = None) -> None:
        super().__init__()
        self.runner = load_runner(path, threads, interface)
        self.batched = backend_for(path).batched

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return run_all(self.runner, images, self.batched)


RUN_CHUNK = 64  # images per call to a runtime whose files take any batch


def checked_model(path: Path, info: ArtifactInfo, threads: int) -> RuntimeModel:
    """``path`` in its runtime, once its report is seen to describe it: one blank image of the report's size goes
    through, and the file must answer with one score per class named. An edited or mismatched report is then a
    one-line error, not an IndexError or a runtime's traceback later (or, with too many names, a silent mislabel)."""
    model = RuntimeModel(path, threads)
    side = info.preprocess.img_size
    report = sidecar(path).name
    try:
        outputs = model(torch.zeros(1, 3, side, side)).shape[-1]
    except Exception:  # each runtime raises its own type for an input of the wrong shape
        shape = "x".join(str(n) for n in input_shape(path))
        raise MobiforgeError(
            f"{path}: its {report} says {side} px inputs but the file takes {shape}; export the checkpoint again"
        ) from None
    if outputs != len(info.classes):
        raise MobiforgeError(
            f"{path}: {len(info.classes)} class names in {report} or {LABELS_FILE} for {outputs} outputs of the "
            "file; export the checkpoint again"
        )
    return model


def run_all(runner: Runner, images: torch.Tensor, batched: bool) -> torch.Tensor:
    """Logits of ``images`` through ``runner``: the one loop the gate, ``eval``, ``predict`` and ``serve`` share."""
    batches = images.split(RUN_CHUNK) if batched else images.split(1)
    return torch.cat([torch.from_numpy(np.asarray(runner(batch))) for batch in batches])


def predict_artifact(path: str | Path, images: list[str], top_k: int = 5, threads: int = 1) -> list[dict[str, Any]]:
    """Top-``top_k`` classes with probabilities for each image, computed in the artifact's own runtime."""
    path = _existing(path)  # a missing file is named as missing, not as missing its report
    info = artifact_info(path)
    return ranked_predictions(checked_model(path, info, threads), info.classes, info.preprocess, images, top_k)


def evaluate_artifact(
    path: str | Path,
    data: str | None = None,
    split: str = "val",
    workers: int = 0,
    skip_bad_images: bool = False,
) -> CheckpointEval:
    """Top-1/top-5, per-class accuracy and confusion of an artifact, run in its runtime, on a split of ``data``
    (default: the data its export was verified on, with that run's split and image subset, so that the val top-1
    repeats the export's and ship's figure to the image)."""
    path = _existing(path)
    info = artifact_info(path)
    recorded = info.data
    if not data and not recorded.get("data"):
        raise MobiforgeError(f"{path}: its report does not record the data it was verified on; pass --data FOLDER")
    config = DataConfig(
        data=data or _recorded_folder(str(recorded["data"]), path.parent),
        val_split=float(recorded.get("val_split", DataConfig.val_split)),
        split_seed=int(recorded.get("split_seed", DataConfig.split_seed)),
    )
    # the gate's images (the subset of the val photos it did not leave out), where the recorded data and split are
    # what is evaluated
    repeated = not data and split == recorded.get("split", "val")
    subset = recorded.get("val_images") if repeated else None
    excluded = tuple(recorded.get("excluded_val") or ()) if repeated else ()
    model = checked_model(path, info, threads=ACCURACY_THREADS)
    return evaluate_samples(
        model, info.classes, info.preprocess, config, split, 1, workers, skip_bad_images, subset, excluded
    )


# Every accuracy figure of an exported file is computed with the runtime on one thread, batch by batch as its rows
# say: the gate, eval, predict and serve then run the same kernels (a runtime's integer kernels may split their work
# differently across threads), and a phone app classifies on one thread by default.
ACCURACY_THREADS = 1


def verified_on(config: DataConfig, val_images: int | None, excluded: Sequence[str] = ()) -> dict[str, Any]:
    """What the sidecar records of the data a file was verified on, for ``eval`` to repeat: the data (written
    relative to the file by ``portable_record``), its split settings, the val images left out (relative to the
    data) and the evenly spaced val subset of the rest (None: all)."""
    return {
        "data": config.data,
        "split": "val",
        "val_split": config.val_split,
        "split_seed": config.split_seed,
        "val_images": val_images,
        "excluded_val": list(excluded),
    }


def _recorded_folder(recorded: str, folder: Path) -> str:
    """The recorded data, found from the file's folder (a built-in set by its name); a file moved away from its
    data, or to another machine, is one line asking for ``--data``."""
    if recorded in BUILTIN_DATASETS:
        return recorded
    found = recorded if Path(recorded).is_absolute() else os.path.normpath(folder / recorded)
    if not Path(found).exists():
        raise MobiforgeError(
            f"{folder}: its report records the data it was verified on as {recorded}, which is not there from "
            "here (the file was moved, or the data); pass --data FOLDER"
        )
    return found
