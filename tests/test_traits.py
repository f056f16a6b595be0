"""Family traits are declared with the builder (issue 45, item 3): a family defined only here, with its traits, is
searched, ranked, started and pruned by ship and `prune` with no edit anywhere else but one grid row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from torch import nn

from mobiforge.config import ShipConfig
from mobiforge.errors import MobiforgeError
from mobiforge.models import Traits, create_model, model_traits, register_model, registry
from mobiforge.models.base import StackedNet, default_preprocess, linear_classifier
from mobiforge.models.blocks import ConvBNAct, first_conv
from mobiforge.ship.state import Survey


def _tiny_widths(model: nn.Module) -> dict[str, Any]:
    return {"stem_channels": first_conv(model.features[0]).out_channels}


def tinyconv_s(
    num_classes: int = 10, small_input: bool = True, width_mult: float = 1.0, stem_channels: int | None = None
) -> StackedNet:
    """A one-conv net that exists only in this test module."""
    width = stem_channels or int(8 * width_mult)
    features = [ConvBNAct(3, width, 3, 1 if small_input else 2)]
    return StackedNet(features, linear_classifier(width, num_classes, 0.0), width, width, num_classes,
                      default_preprocess(small_input))  # fmt: skip


TINY_TRAITS = Traits(family="tinyconv", widths=_tiny_widths, small_images_only=True, identity_start=True,
                     epoch_efficient=True)  # fmt: skip


@pytest.fixture
def tiny_family(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import mobiforge.ship.search as search
    from mobiforge.ship.config import GridRow

    register_model(tinyconv_s, traits=TINY_TRAITS)
    monkeypatch.setattr(search, "CANDIDATE_GRID", (*search.CANDIDATE_GRID, GridRow("tinyconv_s", None)))
    try:
        yield "tinyconv_s"
    finally:
        for table in (registry._MODEL_BUILDERS, registry._MODEL_MODULE, registry._MODEL_TRAITS):
            table.pop("tinyconv_s", None)


def _survey(small: bool) -> Survey:
    return Survey([f"c{i}" for i in range(10)], 5000, 1000, small_images=small, img_sizes=[32 if small else 224])


def test_a_family_defined_only_here_is_searched_by_its_traits(tiny_family: str) -> None:
    from mobiforge.ship.plan import identity_start
    from mobiforge.ship.search import family, grid_candidates, rank

    chosen = grid_candidates(ShipConfig(data="x", models=["tinyconv"]), _survey(small=True))
    assert [c.model for c in chosen] == [tiny_family] and family(tiny_family) == "tinyconv"
    assert tiny_family not in {c.model for c in grid_candidates(ShipConfig(data="x"), _survey(small=False))}
    assert identity_start(tiny_family) and not identity_start("resnet20")
    everyone = grid_candidates(ShipConfig(data="x"), _survey(small=True))
    for candidate in everyone:
        candidate.budget_epochs = 40  # every one gets a full schedule: the epoch-efficient families rank first
    first = min(everyone, key=rank)
    assert model_traits(first.model).epoch_efficient


def test_a_family_defined_only_here_prunes_by_its_own_width_reader(tiny_family: str) -> None:
    from mobiforge.models.widths import respec

    model = create_model(tiny_family)
    model.features[0][0] = nn.Conv2d(3, 5, 3, 1, 1, bias=False)  # what pruning does: fewer channels, in place
    model.features[0][1] = nn.BatchNorm2d(5)
    model.classifier[-1] = nn.Linear(5, 10)
    assert respec(model)["kwargs"]["stem_channels"] == 5


def test_a_model_without_a_width_reader_says_so(tiny_family: str) -> None:
    from mobiforge.models.widths import check_prunable

    registry._MODEL_TRAITS[tiny_family] = Traits()
    with pytest.raises(MobiforgeError, match="tinyconv_s cannot be pruned: mobiforge has no width reader"):
        check_prunable(tiny_family)
    with pytest.raises(MobiforgeError, match="shufflenet_v2_x1_0 cannot be pruned: its units split"):
        check_prunable("shufflenet_v2_x1_0")


def test_every_registered_family_declares_its_traits_once() -> None:
    families = {name: model_traits(name).family for name in registry.list_models()}
    assert families["resnet56"] == "resnet" and families["convpool_m"] == "convpool"
    assert families["shufflenet_v2_x0_5"] == "shufflenet_v2" and families["mobilenet_v2"] == "mobilenet_v2"
    assert [name for name in families if model_traits(name).truncatable] == ["efficientnet_lite0"]
