"""Evaluation of a checkpoint on an image folder, and prediction on single images.

Both read the preprocessing and class names from the checkpoint, never from defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mobiforge import engine
from mobiforge.checkpoint import Checkpoint
from mobiforge.config import DataConfig
from mobiforge.data import (
    ImageSamples,
    checkpoint_data_config,
    decodable,
    eval_transform,
    load_rgb,
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
) -> CheckpointEval:
    """``model`` (a checkpoint's, or an artifact in its runtime) on the ``split`` images of ``config.data``."""
    samples = split_samples(config, split, classes)
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


def predict(path: str | Path, images: list[str], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-``top_k`` classes with probabilities for each image file, run ``PREDICT_BATCH`` images at a time."""
    checkpoint = Checkpoint.load(path)
    model = checkpoint.model()
    classes = checkpoint.classes or [str(index) for index in range(model.num_classes)]
    return ranked_predictions(model, classes, checkpoint.preprocess, images, top_k)


def ranked_predictions(
    model: nn.Module, classes: list[str], preprocess: Preprocess, images: list[str], top_k: int
) -> list[dict[str, Any]]:
    """``predict``'s result for any model taking normalised NCHW float32 (a checkpoint's, or an artifact's)."""
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MobiforgeError(f"image {missing[0]} does not exist{more}")
    transform = eval_transform(preprocess)
    results = []
    for start in range(0, len(images), PREDICT_BATCH):
        chunk = images[start : start + PREDICT_BATCH]
        batch = torch.stack([_prepared(image, transform, preprocess.resize_size) for image in chunk])
        with torch.inference_mode():
            probabilities = torch.softmax(model(batch).float(), dim=1)
        top = probabilities.topk(min(top_k, len(classes)), dim=1)
        results += [
            {
                "image": image,
                "top": [
                    {"class": classes[index], "probability": float(prob)}
                    for prob, index in zip(values.tolist(), indices.tolist(), strict=True)
                ],
            }
            for image, values, indices in zip(chunk, top.values, top.indices, strict=True)
        ]
    return results


def _prepared(image: str, transform: Any, draft_size: int) -> torch.Tensor:
    try:
        return transform(load_rgb(image, draft_size))
    except Exception as error:  # PIL raises several types for undecodable files
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise MobiforgeError(f"cannot read image {image}: {first}") from None
