"""Say when the budget was not enough (issue 43, item 2): a model far below what the run showed reachable gets a
headline naming a budget that would likely suffice; a model as good as the run allowed gets none."""

from __future__ import annotations

import pytest

from mobiforge.config import ShipConfig
from mobiforge.ship.shortfall import headline, points_per_doubling, shortfall
from mobiforge.ship.state import Rung, ShipState, TeacherRecord, TrainRecord


def _trained(curve: list[float], seconds: float) -> TrainRecord:
    share = seconds / len(curve)
    history = [{"epoch": i + 1, "val_top1": top1, "epoch_seconds": share} for i, top1 in enumerate(curve)]
    return TrainRecord(checkpoint="c.pt", run_dir="r", top1=curve[-1], best_top1=max(curve), history=history,
                       seconds=seconds)  # fmt: skip


@pytest.fixture
def state(tmp_path):
    return ShipState(tmp_path, ShipConfig(data="digits", time_budget_s=240))


def test_a_19_percent_model_still_climbing_is_never_a_quiet_success(state):
    trained = _trained([10.0, 11.0, 13.0, 15.5, 17.0, 19.2], seconds=60)
    state.stages["train:mobilenet_v2-w0.5-32px"] = trained
    short = shortfall(state, trained, 19.23, 240, 364)
    assert short is not None and short.points_per_doubling > 5
    assert short.suggested_budget_s > 240 and short.suggested_budget_s % 60 == 0
    text = headline(short.to_dict())
    assert text.startswith("**The budget was not enough**: the shipped model scores 19.23%")
    assert f"--time-budget {short.suggested_budget_s / 60:.0f}m" in text


def test_far_below_the_teachers_rung_names_it(state):
    state.stages["teacher"] = TeacherRecord(rungs=[Rung("linear probe", 1000, 20.0, 95.4)])
    trained = _trained([80.0, 84.0, 85.0, 85.2, 85.1, 85.3], seconds=300)
    state.stages["train:student"] = trained
    short = shortfall(state, trained, 85.0, 600, 153)
    assert short.reachable_from == "the teacher's linear probe rung" and short.reachable_top1 == 95.4
    text = headline(short.to_dict())
    assert "while the teacher's linear probe rung reached 95.40% in this run" in text
    assert "More time alone is not expected to close the gap" in text  # its curve had flattened
    closest = shortfall(state, trained, 85.0, 600, 153, shipped=False)
    assert headline(closest.to_dict()).startswith("**The budget was not enough**: the closest model scores 85.00%")


def test_a_model_as_good_as_the_run_allowed_gets_no_headline(state):
    state.stages["teacher"] = TeacherRecord(rungs=[Rung("linear probe", 1000, 20.0, 96.0)])
    trained = _trained([90.0, 97.0, 99.0, 99.5, 99.7, 99.7], seconds=120)
    state.stages["train:convpool_s-32px"] = trained
    assert shortfall(state, trained, 99.73, 240, 364) is None


def test_the_slope_needs_enough_epochs():
    assert points_per_doubling([{"epoch": 1, "val_top1": 10.0}, {"epoch": 2, "val_top1": 20.0}]) is None
    rows = [{"epoch": e, "val_top1": 50.0 + 2.0 * (e.bit_length() - 1)} for e in (1, 2, 4, 8, 16, 32)]
    assert points_per_doubling(rows) == pytest.approx(2.0)


def test_one_image_on_a_tiny_val_set_is_luck_not_a_short_budget(state):
    """12 val images: the shipped 83.33% against 91.67% in training is one image (a ship test's own run)."""
    trained = _trained([60.0, 75.0, 83.3, 91.7, 83.3, 83.3], seconds=30)
    state.stages["train:mobilenet_v3_small-w0.5-32px"] = trained
    assert shortfall(state, trained, 83.33, 600, 12) is None
    assert shortfall(state, trained, 83.33, 600, 364) is not None


def test_nothing_shipped_says_why_in_one_line():
    from types import SimpleNamespace

    from mobiforge.ship.report import _headline
    from mobiforge.ship.shortfall import why_nothing_shipped
    from mobiforge.ship.state import Candidate, Row

    fits = Candidate("a", "mobilenet_v2", 0.5, 224, "scratch", status="fits")
    assert "the time budget ran out" in why_nothing_shipped([Row(fits, None, None)], None)
    judged = SimpleNamespace(
        verdicts={"size": True, "above_chance": False}, chosen=SimpleNamespace(top1=100.0, images=2)
    )
    row = Row(fits, None, judged)
    assert "100.00% on 2 val image(s) cannot show that it beats" in why_nothing_shipped([row], row)
    why = why_nothing_shipped([row], row)
    assert _headline(ShipConfig(data="digits"), None, False, why)[0].startswith(
        "**No candidate was trained and exported**: its 100.00% on 2 val image(s)"
    )
    judged.verdicts["size"] = False  # a missed budget: the report's verdicts say it
    assert why_nothing_shipped([row], row) is None
