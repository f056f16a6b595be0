"""The interface every mobiforge model shares, and the preprocessing that travels with it.

Every model exposes timm's interface: ``forward_features`` (the last feature map, unpooled),
``forward_head(x, pre_logits=False)``, ``get_classifier``/``reset_classifier(num_classes)``,
``num_features`` (channels of ``forward_features``) and ``head_hidden_size`` (width of the pre-logits vector),
plus ``preprocess``: the input size and normalisation the model expects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mobiforge.config import IMAGE_SIDE, IMAGENET_MEAN, IMAGENET_STD

MIN_CROP_PCT = 0.05  # the resize before the crop is at most 20x the input side
NORM_LIMIT = 1000.0  # pixel scales are [0, 1] or [0, 255]: a mean or std beyond this is a damaged record
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # torchvision InterpolationMode values stored in checkpoints


@dataclass(frozen=True)
class Preprocess:
    """How images are turned into the model's input: resize the short side, center-crop, normalise."""

    img_size: int = 224
    crop_pct: float = 0.875  # resize to img_size / crop_pct, then center-crop img_size (ImageNet convention)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @property
    def resize_size(self) -> int:
        return math.floor(self.img_size / self.crop_pct)

    def region_seen(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width`` x ``height`` image the model sees, as (left, top, right, bottom) fractions: the
        center square of ``img_size / resize_size`` of the short side, or the whole image where ``crop_pct`` is 1
        (it is then resized to the input square as it is). An app hands this region to its SDK."""
        if self.crop_pct >= 1.0:
            return 0.0, 0.0, 1.0, 1.0
        side = min(width, height) * self.img_size / self.resize_size
        x, y = (width - side) / 2 / width, (height - side) / 2 / height
        return x, y, 1.0 - x, 1.0 - y

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["resize_size"] = self.resize_size
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Read a stored preprocessing; a value no model input could have is a ValueError saying which."""
        preprocess = cls(
            img_size=int(data["img_size"]),
            crop_pct=float(data.get("crop_pct", 0.875)),
            mean=tuple(float(value) for value in data.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(value) for value in data.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )
        if preprocess.img_size not in IMAGE_SIDE:
            raise ValueError(f"img_size {preprocess.img_size} is not {IMAGE_SIDE.describe()}")
        if not MIN_CROP_PCT <= preprocess.crop_pct <= 1:  # 1e-7 once asked for a 307 PB resize
            raise ValueError(f"crop_pct {preprocess.crop_pct} is outside [{MIN_CROP_PCT}, 1]")
        if len(preprocess.mean) != 3 or len(preprocess.std) != 3:
            raise ValueError("mean and std need 3 values each")
        if not all(math.isfinite(v) and abs(v) <= NORM_LIMIT for v in preprocess.mean) or not all(
            math.isfinite(v) and 0 < v <= NORM_LIMIT for v in preprocess.std
        ):  # a NaN mean or an inf std ran, and answered wrongly
            raise ValueError(
                f"mean {list(preprocess.mean)} and std {list(preprocess.std)} must be finite, within "
                f"±{NORM_LIMIT:g}, std above 0"
            )
        if preprocess.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {preprocess.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        return preprocess


def default_preprocess(small_input: bool) -> Preprocess:
    # CIFAR-style models see whole 32 px images: no resize, no crop.
    return Preprocess(img_size=32, crop_pct=1.0) if small_input else Preprocess()


class MobileClassifier(nn.Module):
    """Base class: global-average-pooled features followed by ``self.classifier`` (a Linear or a Sequential
    ending in one). Subclasses build their layers and implement ``forward_features``.
    """

    classifier_attr = "classifier"
    spec: dict[str, Any] | None = None

    def __init__(self, num_classes: int, preprocess: Preprocess) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.preprocess = preprocess
        self.num_features = 0
        self.head_hidden_size = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def _final_linear_slot(self) -> tuple[nn.Module, str]:
        classifier = self.get_classifier()
        if isinstance(classifier, nn.Sequential):
            return classifier, str(len(classifier) - 1)
        return self, self.classifier_attr

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer for ``num_classes`` outputs (0: the model returns pre-logits)."""
        parent, slot = self._final_linear_slot()
        new: nn.Module = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(new, nn.Linear):
            nn.init.normal_(new.weight, 0, 0.01)
            nn.init.zeros_(new.bias)
        setattr(parent, slot, new)
        self.num_classes = num_classes
        if self.spec is not None:
            self.spec = {**self.spec, "kwargs": {**self.spec["kwargs"], "num_classes": num_classes}}

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        classifier = self.get_classifier()
        if pre_logits:
            return classifier[:-1](x) if isinstance(classifier, nn.Sequential) else x
        return classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation: Kaiming (fan-out) convs, unit BN, small-normal linear layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


class StackedNet(MobileClassifier):
    """``features`` (stem, blocks, head conv in one Sequential) then global pooling and ``classifier``.

    MobileNetV1/V2/V3, EfficientNet-Lite and the seed network all have this shape; one Sequential keeps the
    state_dict keys identical to torchvision's ``features.N...`` layout.
    """

    def __init__(
        self,
        features: list[nn.Module],
        classifier: nn.Module,
        num_features: int,
        head_hidden_size: int,
        num_classes: int,
        preprocess: Preprocess,
    ) -> None:
        super().__init__(num_classes, preprocess)
        self.features = nn.Sequential(*features)
        self.classifier = classifier
        self.num_features = num_features
        self.head_hidden_size = head_hidden_size
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def linear_classifier(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout then Linear (torchvision's MobileNetV2 head); ``num_classes=0`` keeps pre-logits."""
    last: nn.Module = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
    return nn.Sequential(nn.Dropout(dropout), last)
