"""Loading torchvision ImageNet checkpoints into mobiforge models.

mobiforge's MobileNetV2, MobileNetV3 and ShuffleNetV2 are layer-for-layer the torchvision networks and register
their parameters and buffers in the same order. Only some names differ:

* MobileNetV3: none (``features.N.block.M...``, ``classifier.K...``), so a torchvision state_dict loads as is.
* MobileNetV2: torchvision's ``features.N.conv.{k,k+1}`` (projection conv, its BN) are ``features.N.block.k.{0,1}``
  here (one ``ConvBNAct``), and ``conv.*`` is named ``block.*``.
* ShuffleNetV2: torchvision's flat branches (``branch2.0`` conv, ``branch2.1`` BN, ``branch2.3`` conv...) are
  ``ConvBNAct`` children here (``branch2.0.0``, ``branch2.0.1``, ``branch2.1.0``...).

Rather than maintain regexes for each, the key map is derived: both models' state_dict entries are paired in
registration order and every pair must agree in shape. ``torchvision_key_map(name)`` returns that map so it can
be inspected (and the test suite checks that the mapped model gives torchvision's logits to 1e-5).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mobiforge.errors import MobiforgeError
from mobiforge.models.convert import map_by_order
from mobiforge.models.registry import build

# mobiforge name -> torchvision builder name (they coincide, but the list says which families are compatible).
TORCHVISION_EQUIVALENTS = {
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "shufflenet_v2_x0_5": "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0": "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5": "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0": "shufflenet_v2_x2_0",
}


def torchvision_key_map(name: str, num_classes: int = 1000) -> dict[str, str]:
    """Map torchvision state_dict keys to mobiforge keys for model ``name`` (built without weights)."""
    import torchvision

    if name not in TORCHVISION_EQUIVALENTS:
        raise MobiforgeError(
            f"model {name!r} has no torchvision counterpart; these do: {', '.join(TORCHVISION_EQUIVALENTS)}"
        )
    reference = torchvision.models.get_model(TORCHVISION_EQUIVALENTS[name], weights=None, num_classes=num_classes)
    ours = build(name, num_classes=num_classes)
    return map_by_order(reference.state_dict(), ours.state_dict())


def convert_torchvision_state_dict(name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision state_dict of model ``name`` for ``create_model(name, num_classes=...)``.

    The number of classes is read from the checkpoint's final linear layer, so fine-tuned torchvision
    checkpoints convert too.
    """
    num_classes = _classifier_outputs(state_dict)
    key_map = torchvision_key_map(name, num_classes)
    missing = sorted(set(key_map) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(key_map))
    if missing or unexpected:
        raise MobiforgeError(f"not a torchvision {name} state_dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return {key_map[key]: value for key, value in state_dict.items()}


def _classifier_outputs(state_dict: Mapping[str, torch.Tensor]) -> int:
    weights = [value for key, value in state_dict.items() if key.endswith("weight") and value.dim() == 2]
    if not weights:
        raise MobiforgeError("state_dict has no linear classifier weight; is it a torchvision classification model?")
    return int(weights[-1].shape[0])
