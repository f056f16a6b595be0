"""Read a model's channel widths back from its layers, as the explicit-width kwargs of its family.

Structured pruning changes the channel counts of layers in place. To save the result as a plain checkpoint (spec +
state_dict, no pickled module), the new widths must be written into the rebuild dict: ``read_widths(model)``
returns them in the form each family's factory accepts (``stem_channels``, ``stage_channels`` or
``block_channels``, ``hidden_channels``, ``se_channels``, ``head_channels``), and ``respec(model)`` returns the
spec of the pruned model, checked by rebuilding it and loading the weights strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mobiforge.errors import MobiforgeError
from mobiforge.models.blocks import ConvBNAct, InvertedResidual, SqueezeExcite, StageRow
from mobiforge.models.convpool import ConvPoolStage
from mobiforge.models.efficientnet_lite import EFFICIENTNET_B0_STAGES
from mobiforge.models.factory import build_from_spec
from mobiforge.models.mobilenet_seed import SeedBlock
from mobiforge.models.mobilenet_v1 import DepthwiseSeparable
from mobiforge.models.mobilenet_v2 import MOBILENET_V2_STAGES
from mobiforge.models.resnet_cifar import CIFAR_RESNET_STAGES, BasicBlock

# Families whose blocks share one width per stage (residual adds tie them): spec kwarg ``stage_channels``.
STAGE_TABLES: dict[str, list[StageRow]] = {
    "mobilenet_v2": MOBILENET_V2_STAGES,
    "efficientnet_lite0": EFFICIENTNET_B0_STAGES,
}
SUPPORTED_PREFIXES = (
    "mobilenet_seed", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "efficientnet_lite", "resnet", "convpool"
)  # fmt: skip

NOT_PRUNABLE = {
    "shufflenet_v2": (
        "its units split the channels in two halves and interleave them with a channel shuffle, so a channel "
        "removed in one branch has no fixed partner in the next unit, and its spec has only per-stage widths; "
        "prune a MobileNet or EfficientNet-Lite model instead, or pick a narrower ShuffleNetV2 (x0_5, x1_0)"
    )
}


def check_prunable(name: str) -> None:
    """One-line error for a family whose widths cannot be pruned and rebuilt."""
    for prefix, why in NOT_PRUNABLE.items():
        if name.startswith(prefix):
            raise MobiforgeError(f"{name} cannot be pruned: {why}")
    if not name.startswith(SUPPORTED_PREFIXES):
        raise MobiforgeError(f"{name} cannot be pruned: mobiforge has no width reader for it")


def _conv(module: nn.Module) -> nn.Conv2d:
    conv = module[0] if isinstance(module, ConvBNAct) else module
    assert isinstance(conv, nn.Conv2d)
    return conv


def _block_widths(block: nn.Module) -> tuple[int, int, int]:
    """(output, hidden, squeeze) channels of one block."""
    if isinstance(block, InvertedResidual):
        layers = list(block.block)
        depthwise = layers[1] if block.cfg.has_expand else layers[0]
        squeeze = next((layer.fc1.out_channels for layer in layers if isinstance(layer, SqueezeExcite)), 0)
        return _conv(layers[-1]).out_channels, _conv(depthwise).out_channels, squeeze
    if isinstance(block, DepthwiseSeparable):
        return _conv(block.pw).out_channels, _conv(block.dw).out_channels, 0
    if isinstance(block, SeedBlock):
        return _conv(block.residual[2]).out_channels, _conv(block.residual[0]).out_channels, 0
    raise MobiforgeError(f"cannot read the widths of a {type(block).__name__} block")


def read_widths(model: nn.Module) -> dict[str, Any]:
    """The explicit-width kwargs that rebuild ``model``'s current channel counts (see the module docstring)."""
    name = model.spec["name"]
    check_prunable(name)
    if name.startswith("resnet"):
        return _resnet_widths(model)
    if name.startswith("convpool"):
        return _convpool_widths(model)
    features = list(model.features)
    stem, blocks = _conv(features[0]).out_channels, features[1:]
    head = None
    if isinstance(blocks[-1], ConvBNAct):  # V1 has no head conv
        head = _conv(blocks[-1]).out_channels
        blocks = blocks[:-1]
    outs, hiddens, squeezes = (list(column) for column in zip(*map(_block_widths, blocks), strict=True))
    widths: dict[str, Any] = {"stem_channels": stem}
    if name in STAGE_TABLES:
        ends = torch.tensor([row.repeats for row in STAGE_TABLES[name]]).cumsum(0) - 1
        widths["stage_channels"] = [outs[int(end)] for end in ends]
    else:
        widths["block_channels"] = outs
    if name != "mobilenet_v1":
        widths["hidden_channels"] = hiddens
        widths["head_channels"] = head
    if name.startswith("mobilenet_v3") or (name == "mobilenet_v2" and model.spec["kwargs"].get("use_se")):
        widths["se_channels"] = squeezes
    return widths


def respec(model: nn.Module) -> dict[str, Any]:
    """The rebuild dict of a (pruned) model: its spec with the widths it has now, also set as ``model.spec``.
    Verified: the model rebuilt from it must accept the state_dict strictly, so a checkpoint saved with it
    always loads."""
    # width_mult stays: the explicit widths override it, except where a family keeps a fixed-by-multiplier width
    # outside the prunable layers (MobileNetV3's hidden classifier layer).
    kwargs = {**model.spec["kwargs"], **read_widths(model)}
    spec = {"name": model.spec["name"], "kwargs": kwargs}
    rebuilt = build_from_spec(spec)
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0]
        raise MobiforgeError(f"the pruned {spec['name']} cannot be rebuilt from its widths ({first})") from None
    model.spec = spec
    return spec


def _resnet_widths(model: nn.Module) -> dict[str, Any]:
    """A CIFAR ResNet's widths: each stage's output (its residual adds tie the blocks of a stage, and the stem to
    the first stage), and each block's first conv, which pruning narrows on its own."""
    blocks = [block for block in model.features if isinstance(block, BasicBlock)]
    per_stage = len(blocks) // len(CIFAR_RESNET_STAGES)
    ends = [blocks[(stage + 1) * per_stage - 1] for stage in range(len(CIFAR_RESNET_STAGES))]
    return {
        "stem_channels": _conv(model.features[0]).out_channels,
        "stage_channels": [_conv(block.conv2).out_channels for block in ends],
        "hidden_channels": [_conv(block.conv1).out_channels for block in blocks],
    }


def _convpool_widths(model: nn.Module) -> dict[str, Any]:
    """A conv-pool net's widths: the stem, and each stage's two convs (no residual adds tie any of them)."""
    stages = [stage for stage in model.features if isinstance(stage, ConvPoolStage)]
    return {
        "stem_channels": _conv(model.features[0]).out_channels,
        "stage_channels": [_conv(stage[2]).out_channels for stage in stages],
        "hidden_channels": [_conv(stage[0]).out_channels for stage in stages],
    }
