"""Evaluation of a checkpoint on an image folder, and prediction on single images.

Both read the preprocessing and class names from the checkpoint, never from defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mobiforge import engine
from mobiforge.checkpoint import Checkpoint
from mobiforge.data import (
    ImageSamples,
    checkpoint_data_config,
    decodable,
    eval_transform,
    load_rgb,
    split_samples,
)
from mobiforge.errors import MobiforgeError


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
    model, preprocess = checkpoint.model(), checkpoint.preprocess
    config = checkpoint_data_config(checkpoint.config, data)
    samples = split_samples(config, split, classes)
    bad = decodable(samples, skip_bad_images)
    samples = [sample for sample in samples if sample[0] not in bad]
    if not samples:
        raise MobiforgeError(f"no decodable images in the {split} split of {config.data}")
    dataset = ImageSamples(samples, eval_transform(preprocess), draft_size=preprocess.resize_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    model.to(memory_format=torch.channels_last)
    result = engine.evaluate(model, loader, len(classes), channels_last=True)
    return CheckpointEval(result, classes, split, config.data)


PREDICT_BATCH = 32  # images decoded and run at once: memory stays flat however many files are given


def predict(path: str | Path, images: list[str], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-``top_k`` classes with probabilities for each image file, run ``PREDICT_BATCH`` images at a time."""
    checkpoint = Checkpoint.load(path)
    model = checkpoint.model()
    classes = checkpoint.classes or [str(index) for index in range(model.num_classes)]
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        raise MobiforgeError(
            f"image {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    transform = eval_transform(checkpoint.preprocess)
    results = []
    for start in range(0, len(images), PREDICT_BATCH):
        chunk = images[start : start + PREDICT_BATCH]
        batch = torch.stack([_prepared(image, transform, checkpoint.preprocess.resize_size) for image in chunk])
        with torch.inference_mode():
            probabilities = torch.softmax(model(batch), dim=1)
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
        raise MobiforgeError(
            f"cannot read image {image}: {(str(error).splitlines() or [type(error).__name__])[0]}"
        ) from None
