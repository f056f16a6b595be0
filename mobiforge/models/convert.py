"""Pairing state_dicts of the same architecture written under other names (torchvision, efficientnet_pytorch).

Both sides register their tensors in the same order, so the key map is derived rather than written by hand:
entries are paired in order and every pair must agree in shape, which catches any architectural mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mobiforge.errors import MobiforgeError


def map_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Pair two state_dicts entry by entry (registration order), requiring equal counts and shapes."""
    if len(source) != len(target):
        raise MobiforgeError(f"state_dict has {len(source)} tensors, the model {len(target)}: not this architecture")
    mapping = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise MobiforgeError(f"{src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapping[src_key] = dst_key
    return mapping


def convert_by_order(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    mapping = map_by_order(state_dict, model.state_dict())
    return {mapping[key]: value for key, value in state_dict.items()}
