"""Evaluation of a checkpoint on an image folder, and prediction on single images.

Both read the preprocessing and class names from the checkpoint, never from defaults.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader

from mobiforge import engine
from mobiforge.checkpoint import Checkpoint
from mobiforge.config import DataConfig
from mobiforge.data import (
    IMAGE_EXTENSIONS,
    ImageSamples,
    checkpoint_data_config,
    decodable,
    eval_transform,
    gate_samples,
    is_image_name,
    load_rgb,
    spaced_subset,
    split_samples,
)
from mobiforge.errors import MobiforgeError
from mobiforge.models.base import Preprocess


@dataclass
class CheckpointEval:
    result: engine.EvalResult
    classes: list[str]
    split: str
    data: str

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "split": self.split, **self.result.to_dict(self.classes)}


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    split: str = "val",
    batch_size: int = 64,
    workers: int = 2,
    skip_bad_images: bool = False,
) -> CheckpointEval:
    """Top-1/top-5, per-class accuracy and confusion matrix of a checkpoint on a split of an image folder."""
    checkpoint = Checkpoint.load(path)
    classes = checkpoint.named_classes()
    model = checkpoint.model().to(memory_format=torch.channels_last)
    config = checkpoint_data_config(checkpoint.config, data)
    return evaluate_samples(model, classes, checkpoint.preprocess, config, split, batch_size, workers, skip_bad_images)


def evaluate_samples(
    model: nn.Module,
    classes: list[str],
    preprocess: Preprocess,
    config: DataConfig,
    split: str,
    batch_size: int,
    workers: int,
    skip_bad_images: bool,
    subset: int | None = None,
    excluded: Collection[str] = (),
) -> CheckpointEval:
    """``model`` (a checkpoint's, or an artifact in its runtime) on the ``split`` images of ``config.data`` (val:
    without the ``excluded`` and ``subset`` of the rest, evenly spaced, as export's gate picks them)."""
    if split == "val":
        samples = gate_samples(config, classes, subset, excluded)
    else:
        samples = spaced_subset(split_samples(config, split, classes), subset)
    bad = decodable(samples, skip_bad_images)
    samples = [sample for sample in samples if sample[0] not in bad]
    if not samples:
        raise MobiforgeError(f"no decodable images in the {split} split of {config.data}")
    dataset = ImageSamples(samples, eval_transform(preprocess), draft_size=preprocess.resize_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    channels_last = next(model.parameters(), None) is not None
    result = engine.evaluate(model, loader, len(classes), channels_last=channels_last)
    return CheckpointEval(result, classes, split, config.data)


PREDICT_BATCH = 32  # images decoded and run at once: memory stays flat however many files are given
NOT_AN_IMAGE = "not an image mobiforge can read"  # the start of the sentence for any file Pillow cannot open


def predict(path: str | Path, images: list[str], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-``top_k`` classes with probabilities for each image file (or every image under a folder given), run
    ``PREDICT_BATCH`` images at a time."""
    checkpoint = Checkpoint.load(path)
    model = checkpoint.model()
    classes = checkpoint.classes or [str(index) for index in range(model.num_classes)]
    return ranked_predictions(model, classes, checkpoint.preprocess, images, top_k)


def image_files(given: list[str]) -> list[str]:
    """The image files named, with each folder replaced by the images under it (sorted, hidden entries skipped)."""
    missing = [name for name in given if not Path(name).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MobiforgeError(f"image {missing[0]} does not exist{more}")
    files: list[str] = []
    for name in given:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                str(item)
                for item in path.rglob("*")
                if item.is_file() and is_image_name(item.name) and not _hidden(item.relative_to(path))
            )
            if not found:
                raise MobiforgeError(f"{name}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        else:
            files.append(name)
    return files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def ranked_predictions(
    model: nn.Module, classes: list[str], preprocess: Preprocess, images: list[str], top_k: int
) -> list[dict[str, Any]]:
    """``predict``'s result for any model taking normalised NCHW float32 (a checkpoint's, or an artifact's)."""
    files = image_files(images)
    results = []
    for start in range(0, len(files), PREDICT_BATCH):
        chunk = files[start : start + PREDICT_BATCH]
        with torch.inference_mode():
            logits = model(prepare_images(chunk, preprocess))
        results += [
            {"image": image, "top": top} for image, top in zip(chunk, top_classes(logits, classes, top_k), strict=True)
        ]
    return results


def prepare_images(sources: list[str] | list[BinaryIO], preprocess: Preprocess) -> torch.Tensor:
    """The one preprocessing of every way an image reaches a model or a runtime (``predict``, ``serve``; ``eval``
    and the gate run the same transform through their loaders): decode, resize and crop, normalise as
    ``preprocess`` says, stacked into a contiguous NCHW float32 batch."""
    transform = eval_transform(preprocess)
    return torch.stack([_prepared(source, transform, preprocess.resize_size) for source in sources])


def top_classes(logits: torch.Tensor, classes: list[str], top_k: int) -> list[list[dict[str, Any]]]:
    """The ``top_k`` classes of each row of ``logits`` (or log-probabilities) with their softmax probabilities."""
    top = torch.softmax(logits.float(), dim=1).topk(min(top_k, len(classes)), dim=1)
    return [
        [{"class": classes[index], "probability": float(prob)} for prob, index in zip(values, indices, strict=True)]
        for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def _prepared(source: str | BinaryIO, transform: Any, draft_size: int) -> torch.Tensor:
    name = f"image {source}" if isinstance(source, str | Path) else "this file"
    try:
        image = load_rgb(source, draft_size)
    except Exception as error:  # Pillow raises several types for what is not an image, or a damaged or huge one
        raise MobiforgeError(f"{name}: {NOT_AN_IMAGE} ({_reason(error)})") from None
    return transform(image)


def _reason(error: Exception) -> str:
    """Why Pillow refused a file, as a reader can take it: its own message names the stream object (``<_io.BytesIO
    object at 0x7f...>``) for an upload, which says nothing."""
    if isinstance(error, UnidentifiedImageError):
        return f"not one of the formats it reads: {', '.join(IMAGE_EXTENSIONS)}"
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "the file", text)
