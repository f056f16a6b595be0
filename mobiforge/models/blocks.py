"""Building blocks shared by every model family.

Blocks are small ``nn.Sequential`` containers with fixed children (conv, norm, act), in the style of
torchvision's ``Conv2dNormActivation``: the child order (and therefore the ``state_dict`` keys) is the same as
torchvision's, which is what lets torchvision checkpoints load, and it keeps BN folding, quantization fusion
and channel pruning mechanical. Width rounding (``make_divisible``) lives here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import nn

ActLayer = Callable[..., nn.Module]
NormLayer = Callable[[int], nn.Module]
RowT = TypeVar("RowT", bound=Any)

_ACTIVATIONS: dict[str, ActLayer] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def get_act_layer(name: str | None) -> ActLayer | None:
    """Return the activation class for a name used in architecture tables (``None`` means no activation)."""
    if name is None:
        return None
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}") from None


def check_widths(expected: int, **width_lists: list[int] | None) -> None:
    """Explicit width lists must have one value per row of the architecture table they override."""
    for name, values in width_lists.items():
        if values is not None and len(values) != expected:
            raise ValueError(f"{name} needs {expected} values (one per table row), got {len(values)}")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10% (TF MobileNet rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


class Conv2dSameTF(nn.Conv2d):
    """A strided conv with TensorFlow's "SAME" padding: the extra pixel of an even padding goes right/bottom.

    PyTorch pads symmetrically, which shifts every stride-2 feature map by half a pixel against TensorFlow; weights
    ported from TensorFlow (EfficientNet-Lite) need this to reproduce their accuracy. The padding depends on the
    input size, so it is computed per call (one ``F.pad``, exported as a static pad for a fixed input size).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride, dilation in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
            strict=True,
        ):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(nn.functional.pad(x, pads))


def first_conv(module: nn.Module) -> nn.Conv2d:
    """The conv of a ``ConvBNAct``, or ``module`` itself when it is a bare conv."""
    conv = module[0] if isinstance(module, ConvBNAct) else module
    assert isinstance(conv, nn.Conv2d)
    return conv


class ConvBNAct(nn.Sequential):
    """Conv2d, then an optional norm, then an optional activation.

    Children are ``0`` (conv), ``1`` (norm, when present) and the activation, exactly as torchvision's
    ``Conv2dNormActivation``. The conv has a bias only when no norm follows it (a bias before BN is wasted).
    ``tf_padding`` uses TensorFlow's asymmetric "SAME" padding for strided convs (for TF-ported weights).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        act_layer: ActLayer | None = nn.ReLU,
        bias: bool | None = None,
        tf_padding: bool = False,
    ) -> None:
        if bias is None:
            bias = norm_layer is None
        if tf_padding and stride > 1:  # stride-1 "SAME" padding with odd kernels equals PyTorch's symmetric one
            conv: nn.Conv2d = Conv2dSameTF(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=bias)
        else:
            conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=bias
            )
        layers: list[nn.Module] = [conv]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if _accepts_inplace(act_layer) else act_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


def _accepts_inplace(act_layer: ActLayer) -> bool:
    return act_layer in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU)


@dataclass(frozen=True)
class StageRow:
    """One row of a MobileNetV2-style table (paper Table 2): ``repeats`` blocks of the same shape."""

    expand_ratio: float
    channels: int
    repeats: int
    stride: int
    kernel_size: int = 3


def expand_stage_rows(
    rows: list[StageRow],
    in_channels: int,
    width_mult: float,
    activation: str,
    stage_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
    se_channels: list[int] | None = None,
    se_ratio: float = 0.0,
    se_gate: str = "sigmoid",
) -> list[InvertedResidualConfig]:
    """Resolve a stage table into one ``InvertedResidualConfig`` per block.

    Explicit ``stage_channels`` (one per row), ``hidden_channels`` and ``se_channels`` (one per block) override
    the widths derived from ``width_mult``; that is how a pruned or hand-tuned model is described.
    """
    num_blocks = sum(row.repeats for row in rows)
    check_widths(len(rows), stage_channels=stage_channels)
    check_widths(num_blocks, hidden_channels=hidden_channels, se_channels=se_channels)
    configs: list[InvertedResidualConfig] = []
    for stage, row in enumerate(rows):
        out_channels = stage_channels[stage] if stage_channels else make_divisible(row.channels * width_mult)
        for repeat in range(row.repeats):
            index = len(configs)
            hidden = hidden_channels[index] if hidden_channels else round(in_channels * row.expand_ratio)
            if se_channels is not None:
                squeeze = se_channels[index]
            else:
                squeeze = make_divisible(hidden * se_ratio) if se_ratio else 0
            configs.append(
                InvertedResidualConfig(
                    in_channels=in_channels,
                    hidden_channels=hidden,
                    out_channels=out_channels,
                    kernel_size=row.kernel_size,
                    stride=row.stride if repeat == 0 else 1,
                    se_channels=squeeze,
                    activation=activation,
                    se_gate=se_gate,
                )
            )
            in_channels = out_channels
    return configs


def remove_first_downsampling(rows: list[RowT]) -> list[RowT]:
    """Rows with the first stride-2 row set to stride 1. With a stride-1 stem this is the CIFAR-style 'small
    input' variant: two fewer 2x downsamplings, so a 32 px image ends at 4x4 instead of 1x1."""
    for index, row in enumerate(rows):
        if row.stride == 2:
            return [*rows[:index], replace(row, stride=1), *rows[index + 1 :]]
    return list(rows)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018) with 1x1 convs, named as torchvision's ``SqueezeExcitation``."""

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        act_layer: ActLayer = nn.ReLU,
        gate_layer: ActLayer = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = act_layer()
        self.scale_activation = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


