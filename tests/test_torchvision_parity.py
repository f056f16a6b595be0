"""mobiforge's MobileNetV2/V3 and ShuffleNetV2 give torchvision's logits with torchvision's weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from mobiforge import create_model
from mobiforge.errors import MobiforgeError
from mobiforge.models.torchvision_compat import (
    TORCHVISION_EQUIVALENTS,
    convert_torchvision_state_dict,
    torchvision_key_map,
)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights *and* BN statistics, so that a mis-mapped tensor cannot hide behind default values."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", sorted(TORCHVISION_EQUIVALENTS))
def test_same_logits_as_torchvision(name: str) -> None:
    reference = _randomised(torchvision.models.get_model(name, weights=None))
    ours = create_model(name).eval()
    ours.load_state_dict(convert_torchvision_state_dict(name, reference.state_dict()))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 1e-2  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_fine_tuned_checkpoint_with_other_class_count_converts() -> None:
    reference = _randomised(torchvision.models.mobilenet_v3_small(num_classes=10))
    converted = convert_torchvision_state_dict("mobilenet_v3_small", reference.state_dict())
    ours = create_model("mobilenet_v3_small", num_classes=10).eval()
    ours.load_state_dict(converted)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


def test_v3_keys_are_identical_and_v2_map_is_documented() -> None:
    v3 = torchvision_key_map("mobilenet_v3_large")
    assert all(src == dst for src, dst in v3.items())
    v2 = torchvision_key_map("mobilenet_v2")
    assert v2["features.1.conv.1.weight"] == "features.1.block.1.0.weight"  # projection conv
    assert v2["features.1.conv.2.running_mean"] == "features.1.block.1.1.running_mean"  # its BN


def test_non_torchvision_model_or_state_dict_is_rejected() -> None:
    with pytest.raises(MobiforgeError, match="no torchvision counterpart"):
        torchvision_key_map("mobilenet_seed")
    with pytest.raises(MobiforgeError, match="not a torchvision mobilenet_v2"):
        convert_torchvision_state_dict("mobilenet_v2", torchvision.models.mobilenet_v3_small().state_dict())
