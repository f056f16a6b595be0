"""Conv-pool networks for small images: a plain stack of dense 3x3 convolutions and max pools, no residual adds.

The shape of the fastest CIFAR-10 training recipes (Page's ResNet-9 for DAWNBench, 2018; Jordan's airbench, 2024):
a 3x3 stem, then three stages of ``ConvBNAct -> MaxPool 2 -> ConvBNAct`` that halve the resolution and widen the
channels, global pooling and one linear layer. Only eight layers deep and wide early, it learns more per epoch than a
deep thin ResNet, and its wide dense convolutions run near the CPU's arithmetic rate (issue 26: ``convpool_s``
trains about twice as fast per image as ResNet-20 on two Zen 4 cores in bf16). Where a CPU budget buys few epochs
of a small-image dataset, that is the better trade; ``RESULTS.md#small_image_families`` records the comparison.

The papers pool the conv's output before its BatchNorm; here each conv keeps its BN and activation next to it and
the pool follows, so that int8 export folds every BN into its conv (a max pool commutes with the monotone
BN-then-ReLU only for positive BN scales, which training does not promise).

``small_input=True`` is the 32 px network. Without it the stem is stride 2 followed by a stride-2 max pool, as
ImageNet networks start, so that 224 px inputs end at 7x7 like every model of the zoo.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from mobiforge.models.base import StackedNet, default_preprocess, linear_classifier
from mobiforge.models.blocks import ConvBNAct, check_widths, first_conv, make_divisible
from mobiforge.models.registry import Traits, register_model

STAGES = 3


class ConvPoolStage(nn.Sequential):
    """3x3 ConvBNAct to ``hidden`` channels, max pool 2, 3x3 ConvBNAct to ``out`` (pruning narrows each conv on its
    own, so a stage has two widths)."""

    def __init__(self, in_channels: int, hidden: int, out: int) -> None:
        super().__init__(ConvBNAct(in_channels, hidden, 3), nn.MaxPool2d(2), ConvBNAct(hidden, out, 3))
        self.out_channels = out


def conv_pool_net(
    widths: tuple[int, int, int, int],
    num_classes: int = 1000,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.0,
    stem_channels: int | None = None,
    stage_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
) -> StackedNet:
    """A conv-pool network with a stem of ``widths[0]`` channels and stages of ``widths[1:]``.

    Args:
        width_mult: multiplies every width (rounded to multiples of 8).
        small_input: the 32 px network (stride-1 stem, no pooling before the first stage).
        stem_channels, stage_channels (3 values: each stage's output), hidden_channels (3 values: each stage's first
            conv): explicit widths that override ``width_mult`` (a pruned model's spec).
    """
    check_widths(STAGES, stage_channels=stage_channels, hidden_channels=hidden_channels)

    def width(channels: int) -> int:
        return channels if width_mult == 1.0 else make_divisible(channels * width_mult)

    in_channels = stem_channels or width(widths[0])
    features: list[nn.Module] = [ConvBNAct(3, in_channels, 3, 1 if small_input else 2)]
    if not small_input:
        features.append(nn.MaxPool2d(3, 2, 1))
    for index in range(STAGES):
        out = stage_channels[index] if stage_channels else width(widths[index + 1])
        hidden = hidden_channels[index] if hidden_channels else out
        features.append(ConvPoolStage(in_channels, hidden, out))
        in_channels = out
    classifier = linear_classifier(in_channels, num_classes, dropout)
    return StackedNet(features, classifier, in_channels, in_channels, num_classes, default_preprocess(small_input))


def convpool_widths(model: nn.Module) -> dict[str, Any]:
    """A conv-pool net's widths: the stem, and each stage's two convs (no residual adds tie any of them)."""
    stages = [stage for stage in model.features if isinstance(stage, ConvPoolStage)]
    return {
        "stem_channels": first_conv(model.features[0]).out_channels,
        "stage_channels": [first_conv(stage[2]).out_channels for stage in stages],
        "hidden_channels": [first_conv(stage[0]).out_channels for stage in stages],
    }


# A plain conv stack: airbench's identity start and fast BN biases were measured to help it
# (RESULTS.md#scratch_recipe_airbench_init), and from scratch on small images, given the same epochs, it reaches more
# than the other families (benchmarks/small_image_families.py; RESULTS.md#small_image_families).
TRAITS = Traits(
    family="convpool", widths=convpool_widths, small_images_only=True, identity_start=True, epoch_efficient=True
)


def _register(name: str, widths: tuple[int, int, int, int], summary: str) -> Callable[..., StackedNet]:
    """Register ``name``: ``conv_pool_net`` at ``widths``, with its signature (the registry checks kwargs against
    it)."""

    def builder(**kwargs: Any) -> StackedNet:
        return conv_pool_net(widths, **kwargs)

    parameters = list(inspect.signature(conv_pool_net).parameters.values())[1:]  # all but widths
    builder.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"Conv-pool net, stem {widths[0]} and stages {'/'.join(map(str, widths[1:]))} "
        f"(``small_input=True``, 10 classes: {summary})."
    )
    return register_model(builder, traits=TRAITS)


convpool_s = _register("convpool_s", (16, 32, 96, 192), "0.63M parameters, 36M multiply-adds at 32 px")
convpool_m = _register("convpool_m", (32, 64, 128, 192), "0.83M parameters, 77M multiply-adds at 32 px")
# convpool_s with a wider last stage: the parameters go where the image is 8x8 and 4x4 and cost few multiply-adds;
# 240, not 256, keeps its int8 estimate under ship's 1 MB with the margin the search allows (FILE_OVERHEAD)
convpool_s_wide = _register("convpool_s_wide", (16, 32, 96, 240), "0.86M parameters, 42M multiply-adds at 32 px")
