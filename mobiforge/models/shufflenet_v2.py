"""ShuffleNetV2 (Ma et al., 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design").

The same networks as ``torchvision.models.shufflenet_v2_x*`` with identical parameter order, so torchvision
checkpoints load through ``mobiforge.models.torchvision_compat``. Each unit splits its channels in two, transforms
one half (1x1, 3x3 depthwise, 1x1) and shuffles the halves back together; downsampling units transform both.
"""

from __future__ import annotations

import torch
from torch import nn

from mobiforge.models.base import MobileClassifier, default_preprocess, init_weights
from mobiforge.models.blocks import ConvBNAct
from mobiforge.models.registry import Traits, register_model

STAGE_REPEATS = [4, 8, 4]
TRAITS = Traits(
    family="shufflenet_v2",
    not_prunable=(
        "its units split the channels in two halves and interleave them with a channel shuffle, so a channel "
        "removed in one branch has no fixed partner in the next unit, and its spec has only per-stage widths; "
        "prune a MobileNet or EfficientNet-Lite model instead, or pick a narrower ShuffleNetV2 (x0_5, x1_0)"
    ),
)
# Paper Table 5: channels of conv1, stage2, stage3, stage4, conv5 for each width.
STAGE_CHANNELS = {
    "x0_5": [24, 48, 96, 192, 1024],
    "x1_0": [24, 116, 232, 464, 1024],
    "x1_5": [24, 176, 352, 704, 1024],
    "x2_0": [24, 244, 488, 976, 2048],
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit (paper Fig. 3c for stride 1, 3d for stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 ShuffleNet unit keeps its width, got {in_channels} -> {out_channels}")
        if out_channels % 2:
            raise ValueError(f"ShuffleNet unit widths must be even, got {out_channels}")
        self.stride = stride
        branch = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, act_layer=None),
                ConvBNAct(in_channels, branch, 1),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            ConvBNAct(in_channels if stride > 1 else branch, branch, 1),
            ConvBNAct(branch, branch, 3, stride, groups=branch, act_layer=None),
            ConvBNAct(branch, branch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            left, right = x.chunk(2, dim=1)
            out = torch.cat((left, self.branch2(right)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(MobileClassifier):
    """conv1, max-pool, three stages of shuffle units, conv5, global pooling and ``fc`` (torchvision's names)."""

    classifier_attr = "fc"

    def __init__(
        self, stages_out_channels: list[int], stages_repeats: list[int], num_classes: int, small_input: bool
    ) -> None:
        super().__init__(num_classes, default_preprocess(small_input))
        if len(stages_out_channels) != 5 or len(stages_repeats) != 3:
            raise ValueError("stages_out_channels needs 5 values and stages_repeats 3")
        stem = stages_out_channels[0]
        self.conv1 = ConvBNAct(3, stem, 3, 1 if small_input else 2)
        # Small inputs (CIFAR) skip the max-pool: with the stride-1 stem that removes two 2x downsamplings.
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        in_channels = stem
        for index, (repeats, out) in enumerate(zip(stages_repeats, stages_out_channels[1:4], strict=True)):
            units = [ShuffleUnit(in_channels, out, 2)] + [ShuffleUnit(out, out, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index + 2}", nn.Sequential(*units))
            in_channels = out
        self.conv5 = ConvBNAct(in_channels, stages_out_channels[4], 1)
        self.num_features = self.head_hidden_size = stages_out_channels[4]
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean([2, 3])  # torchvision pools with mean(); keep it for bit-level parity
        return x if pre_logits else self.fc(x)


def _shufflenet_v2(
    width: str,
    num_classes: int,
    small_input: bool,
    stages_out_channels: list[int] | None,
    stages_repeats: list[int] | None,
) -> ShuffleNetV2:
    return ShuffleNetV2(
        list(stages_out_channels or STAGE_CHANNELS[width]),
        list(stages_repeats or STAGE_REPEATS),
        num_classes,
        small_input,
    )


@register_model(traits=TRAITS)
def shufflenet_v2_x0_5(
    num_classes: int = 1000,
    small_input: bool = False,
    stages_out_channels: list[int] | None = None,
    stages_repeats: list[int] | None = None,
) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x. The width is chosen by name; ``stages_out_channels`` (5 values) overrides it."""
    return _shufflenet_v2("x0_5", num_classes, small_input, stages_out_channels, stages_repeats)


@register_model(traits=TRAITS)
def shufflenet_v2_x1_0(
    num_classes: int = 1000,
    small_input: bool = False,
    stages_out_channels: list[int] | None = None,
    stages_repeats: list[int] | None = None,
) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x (2.28M parameters, 146M multiply-adds at 224 px)."""
    return _shufflenet_v2("x1_0", num_classes, small_input, stages_out_channels, stages_repeats)


@register_model(traits=TRAITS)
def shufflenet_v2_x1_5(
    num_classes: int = 1000,
    small_input: bool = False,
    stages_out_channels: list[int] | None = None,
    stages_repeats: list[int] | None = None,
) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x."""
    return _shufflenet_v2("x1_5", num_classes, small_input, stages_out_channels, stages_repeats)


@register_model(traits=TRAITS)
def shufflenet_v2_x2_0(
    num_classes: int = 1000,
    small_input: bool = False,
    stages_out_channels: list[int] | None = None,
    stages_repeats: list[int] | None = None,
) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x."""
    return _shufflenet_v2("x2_0", num_classes, small_input, stages_out_channels, stages_repeats)
