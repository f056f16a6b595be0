"""``mobilenet_seed``: the network of the article mobiforge grew from, corrected so that it runs.

The article (``shared/seed/mobilenet-article.zh.txt``, section 4.1) gives a MobileNet of a 3x3 stride-2 stem
(3->32, BN, ReLU), six inverted residual blocks with (t, s, k) = (1,1,3), (6,2,3) x5, a 1x1 conv 256->512 with
BN and ReLU, global average pooling and a linear classifier. Each block is: 1x1 expand, ReLU, kxk depthwise
(stride s), ReLU, linear 1x1, BN, shortcut, sum, ReLU. Its code does not run as written. What we changed:

1. **Zero channels.** Block widths were ``i * 32`` with ``i`` from ``enumerate`` starting at 0, so the first block
   had 0 output channels. We use widths 32, 64, 96, 128, 192, 256.
2. **Mismatched widths.** Every block was declared with ``in_channels=32`` although block i receives the previous
   block's output; each block now takes its predecessor's width.
3. **Head that does not fit.** The last block produced 5 * 32 = 160 channels, but the head conv expects 256. With
   the widths above the last block gives 256, so the article's 256->512 conv holds unchanged.
4. **Stride-2 shortcuts.** The projection shortcut was a 1x1 conv *without* the block's stride, so in every
   stride-2 block the shortcut (H x W) and the residual branch (H/2 x W/2) could not be added. The shortcut is now
   the identity when stride is 1 and widths match, else a 1x1 conv with the block's stride followed by BN (the
   ResNet "option B" projection; a BN keeps both summands on the same scale).
5. **Bias where no norm follows.** The expand and depthwise convs have no BN in the article's block but were
   declared ``bias=False``; as everywhere in mobiforge, a conv gets a bias exactly when no norm follows it.
6. **One shared ReLU module** was applied three times per block. Harmless in eager mode, but it breaks
   quantization fusion and per-layer observers, so each activation is its own module.
7. **Prose vs code.** The text speaks of 7 modules with 64...2048 channels, a first module of 16 channels, a
   stride-2 pooling before the classifier and a VGG-pretrained initialisation; none of it matches the code or a
   MobileNet. We follow the code (the issue's specification), which is the self-consistent part.
8. **Checkpoint epoch.** The training loop saved ``'epoch': EPOCHS`` (the total) instead of the current epoch;
   mobiforge checkpoints keep the article's keys (``epoch``, ``state_dict``, ``optimizer``) with correct values.

At 224 px with 1000 classes it has 1.75M parameters and 389M multiply-adds (``mobiforge models seed``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mobiforge.models.base import StackedNet, default_preprocess, linear_classifier
from mobiforge.models.blocks import ConvBNAct, check_widths, first_conv, remove_first_downsampling
from mobiforge.models.registry import Traits, register_model
from mobiforge.models.widths import stacked_widths


@dataclass(frozen=True)
class SeedRow:
    """One block of the article: expansion t, stride s, kernel k, and (corrected) output width."""

    expand_ratio: int
    stride: int
    kernel_size: int
    channels: int


SEED_BLOCKS = [
    SeedRow(1, 1, 3, 32),
    SeedRow(6, 2, 3, 64),
    SeedRow(6, 2, 3, 96),
    SeedRow(6, 2, 3, 128),
    SeedRow(6, 2, 3, 192),
    SeedRow(6, 2, 3, 256),
]


class SeedBlock(nn.Module):
    """The article's inverted residual block (correction 4 for the shortcut, 5 for the biases)."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            ConvBNAct(in_channels, hidden_channels, 1, norm_layer=None),
            ConvBNAct(hidden_channels, hidden_channels, kernel_size, stride, groups=hidden_channels, norm_layer=None),
            ConvBNAct(hidden_channels, out_channels, 1, act_layer=None),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = ConvBNAct(in_channels, out_channels, 1, stride, act_layer=None)
        self.act = nn.ReLU(inplace=True)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))

    def widths(self) -> tuple[int, int, int]:
        """(output, hidden, squeeze) channels as the layers hold them now."""
        return first_conv(self.residual[2]).out_channels, first_conv(self.residual[0]).out_channels, 0


@register_model(traits=Traits(widths=stacked_widths()))
def mobilenet_seed(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.0,
    stem_channels: int | None = None,
    block_channels: list[int] | None = None,
    hidden_channels: list[int] | None = None,
    head_channels: int | None = None,
) -> StackedNet:
    """The article's MobileNet, corrected (see the module docstring).

    Args:
        num_classes: classifier outputs.
        width_mult: scales every width (stem, blocks, head); 1.0 is the article's network.
        small_input: CIFAR-style: stride-1 stem and stride-1 first downsampling block.
        dropout: dropout before the classifier (the article uses none).
        stem_channels, block_channels (6), hidden_channels (6), head_channels: explicit widths.
    """
    rows = remove_first_downsampling(SEED_BLOCKS) if small_input else SEED_BLOCKS
    check_widths(len(rows), block_channels=block_channels, hidden_channels=hidden_channels)
    in_channels = stem = stem_channels or max(8, round(32 * width_mult))
    features: list[nn.Module] = [ConvBNAct(3, stem, 3, 1 if small_input else 2)]
    for index, row in enumerate(rows):
        out = block_channels[index] if block_channels else max(8, round(row.channels * width_mult))
        hidden = hidden_channels[index] if hidden_channels else round(in_channels * row.expand_ratio)
        features.append(SeedBlock(in_channels, hidden, out, row.kernel_size, row.stride))
        in_channels = out
    head = head_channels or max(8, round(512 * width_mult))
    features.append(ConvBNAct(in_channels, head, 1))
    classifier = linear_classifier(head, num_classes, dropout)
    return StackedNet(features, classifier, head, head, num_classes, default_preprocess(small_input))
