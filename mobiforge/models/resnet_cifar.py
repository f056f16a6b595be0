"""CIFAR ResNets (He et al., 2016, "Deep Residual Learning for Image Recognition", section 4.2): 6n+2 layers.

A 3x3 stem of 16 channels, three stages of n basic blocks (two 3x3 ConvBNAct, a shortcut, the sum, ReLU) at 16, 32
and 64 channels, the last two starting with stride 2, global average pooling and one linear layer. ResNet-20 is
0.27M parameters and 41M multiply-adds at 32 px. The shortcut that changes shape is a 1x1 conv + BN (the paper's
option B; its option A, zero-padded identity, has no weights for torch-pruning to narrow with the block).

Why a MobileNet tool ships dense convolutions: on a CPU the training step of depthwise and small 1x1 convolutions runs
far below the machine's arithmetic rate, while dense 3x3 convolutions run near it (issue 26 measured ResNet-20
training 3.3x faster per image than MobileNetV2 x0.5 at 32 px on two cores). On small images it reaches a given
accuracy sooner within a CPU budget, and on the phone a 41M-MAC model at 32 px is a fraction of a millisecond.

``small_input=True`` is the paper's network at 32 px. Without it the stem is stride 2 followed by a stride-2 max pool,
as ImageNet ResNets start, so that 224 px inputs end at 7x7 like every model of the zoo.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mobiforge.models.base import StackedNet, default_preprocess, linear_classifier
from mobiforge.models.blocks import ConvBNAct, check_widths, first_conv, make_divisible
from mobiforge.models.registry import Traits, register_model


@dataclass(frozen=True)
class ResidualStage:
    """One stage of the paper's CIFAR table: output channels and the stride of its first block."""

    channels: int
    stride: int


CIFAR_RESNET_STAGES = [ResidualStage(16, 1), ResidualStage(32, 2), ResidualStage(64, 2)]
STEM_CHANNELS = 16


class BasicBlock(nn.Module):
    """3x3 ConvBNAct, 3x3 conv + BN, plus the shortcut (identity, or 1x1 conv + BN where the shape changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = hidden_channels or out_channels  # the paper's blocks keep one width; pruning narrows the middle
        self.conv1 = ConvBNAct(in_channels, hidden, 3, stride)
        self.conv2 = ConvBNAct(hidden, out_channels, 3, act_layer=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBNAct(in_channels, out_channels, 1, stride, act_layer=None)
        self.act = nn.ReLU(inplace=True)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def cifar_resnet(
    depth: int,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.0,
    stem_channels: int | None = None,
    stage_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
) -> StackedNet:
    """A CIFAR ResNet of ``depth`` = 6n+2 layers (20, 32, 44, 56, 110...).

    Args:
        width_mult: multiplies every width (rounded to multiples of 8; 1.0 keeps the paper's 16/32/64).
        small_input: the paper's 32 px network (stride-1 stem, no pooling).
        stem_channels, stage_channels (3 values), hidden_channels (one per block: its first conv's width):
            explicit widths that override ``width_mult`` (a pruned model's spec).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n+2 layers (20, 32, 44, 56...), not {depth}")
    blocks = (depth - 2) // 6
    check_widths(len(CIFAR_RESNET_STAGES), stage_channels=stage_channels)
    check_widths(blocks * len(CIFAR_RESNET_STAGES), hidden_channels=hidden_channels)

    def width(channels: int) -> int:
        return channels if width_mult == 1.0 else make_divisible(channels * width_mult)

    in_channels = stem_channels or width(STEM_CHANNELS)
    features: list[nn.Module] = [ConvBNAct(3, in_channels, 3, 1 if small_input else 2)]
    if not small_input:
        features.append(nn.MaxPool2d(3, 2, 1))
    hidden = iter(hidden_channels or [])
    for index, stage in enumerate(CIFAR_RESNET_STAGES):
        out = stage_channels[index] if stage_channels else width(stage.channels)
        for block in range(blocks):
            features.append(BasicBlock(in_channels, out, stage.stride if block == 0 else 1, next(hidden, None)))
            in_channels = out
    classifier = linear_classifier(in_channels, num_classes, dropout)
    return StackedNet(features, classifier, in_channels, in_channels, num_classes, default_preprocess(small_input))


def resnet_widths(model: nn.Module) -> dict[str, Any]:
    """A CIFAR ResNet's widths: each stage's output (its residual adds tie the blocks of a stage, and the stem to
    the first stage), and each block's first conv, which pruning narrows on its own."""
    blocks = [block for block in model.features if isinstance(block, BasicBlock)]
    per_stage = len(blocks) // len(CIFAR_RESNET_STAGES)
    ends = [blocks[(stage + 1) * per_stage - 1] for stage in range(len(CIFAR_RESNET_STAGES))]
    return {
        "stem_channels": first_conv(model.features[0]).out_channels,
        "stage_channels": [first_conv(block.conv2).out_channels for block in ends],
        "hidden_channels": [first_conv(block.conv1).out_channels for block in blocks],
    }


TRAITS = Traits(family="resnet", widths=resnet_widths, small_images_only=True)


def _register(depth: int, summary: str) -> Callable[..., StackedNet]:
    """Register ``resnet{depth}``: ``cifar_resnet`` at that depth, with its signature (the registry checks kwargs
    against it)."""

    def builder(**kwargs: Any) -> StackedNet:
        return cifar_resnet(depth, **kwargs)

    parameters = list(inspect.signature(cifar_resnet).parameters.values())[1:]  # all but depth
    builder.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = f"CIFAR ResNet-{depth} (``small_input=True``, 10 classes: {summary})."
    return register_model(builder, traits=TRAITS)


resnet20 = _register(20, "0.27M parameters, 41M multiply-adds at 32 px")
resnet32 = _register(32, "0.47M parameters, 69M multiply-adds at 32 px")
resnet44 = _register(44, "0.66M parameters, 97M multiply-adds at 32 px")
resnet56 = _register(56, "0.86M parameters, 126M multiply-adds at 32 px")
