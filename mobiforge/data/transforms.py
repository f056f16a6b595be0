"""Transforms: the training recipe's augmentation (per sample, or batched on the cached uint8 tensors) and the
evaluation preprocessing, from ``DataConfig`` and the model's ``Preprocess``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from mobiforge.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataConfig,
)
from mobiforge.errors import MobiforgeError
from mobiforge.models.base import Preprocess


class ShrinkTo:
    """Resize so that the short side is at most ``short_side`` (never enlarges): bounds a cached image's memory."""

    def __init__(self, short_side: int) -> None:
        self.short_side = short_side

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if min(image.shape[-2:]) <= self.short_side:
            return image
        return v2.functional.resize(image, self.short_side, antialias=True)


def crop_mode(config: DataConfig) -> str:
    """--crop, else pad-and-crop up to 64 px (CIFAR's recipe) and RandomResizedCrop above."""
    return config.crop or ("pad" if config.resolved_img_size() <= 64 else "rrc")


def crop_padding(size: int) -> int:
    return size // 8  # 4 px at CIFAR's 32


def flips(config: DataConfig) -> bool:
    """--hflip, else on (off for the built-in digits, which a mirror turns into other glyphs)."""
    return config.hflip if config.hflip is not None else config.data != "digits"


ERASED_AREA = (0.02, 0.33)  # the erased box's share of the image (v2.RandomErasing's default) ...
ERASED_RATIO = (0.3, 3.3)  # ... and its aspect ratio, drawn log-uniform; both paths, per sample and batched, use them
ERASING_TRIES = 10  # v2.RandomErasing draws up to 10 boxes until one fits, else leaves the image as it is


def train_stages(config: DataConfig, cached: bool = False) -> tuple[list[Any], list[Any]]:
    """The training transform as (deterministic steps, random steps). Cached images run the first list once, when
    they are decoded; the second runs for every sample of every epoch."""
    size = config.resolved_img_size()
    crop = crop_mode(config)
    prepare: list[Any] = [v2.ToImage()]
    if crop == "rrc":
        if cached:  # RandomResizedCrop samples from the whole image: keep it, at up to twice the output size
            prepare.append(ShrinkTo(2 * size))
        augment: list[Any] = [v2.RandomResizedCrop(size, scale=(config.min_scale, 1.0), antialias=True)]
    elif crop == "pad":
        prepare.append(v2.Resize((size, size), antialias=True))
        augment = [v2.RandomCrop(size, padding=crop_padding(size), padding_mode="reflect")]
    else:
        raise MobiforgeError(f"--crop must be 'rrc' or 'pad', got {crop!r}")
    if flips(config):
        augment.append(v2.RandomHorizontalFlip())
    if config.trivial_augment:
        augment.append(v2.TrivialAugmentWide())
    mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
    augment += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if config.random_erasing > 0:
        augment.append(v2.RandomErasing(p=config.random_erasing, scale=ERASED_AREA, ratio=ERASED_RATIO))
    return prepare, augment


class PadCropBatch:
    """The small-image recipe of ``train_stages`` (reflect-pad and random crop, optional flip, float, normalise) on a
    whole batch of equal-size uint8 images at once: a few tensor ops instead of a chain of torchvision calls per
    image, which cost a sizeable share of a 32 px training step (``benchmarks/batch_augment.py``)."""

    def __init__(
        self, padding: int, hflip: bool, mean: Sequence[float], std: Sequence[float], erasing: float = 0.0
    ) -> None:
        self.padding = padding
        self.hflip = hflip
        self.erasing = erasing
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = images.shape
        pad = self.padding
        padded = nn.functional.pad(images.float(), [pad] * 4, mode="reflect")  # reflect needs a float tensor
        top, left = (torch.randint(0, 2 * pad + 1, (count, 1), generator=generator) for _ in range(2))
        rows, cols = top + torch.arange(height), left + torch.arange(width)
        batch = torch.arange(count)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.hflip:
            flip = torch.rand(count, generator=generator) < 0.5
            crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
        normalised = (crops - self.mean) / self.std
        if self.erasing:
            normalised = normalised.masked_fill(erased_boxes(normalised.shape, self.erasing, generator), 0.0)
        return normalised


def erased_boxes(shape: torch.Size, probability: float, generator: torch.Generator) -> torch.Tensor:
    """A (count, 1, height, width) mask of v2.RandomErasing's boxes for a whole batch: with ``probability`` an image
    gets one box, drawn as that transform draws it (area share, log-uniform aspect ratio, the first of 10 draws
    that fits, any position); the masked pixels are set to 0, the dataset's mean after normalisation."""
    count, _, height, width = shape
    area = height * width * torch.empty(count, ERASING_TRIES).uniform_(*ERASED_AREA, generator=generator)
    log_ratio = torch.empty(count, ERASING_TRIES).uniform_(*map(math.log, ERASED_RATIO), generator=generator)
    ratio = torch.exp(log_ratio)
    box_h, box_w = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    fits = (box_h < height) & (box_w < width)
    first = fits.float().argmax(1, keepdim=True)  # the first draw that fits (0 where none does: then unused)
    box_h, box_w = box_h.gather(1, first).squeeze(1), box_w.gather(1, first).squeeze(1)
    erase = fits.any(1) & (torch.rand(count, generator=generator) < probability)
    top = (torch.rand(count, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(count, generator=generator) * (width - box_w + 1)).long()
    rows, cols = torch.arange(height), torch.arange(width)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    return (erase[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def batch_augment(config: DataConfig) -> PadCropBatch | None:
    """The batched form of the cached training steps where it exists: pad-and-crop, flip, normalise and erase."""
    if crop_mode(config) != "pad" or config.trivial_augment:
        return None
    padding = crop_padding(config.resolved_img_size())
    mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
    return PadCropBatch(padding, flips(config), mean, std, erasing=config.random_erasing)


def train_transform(config: DataConfig) -> v2.Compose:
    prepare, augment = train_stages(config)
    return v2.Compose(prepare + augment)


def eval_stages(preprocess: Preprocess) -> tuple[list[Any], list[Any]]:
    """The eval transform as (resize and crop, then normalise); all deterministic, split for caching."""
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    if preprocess.crop_pct >= 1.0:
        resize: Any = v2.Resize((preprocess.img_size, preprocess.img_size), interpolation, antialias=True)
    else:
        resize = v2.Resize(preprocess.resize_size, interpolation, antialias=True)
    prepare = [v2.ToImage(), resize, v2.CenterCrop(preprocess.img_size)]
    return prepare, [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(preprocess.mean), list(preprocess.std))]


def eval_transform(preprocess: Preprocess) -> v2.Compose:
    """Resize the short side to ``resize_size``, center-crop ``img_size``, normalise: the checkpoint's recipe."""
    prepare, normalise = eval_stages(preprocess)
    return v2.Compose(prepare + normalise)


def preprocess_for(config: DataConfig, weights_preprocess: Preprocess | None = None) -> Preprocess:
    """The eval preprocessing that matches a (resolved) training config; stored in every checkpoint. Crop ratio
    and interpolation follow the pretrained weights when there are any."""
    size = config.resolved_img_size()
    crop_pct = 1.0 if size <= 64 else (weights_preprocess.crop_pct if weights_preprocess else 0.875)
    interpolation = weights_preprocess.interpolation if weights_preprocess else "bilinear"
    return Preprocess(
        img_size=size,
        crop_pct=crop_pct,
        mean=config.mean or IMAGENET_MEAN,
        std=config.std or IMAGENET_STD,
        interpolation=interpolation,
    )
