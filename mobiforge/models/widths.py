"""Read a model's channel widths back from its layers, as the explicit-width kwargs of its family.

Structured pruning changes the channel counts of layers in place. To save the result as a plain checkpoint (spec +
state_dict, no pickled module), the new widths must be written into the rebuild dict: ``read_widths(model)``
returns them in the form each family's factory accepts (``stem_channels``, ``stage_channels`` or
``block_channels``, ``hidden_channels``, ``se_channels``, ``head_channels``), and ``respec(model)`` returns the
spec of the pruned model, checked by rebuilding it and loading the weights strictly.

Each family declares its reader in its own file (``Traits.widths``); the readers of the families built as a stem, a
sequence of blocks and a head conv (MobileNets, EfficientNet-Lite) are made by ``stacked_widths``, and each block
reports its own widths (``block.widths()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from mobiforge.errors import MobiforgeError
from mobiforge.models.blocks import ConvBNAct, StageRow, first_conv
from mobiforge.models.factory import build_from_spec
from mobiforge.models.registry import WidthReader, model_traits


def check_prunable(name: str) -> None:
    """One-line error for a model whose widths cannot be pruned and rebuilt."""
    traits = model_traits(name)
    if traits.widths is None:
        why = traits.not_prunable or "mobiforge has no width reader for it"
        raise MobiforgeError(f"{name} cannot be pruned: {why}")


def read_widths(model: nn.Module) -> dict[str, Any]:
    """The explicit-width kwargs that rebuild ``model``'s current channel counts (see the module docstring)."""
    name = model.spec["name"]
    check_prunable(name)
    reader = model_traits(name).widths
    assert reader is not None
    return reader(model)


def stacked_widths(stages: Sequence[StageRow] | None = None, hidden_and_head: bool = True) -> WidthReader:
    """The width reader of a stem + blocks (+ head conv) network.

    ``stages``: the family's stage table, when residual adds tie the blocks of a stage to one width (spec kwarg
    ``stage_channels``); without it each block has its own (``block_channels``). ``hidden_and_head``: the family
    takes ``hidden_channels`` and ``head_channels`` (MobileNetV1 has neither). ``se_channels`` is read where any
    block has a squeeze-excite.
    """
    ends = [sum(row.repeats for row in stages[: index + 1]) - 1 for index in range(len(stages))] if stages else None

    def read(model: nn.Module) -> dict[str, Any]:
        features = list(model.features)
        stem, blocks = first_conv(features[0]).out_channels, features[1:]
        head = None
        if isinstance(blocks[-1], ConvBNAct):  # V1 has no head conv
            head = first_conv(blocks[-1]).out_channels
            blocks = blocks[:-1]
        outs, hiddens, squeezes = (list(column) for column in zip(*map(_block_widths, blocks), strict=True))
        widths: dict[str, Any] = {"stem_channels": stem}
        if ends is not None:
            widths["stage_channels"] = [outs[end] for end in ends]
        else:
            widths["block_channels"] = outs
        if hidden_and_head:
            widths["hidden_channels"] = hiddens
            widths["head_channels"] = head
        if any(squeezes):
            widths["se_channels"] = squeezes
        return widths

    return read


def _block_widths(block: nn.Module) -> tuple[int, int, int]:
    """(output, hidden, squeeze) channels of one block."""
    widths = getattr(block, "widths", None)
    if widths is None:
        raise MobiforgeError(f"cannot read the widths of a {type(block).__name__} block")
    return widths()


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
