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
from mobiforge.checkpoint import load_checkpoint, model_from_checkpoint
from mobiforge.data import (
    DataConfig,
    ImageSamples,
    Sample,
    class_folders,
    decodable,
    discover,
    eval_transform,
    load_rgb,
    materialize_digits,
    scan_split,
)
from mobiforge.errors import MobiforgeError
from mobiforge.models.base import Preprocess


def _data_config(checkpoint: dict[str, Any], data: str | None) -> DataConfig:
    saved = dict((checkpoint.get("config") or {}).get("data") or {})
    config = DataConfig(
        data=data or saved.get("data", "digits"),
        val_split=float(saved.get("val_split", 0.1)),
        split_seed=int(saved.get("split_seed", 0)),
    )
    return config


def split_samples(config: DataConfig, split: str, classes: list[str]) -> list[Sample]:
    """The samples of ``split`` labelled with the checkpoint's ``classes`` (class folders matched by name)."""
    root = materialize_digits() if config.data == "digits" else Path(config.data).expanduser()
    if not root.is_dir():
        raise MobiforgeError(f"--data {config.data}: no such folder")
    class_to_idx = {name: index for index, name in enumerate(classes)}
    folder = root / split
    if split == "val" and not folder.is_dir() and (root / "test").is_dir():
        folder = root / "test"  # DIR/{train,test}: training validated on test/, so "val" means the same here
    if folder.is_dir():
        unknown = sorted(set(class_folders(folder)) - set(classes))
        if unknown:
            raise MobiforgeError(f"{folder} has classes the model does not know: {', '.join(unknown)}")
        samples, _, _ = scan_split(folder, class_to_idx)
    elif (root / "train").is_dir():
        present = ", ".join(name for name in ("train", "val", "test") if (root / name).is_dir())
        raise MobiforgeError(f"--split {split}: {root} has no {split}/ folder (it has {present})")
    elif split in ("train", "val"):
        splits = discover(config)  # recreate the training run's seeded split
        if splits.classes != classes:
            raise MobiforgeError(f"{root} has classes {splits.classes}, the checkpoint {classes}")
        samples = splits.train if split == "train" else splits.val
    else:
        raise MobiforgeError(f"--split {split}: {root} holds class folders only; use --split val or train")
    if not samples:
        raise MobiforgeError(f"no images in the {split} split of {root}")
    return samples


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
    checkpoint = load_checkpoint(path)
    classes = checkpoint.get("classes")
    if not classes:
        raise MobiforgeError(f"{path} has no class names; it was not written by `mobiforge train`")
    model = model_from_checkpoint(checkpoint)
    preprocess = Preprocess.from_dict(checkpoint["preprocess"])
    config = _data_config(checkpoint, data)
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


def predict(path: str | Path, images: list[str], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-``top_k`` classes with probabilities for each image file."""
    checkpoint = load_checkpoint(path)
    classes = checkpoint.get("classes") or [str(i) for i in range(checkpoint["spec"]["kwargs"].get("num_classes", 0))]
    model = model_from_checkpoint(checkpoint)
    transform = eval_transform(Preprocess.from_dict(checkpoint["preprocess"]))
    batch = []
    for image_path in images:
        if not Path(image_path).is_file():
            raise MobiforgeError(f"image {image_path} does not exist")
        try:
            batch.append(transform(load_rgb(image_path)))
        except Exception as error:  # PIL raises several types for undecodable files
            raise MobiforgeError(f"cannot read image {image_path}: {str(error).splitlines()[0]}") from None
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.stack(batch)), dim=1)
    top = probabilities.topk(min(top_k, len(classes)), dim=1)
    return [
        {
            "image": image_path,
            "top": [
                {"class": classes[index], "probability": float(prob)}
                for prob, index in zip(values.tolist(), indices.tolist(), strict=True)
            ],
        }
        for image_path, values, indices in zip(images, top.values, top.indices, strict=True)
    ]
