"""MobileNetV1 (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision").

A 3x3 stem and 13 depthwise-separable blocks (3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU), global
average pooling and one linear layer: 4.2M parameters and 569M multiply-adds at 224 px with ``width_mult=1``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from mobiforge.models.base import StackedNet, default_preprocess, linear_classifier
from mobiforge.models.blocks import ConvBNAct, check_widths, first_conv, make_divisible, remove_first_downsampling
from mobiforge.models.registry import Traits, register_model
from mobiforge.models.widths import stacked_widths


@dataclass(frozen=True)
class SeparableRow:
    """One depthwise-separable block of the paper's Table 1: output channels and depthwise stride."""

    channels: int
    stride: int


# Paper Table 1, after the 3x3 stride-2 stem of 32 channels.
MOBILENET_V1_BLOCKS = [
    SeparableRow(64, 1),
    SeparableRow(128, 2),
    SeparableRow(128, 1),
    SeparableRow(256, 2),
    SeparableRow(256, 1),
    SeparableRow(512, 2),
    *[SeparableRow(512, 1)] * 5,
    SeparableRow(1024, 2),
    SeparableRow(1024, 1),
]


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise ConvBNAct then 1x1 pointwise ConvBNAct (children ``dw`` and ``pw``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            OrderedDict(
                dw=ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels),
                pw=ConvBNAct(in_channels, out_channels, 1),
            )
        )
        self.out_channels = out_channels

    def widths(self) -> tuple[int, int, int]:
        """(output, hidden, squeeze) channels as the layers hold them now: hidden is the depthwise conv's."""
        return first_conv(self.pw).out_channels, first_conv(self.dw).out_channels, 0


@register_model(traits=Traits(widths=stacked_widths(hidden_and_head=False)))
def mobilenet_v1(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.0,
    stem_channels: int | None = None,
    block_channels: list[int] | None = None,
) -> StackedNet:
    """MobileNetV1.

    Args:
        num_classes: classifier outputs.
        width_mult: the paper's width multiplier alpha (widths rounded to multiples of 8).
        small_input: CIFAR-style: stride-1 stem and stride-1 first downsampling block.
        dropout: dropout before the classifier (the paper uses none).
        stem_channels, block_channels (13 values): explicit widths that override ``width_mult``.
    """
    rows = remove_first_downsampling(MOBILENET_V1_BLOCKS) if small_input else MOBILENET_V1_BLOCKS
    check_widths(len(rows), block_channels=block_channels)
    in_channels = stem = stem_channels or make_divisible(32 * width_mult)
    features: list[nn.Module] = [ConvBNAct(3, stem, 3, 1 if small_input else 2)]
    for index, row in enumerate(rows):
        out = block_channels[index] if block_channels else make_divisible(row.channels * width_mult)
        features.append(DepthwiseSeparable(in_channels, out, row.stride))
        in_channels = out
    classifier = linear_classifier(in_channels, num_classes, dropout)
    return StackedNet(features, classifier, in_channels, in_channels, num_classes, default_preprocess(small_input))
