"""Starts from scratch: the whitened stem (filters that decorrelate the patches they see, in +/- pairs, frozen) and
the identity start of the convs after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobiforge.errors import MobiforgeError
from mobiforge.models import create_model
from mobiforge.models.whitening import first_conv, identity_init, patch_whitening, whiten_first_conv


def test_whitening_filters_give_uncorrelated_unit_variance_responses() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(24, 3, 12, 12, generator=generator) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1)
    filters = patch_whitening(images, kernel_size=3, pairs=10)
    assert filters.shape == (20, 3, 3, 3) and torch.equal(filters[:10], -filters[10:])
    responses = nn.functional.conv2d(images, filters[:10]).permute(0, 2, 3, 1).reshape(-1, 10)
    covariance = torch.cov(responses.T)
    assert torch.allclose(covariance, torch.eye(10), atol=0.02)


def test_whiten_first_conv_sets_and_freezes_the_stem_only() -> None:
    model = create_model("convpool_s", num_classes=10, small_input=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    conv = whiten_first_conv(model, torch.randn(8, 3, 32, 32))
    assert conv is first_conv(model) and not conv.weight.requires_grad
    assert conv.weight.shape[0] == 16 and torch.equal(conv.weight[:8], -conv.weight[8:])
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert changed == [next(name for name, p in model.named_parameters() if p is conv.weight)]


def test_filters_beyond_the_patch_dimension_keep_their_random_start() -> None:
    model = nn.Sequential(nn.Conv2d(3, 40, 2))  # a 2x2x3 patch has 12 dimensions: 12 pairs, 16 filters left
    random_start = model[0].weight.detach().clone()
    whiten_first_conv(model, torch.randn(4, 3, 8, 8))
    weight = model[0].weight
    assert torch.equal(weight[24:], random_start[24:]) and not torch.equal(weight[:24], random_start[:24])


def test_a_first_conv_that_is_not_dense_is_a_clear_error() -> None:
    with pytest.raises(MobiforgeError, match="not a dense square one"):
        whiten_first_conv(nn.Sequential(nn.Conv2d(3, 3, 3, groups=3)), torch.randn(2, 3, 8, 8))


def test_identity_init_makes_each_dense_conv_after_the_first_pass_its_inputs_through() -> None:
    model = create_model("convpool_s", num_classes=10, small_input=True)
    stem = first_conv(model).weight.detach().clone()
    assert identity_init(model) == 6  # two convs in each of the three stages; not the stem
    assert torch.equal(first_conv(model).weight, stem)
    conv = model.features[1][0][0]  # stage 1's first conv: 16 -> 32 channels
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (16, 32)
    x = torch.randn(2, 16, 8, 8)
    out = conv(x)
    assert torch.allclose(out[:, :16], x, atol=1e-6)  # the first 16 filters pass their channel through
    assert out[:, 16:].abs().sum() > 0  # the others keep their random start


def test_identity_init_skips_depthwise_and_narrowing_convs_keep_a_partial_identity() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 3, padding=1))
    depthwise = model[1].weight.detach().clone()
    assert identity_init(model) == 1
    assert torch.equal(model[1].weight, depthwise)
    x = torch.randn(1, 8, 5, 5)
    assert torch.allclose(model[2](x) - model[2].bias.view(1, -1, 1, 1), x[:, :4], atol=1e-6)
