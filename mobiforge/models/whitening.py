"""Starts for a from-scratch network: its first convolution set to whiten the training images'
patches (PCA), then frozen, and the convolutions after it started as partial identities, as Jordan's airbench does
for CIFAR-10 (2024).

Each kept principal direction of the k x k x 3 patches becomes a pair of filters, ``+v / sqrt(lambda)`` and its
negation, so that the ReLU after the stem passes both signs. The first layer then starts decorrelated instead of
random and needs no training. On a CIFAR-10 subset this, with Nesterov momentum, raised convpool_s by about 3
points at equal epochs (``benchmarks/scratch_recipe.py``; RESULTS.md#scratch_recipe_convpool_whiten).
"""

from __future__ import annotations

import torch
from torch import nn

from mobiforge.errors import MobiforgeError

EIGEN_FLOOR = 5e-4  # added to each eigenvalue so that near-flat directions are not amplified into noise (airbench's)


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The network's first convolution: the one that sees the image."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise MobiforgeError(f"{type(model).__name__} has no convolution to whiten")


def patch_whitening(images: torch.Tensor, kernel_size: int, pairs: int) -> torch.Tensor:
    """``2 * pairs`` whitening filters (``(2 * pairs, C, k, k)``) for the k x k patches of ``images`` (N, C, H, W;
    normalised as the network sees them): the leading principal directions over the square root of their
    variance, each followed by its negation."""
    channels, dims = images.shape[1], images.shape[1] * kernel_size**2
    total, outer, count = torch.zeros(dims, dtype=torch.float64), torch.zeros(dims, dims, dtype=torch.float64), 0
    for chunk in images.split(16):  # a few images at a time: 224 px patches of many images would fill the memory
        patches = nn.functional.unfold(chunk.double(), kernel_size).transpose(1, 2).reshape(-1, dims)
        total, outer, count = total + patches.sum(0), outer + patches.T @ patches, count + len(patches)
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    top_values, top_vectors = eigenvalues.flip(0)[:pairs], eigenvectors.flip(1)[:, :pairs]
    filters = (top_vectors / (top_values + EIGEN_FLOOR).sqrt()).T.reshape(pairs, channels, kernel_size, kernel_size)
    return torch.cat([filters, -filters]).float()


def whiten_first_conv(model: nn.Module, images: torch.Tensor) -> nn.Conv2d:
    """Set the first convolution's filters to whiten ``images``' patches and freeze them (its bias, if any, keeps
    training). Filters beyond twice the patch's dimension keep their random start."""
    conv = first_conv(model)
    if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1] or images.shape[1] != conv.in_channels:
        raise MobiforgeError(f"{type(model).__name__}: its first convolution is not a dense square one to whiten")
    kernel = conv.kernel_size[0]
    pairs = min(conv.out_channels // 2, conv.in_channels * kernel**2)
    with torch.no_grad():
        conv.weight[: 2 * pairs].copy_(patch_whitening(images.float().cpu(), kernel, pairs))
    conv.weight.requires_grad_(False)
    return conv


def identity_init(model: nn.Module) -> int:
    """Start every dense convolution after the first as a partial identity, as airbench does (Jordan, 2024): of a
    conv with ``in`` input channels, the first ``min(in, out)`` filters pass their own input channel through (the
    kernel's centre) and the rest keep their random start. A plain conv stack then begins close to an implicit
    residual network (RESULTS.md#scratch_recipe_airbench_init measures it). Returns how many convs were set."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1:]  # the stem sees pixels, not features
    count = 0
    for conv in convs:
        height, width = conv.kernel_size
        if conv.groups != 1 or height != width or height % 2 == 0:
            continue  # depthwise/grouped convs and even kernels have no centred identity
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(conv.in_channels, conv.out_channels)])
        count += 1
    return count