@dataclass(frozen=True)
class InvertedResidualConfig:
    """One inverted residual block, fully resolved (absolute channel counts, no multipliers).

    Family files describe their architectures as stage tables and expand them into these rows; a pruned model
    is rebuilt from the same rows with other channel counts.
    """

    in_channels: int
    hidden_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    se_channels: int = 0  # 0: no squeeze-excite
    activation: str = "relu6"
    se_gate: str = "hardsigmoid"

    @property
    def has_expand(self) -> bool:
        # A block whose expansion ratio is 1 has no expand conv (MobileNetV2 paper, first bottleneck).
        return self.hidden_channels != self.in_channels


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 bottleneck: 1x1 expand, kxk depthwise, optional SE, linear 1x1 projection.

    The children live in ``self.block`` in torchvision MobileNetV3's order, so V3 checkpoints load as they are.
    The shortcut is the identity, used only when stride is 1 and widths match (the paper's rule).
    """

    def __init__(
        self, cfg: InvertedResidualConfig, norm_layer: NormLayer = nn.BatchNorm2d, tf_padding: bool = False
    ) -> None:
        super().__init__()
        self.cfg = cfg
        act = get_act_layer(cfg.activation)
        layers: list[nn.Module] = []
        if cfg.has_expand:
            layers.append(ConvBNAct(cfg.in_channels, cfg.hidden_channels, 1, norm_layer=norm_layer, act_layer=act))
        layers.append(
            ConvBNAct(
                cfg.hidden_channels,
                cfg.hidden_channels,
                cfg.kernel_size,
                cfg.stride,
                groups=cfg.hidden_channels,
                norm_layer=norm_layer,
                act_layer=act,
                tf_padding=tf_padding,
            )
        )
        if cfg.se_channels:
            layers.append(
                SqueezeExcite(cfg.hidden_channels, cfg.se_channels, nn.ReLU, get_act_layer(cfg.se_gate) or nn.Identity)
            )
        layers.append(ConvBNAct(cfg.hidden_channels, cfg.out_channels, 1, norm_layer=norm_layer, act_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out

    def widths(self) -> tuple[int, int, int]:
        """(output, hidden, squeeze) channels as the layers hold them now (pruning narrows them in place)."""
        layers = list(self.block)
        depthwise = layers[1] if self.cfg.has_expand else layers[0]
        squeeze = next((layer.fc1.out_channels for layer in layers if isinstance(layer, SqueezeExcite)), 0)
        return first_conv(layers[-1]).out_channels, first_conv(depthwise).out_channels, squeeze
