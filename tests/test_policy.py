"""Ship's policy in one module, and its time as a value (issue 45, item 2)."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

import mobiforge.ship as ship_package
from mobiforge.ship.budget import TimeBudget

SHIP = Path(ship_package.__file__).parent
STAGE_MODULES = ("stages", "pipeline", "search", "ladder", "plan", "probes", "shortfall", "budget")
# Numbers that are not tuning values: zero and one, percent, megabytes, "any time" (a rung's cost alone)
NOT_TUNING = {0.0, 1.0, 100.0, 1e6, 1e9}
NOT_TUNING_IN = {
    "search": {0.1, 0.5, 1.5},  # the ranges of the random BatchNorm values a measured file is made with
    "ladder": {1e-4},  # the rate of a speed probe's optimizer: it times steps, it learns nothing
    "probes": {1e-3},  # (the same)
}


def _float_literals(path: Path) -> list[tuple[int, float]]:
    """The float constants of a module's code, its docstrings aside."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and type(node.value) is float and id(node) not in docstrings
    ]


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_no_tuning_value_is_written_inline_in_a_stage(module: str) -> None:
    """Every knob of ship lives in ``ship/policy.py`` with its reason; a stage names it."""
    allowed = NOT_TUNING | NOT_TUNING_IN.get(module, set())
    inline = [(line, value) for line, value in _float_literals(SHIP / f"{module}.py") if value not in allowed]
    assert not inline, f"ship/{module}.py: tuning values written inline (lines, values): {inline}"


def test_the_policy_names_every_recipe_ship_trains_with() -> None:
    from mobiforge.ship import policy

    assert policy.distilled_from("t.pt").teacher == "t.pt"
    assert policy.distilled_from("t.pt").alpha == policy.DISTILLATION.alpha
    for recipe in (policy.CACHED_TAIL, policy.TEACHER_FULL, policy.STUDENT_FROM_TEACHER, policy.STUDENT_AFTER_TAIL):
        assert recipe.scheduler == "cosine"
    assert policy.SCRATCH_SGD.scheduler == "onecycle" and policy.SCRATCH_SHORT.optimizer == "adamw"


def test_a_time_budget_shares_its_time_and_hands_on_what_its_successors_cannot_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = 1_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    run = TimeBudget(now + 600)
    assert run.left() == 600 and run.end == run.cutoff == now + 600

    exports = run.split(100)  # 100 s held back for the exports after it
    assert exports.left() == 500 and exports.cutoff == now + 500

    student = exports.share(0.75, keep=40)  # its own export's 40 s stay held back, the rest is spare
    assert student.left() == pytest.approx(375)
    assert student.spare == pytest.approx(500 - 375 + 100 - 40)
    assert student.latest == now + 600 - 40  # with every spare second taken, up to its own export
    student.take_spare(25)  # what its shortest rung lacks
    assert student.left() == pytest.approx(400) and student.spare == pytest.approx(160)
    assert student.cutoff == now + 560  # the others' exports are its now
    student.take_spare()
    assert student.left() == pytest.approx(560) and student.spare == 0

    now += 100  # time passes: the budget's end stays where it was
    assert student.left() == pytest.approx(460)
    late = TimeBudget(now - 5)
    assert late.left() == -5  # past its end: negative, and a share of it is nothing
    assert late.share(0.5).seconds < 0


def test_a_budget_without_spare_keeps_its_cutoff() -> None:
    budget = TimeBudget(time.time() + 60, reserve=20, seconds=10)
    budget.take_spare()
    assert budget.cutoff == budget.deadline - 20 and budget.seconds == 10
