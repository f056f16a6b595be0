"""MobileNetV2 (Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

Layer for layer the same network as ``torchvision.models.mobilenet_v2``; torchvision checkpoints load through
``mobiforge.models.torchvision_compat`` (the only difference is that the linear projection conv and its BN sit
in one ``ConvBNAct`` here). ``use_se=True`` adds squeeze-excite (sigmoid gate, a quarter of the hidden width)
after every depthwise conv, the most common "MobileNetV2 + SE" variant.
"""

from __future__ import annotations

from torch import nn

from mobiforge.models.base import StackedNet, default_preprocess, linear_classifier
from mobiforge.models.blocks import (
    ConvBNAct,
    InvertedResidual,
    StageRow,
    expand_stage_rows,
    make_divisible,
    remove_first_downsampling,
)
from mobiforge.models.registry import Traits, register_model
from mobiforge.models.widths import stacked_widths

# Paper Table 2: expansion t, output channels c, repeats n, first stride s.
MOBILENET_V2_STAGES = [
    StageRow(1, 16, 1, 1),
    StageRow(6, 24, 2, 2),
    StageRow(6, 32, 3, 2),
    StageRow(6, 64, 4, 2),
    StageRow(6, 96, 3, 1),
    StageRow(6, 160, 3, 2),
    StageRow(6, 320, 1, 1),
]


@register_model(traits=Traits(widths=stacked_widths(MOBILENET_V2_STAGES)))
def mobilenet_v2(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    use_se: bool = False,
    small_input: bool = False,
    dropout: float = 0.2,
    stem_channels: int | None = None,
    stage_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
    se_channels: list[int] | None = None,
    head_channels: int | None = None,
) -> StackedNet:
    """MobileNetV2.

    Args:
        num_classes: classifier outputs.
        width_mult: channel multiplier (paper's alpha); widths are rounded to multiples of 8.
        use_se: add squeeze-excite to every block.
        small_input: CIFAR-style: stride-1 stem and stride-1 second stage (total stride 8 instead of 32).
        dropout: dropout before the classifier.
        stem_channels, stage_channels (7), hidden_channels (17), se_channels (17), head_channels: explicit widths
            that override ``width_mult`` (pruned models are rebuilt from these).
    """
    rows = remove_first_downsampling(MOBILENET_V2_STAGES) if small_input else MOBILENET_V2_STAGES
    stem = stem_channels or make_divisible(32 * width_mult)
    head = head_channels or make_divisible(1280 * max(1.0, width_mult))
    blocks = expand_stage_rows(
        rows, stem, width_mult, "relu6", stage_channels, hidden_channels, se_channels, 0.25 if use_se else 0.0
    )
    features: list[nn.Module] = [ConvBNAct(3, stem, 3, 1 if small_input else 2, act_layer=nn.ReLU6)]
    features += [InvertedResidual(cfg) for cfg in blocks]
    features.append(ConvBNAct(blocks[-1].out_channels, head, 1, act_layer=nn.ReLU6))
    classifier = linear_classifier(head, num_classes, dropout)
    return StackedNet(features, classifier, head, head, num_classes, default_preprocess(small_input))
