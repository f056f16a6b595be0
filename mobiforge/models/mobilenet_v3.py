"""MobileNetV3 Large and Small (Howard et al., 2019, "Searching for MobileNetV3").

The same networks as ``torchvision.models.mobilenet_v3_large/small`` (state_dict keys identical, so torchvision
checkpoints load as they are): hard-swish, squeeze-excite with a hard-sigmoid gate on a quarter of the hidden
width, and BatchNorm with eps 1e-3 / momentum 0.01 as in the TensorFlow reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import nn

from mobiforge.models.base import StackedNet, default_preprocess
from mobiforge.models.blocks import (
    ConvBNAct,
    InvertedResidual,
    InvertedResidualConfig,
    check_widths,
    make_divisible,
    remove_first_downsampling,
)
from mobiforge.models.registry import Traits, register_model
from mobiforge.models.widths import stacked_widths


@dataclass(frozen=True)
class V3Row:
    """One block of the paper's tables: kernel, expanded width, output width, SE, activation, stride."""

    kernel_size: int
    hidden: int
    out: int
    use_se: bool
    activation: str
    stride: int


RE, HS = "relu", "hardswish"

# Paper Table 1 (MobileNetV3-Large).
V3_LARGE = [
    V3Row(3, 16, 16, False, RE, 1),
    V3Row(3, 64, 24, False, RE, 2),
    V3Row(3, 72, 24, False, RE, 1),
    V3Row(5, 72, 40, True, RE, 2),
    V3Row(5, 120, 40, True, RE, 1),
    V3Row(5, 120, 40, True, RE, 1),
    V3Row(3, 240, 80, False, HS, 2),
    V3Row(3, 200, 80, False, HS, 1),
    V3Row(3, 184, 80, False, HS, 1),
    V3Row(3, 184, 80, False, HS, 1),
    V3Row(3, 480, 112, True, HS, 1),
    V3Row(3, 672, 112, True, HS, 1),
    V3Row(5, 672, 160, True, HS, 2),
    V3Row(5, 960, 160, True, HS, 1),
    V3Row(5, 960, 160, True, HS, 1),
]

# Paper Table 2 (MobileNetV3-Small).
V3_SMALL = [
    V3Row(3, 16, 16, True, RE, 2),
    V3Row(3, 72, 24, False, RE, 2),
    V3Row(3, 88, 24, False, RE, 1),
    V3Row(5, 96, 40, True, HS, 2),
    V3Row(5, 240, 40, True, HS, 1),
    V3Row(5, 240, 40, True, HS, 1),
    V3Row(5, 120, 48, True, HS, 1),
    V3Row(5, 144, 48, True, HS, 1),
    V3Row(5, 288, 96, True, HS, 2),
    V3Row(5, 576, 96, True, HS, 1),
    V3Row(5, 576, 96, True, HS, 1),
]


def _mobilenet_v3(
    rows: list[V3Row],
    last_channels: int,
    num_classes: int,
    width_mult: float,
    small_input: bool,
    dropout: float,
    stem_channels: int | None,
    block_channels: list[int] | None,
    hidden_channels: list[int] | None,
    se_channels: list[int] | None,
    head_channels: int | None,
) -> StackedNet:
    check_widths(len(rows), block_channels=block_channels, hidden_channels=hidden_channels, se_channels=se_channels)
    rows = remove_first_downsampling(rows) if small_input else rows
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    in_channels = stem = stem_channels or make_divisible(16 * width_mult)
    features: list[nn.Module] = [
        ConvBNAct(3, stem, 3, 1 if small_input else 2, norm_layer=norm, act_layer=nn.Hardswish)
    ]
    for index, row in enumerate(rows):
        hidden = hidden_channels[index] if hidden_channels else make_divisible(row.hidden * width_mult)
        # torchvision's rule: SE squeezes to a quarter of the hidden width.
        default_squeeze = make_divisible(hidden // 4) if row.use_se else 0
        squeeze = se_channels[index] if se_channels is not None else default_squeeze
        out = block_channels[index] if block_channels else make_divisible(row.out * width_mult)
        cfg = InvertedResidualConfig(in_channels, hidden, out, row.kernel_size, row.stride, squeeze, row.activation)
        features.append(InvertedResidual(cfg, norm_layer=norm))
        in_channels = out
    head = head_channels or 6 * in_channels
    features.append(ConvBNAct(in_channels, head, 1, norm_layer=norm, act_layer=nn.Hardswish))
    last = make_divisible(last_channels * width_mult)
    classifier = nn.Sequential(
        nn.Linear(head, last),
        nn.Hardswish(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(last, num_classes) if num_classes > 0 else nn.Identity(),
    )
    return StackedNet(features, classifier, head, last, num_classes, default_preprocess(small_input))


@register_model(traits=Traits(widths=stacked_widths()))
def mobilenet_v3_large(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.2,
    stem_channels: int | None = None,
    block_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
    se_channels: list[int] | None = None,
    head_channels: int | None = None,
) -> StackedNet:
    """MobileNetV3-Large. Explicit per-block widths (15 values each) override ``width_mult``; ``se_channels``
    uses 0 for blocks without squeeze-excite. ``small_input`` gives the CIFAR-style stride-8 variant."""
    return _mobilenet_v3(
        V3_LARGE,
        1280,
        num_classes,
        width_mult,
        small_input,
        dropout,
        stem_channels,
        block_channels,
        hidden_channels,
        se_channels,
        head_channels,
    )


@register_model(traits=Traits(widths=stacked_widths()))
def mobilenet_v3_small(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.2,
    stem_channels: int | None = None,
    block_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
    se_channels: list[int] | None = None,
    head_channels: int | None = None,
) -> StackedNet:
    """MobileNetV3-Small. Explicit per-block widths take 11 values each; see ``mobilenet_v3_large``."""
    return _mobilenet_v3(
        V3_SMALL,
        1024,
        num_classes,
        width_mult,
        small_input,
        dropout,
        stem_channels,
        block_channels,
        hidden_channels,
        se_channels,
        head_channels,
    )
