"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow TPU repository, 2020).

EfficientNet-B0's MBConv table with the changes Google made for mobile accelerators and int8: no
squeeze-excite, ReLU6 instead of swish, and a stem (32) and head (1280) that do not scale with width.
BatchNorm uses TensorFlow's eps 1e-3 / momentum 0.01 so that ported TensorFlow weights behave the same.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from mobiforge.models.base import StackedNet, default_preprocess, linear_classifier
from mobiforge.models.blocks import (
    ConvBNAct,
    InvertedResidual,
    StageRow,
    expand_stage_rows,
    remove_first_downsampling,
)
from mobiforge.models.registry import Traits, register_model
from mobiforge.models.widths import stacked_widths

# EfficientNet-B0 (paper Table 1), also Lite0: expansion, channels, repeats, stride, kernel.
EFFICIENTNET_B0_STAGES = [
    StageRow(1, 16, 1, 1, 3),
    StageRow(6, 24, 2, 2, 3),
    StageRow(6, 40, 2, 2, 5),
    StageRow(6, 80, 3, 2, 3),
    StageRow(6, 112, 3, 1, 5),
    StageRow(6, 192, 4, 2, 5),
    StageRow(6, 320, 1, 1, 3),
]


# truncatable: ship's truncated student keeps a prefix of the teacher's blocks (``depth``)
@register_model(traits=Traits(widths=stacked_widths(EFFICIENTNET_B0_STAGES), truncatable=True))
def efficientnet_lite0(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.2,
    stem_channels: int | None = None,
    stage_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
    head_channels: int | None = None,
    tf_padding: bool = False,
    depth: int | None = None,
) -> StackedNet:
    """EfficientNet-Lite0 (4.65M parameters, 385M multiply-adds at 224 px).

    Args:
        num_classes: classifier outputs.
        width_mult: channel multiplier for the blocks (stem and head stay fixed, as in the Lite recipe).
        small_input: CIFAR-style: stride-1 stem and stride-1 second stage.
        dropout: dropout before the classifier.
        stem_channels, stage_channels (7), hidden_channels (16), head_channels: explicit widths.
        tf_padding: TensorFlow "SAME" padding in strided convs, as the TF-trained ImageNet weights expect.
        depth: keep only the first ``depth`` of the 16 MBConv blocks (then the head conv): a shallower network
            whose layers are a prefix of the full one's, so ImageNet weights carry over to them unchanged.
    """
    rows = remove_first_downsampling(EFFICIENTNET_B0_STAGES) if small_input else EFFICIENTNET_B0_STAGES
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    stem = stem_channels or 32
    head = head_channels or 1280
    blocks = expand_stage_rows(rows, stem, width_mult, "relu6", stage_channels, hidden_channels)
    if depth is not None:
        if not 1 <= depth <= len(blocks):
            raise ValueError(f"depth must be between 1 and {len(blocks)}, got {depth}")
        blocks = blocks[:depth]
    stride = 1 if small_input else 2
    features: list[nn.Module] = [
        ConvBNAct(3, stem, 3, stride, norm_layer=norm, act_layer=nn.ReLU6, tf_padding=tf_padding)
    ]
    features += [InvertedResidual(cfg, norm_layer=norm, tf_padding=tf_padding) for cfg in blocks]
    features.append(ConvBNAct(blocks[-1].out_channels, head, 1, norm_layer=norm, act_layer=nn.ReLU6))
    classifier = linear_classifier(head, num_classes, dropout)
    return StackedNet(features, classifier, head, head, num_classes, default_preprocess(small_input))
