"""Say when the budget was not enough (issue 43, item 2): a shipped model far below what this run itself showed
was reachable gets a headline, in the report and on the terminal, naming a budget that would likely suffice.

What was reachable comes from the run's own measurements: the teacher's ladder rungs and every trained candidate's
best val top-1, and the shipped candidate's training curve (val top-1 against the logarithm of its epochs: on
CIFAR-10 a conv net gained about 0.7 points per doubling of its epochs late in training, RESULTS.md#ship_cifar10,
and far more early on). A 4-minute digits run once shipped 19% while its curve was still climbing steeply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mobiforge.ship.policy import CURVE_MIN_EPOCHS, FLAT_SLOPE, MAX_DOUBLINGS, NOISE_IMAGES, SHORTFALL_POINTS
from mobiforge.ship.state import TEACHER, TRAIN, Row, ShipState, TrainRecord


@dataclass
class Shortfall:
    shipped_top1: float  # of the shipped model, or of the closest one where nothing shipped
    shipped: bool
    far_points: float  # what counted as far below here
    reachable_top1: float | None  # the best any stage of the run measured, and which one
    reachable_from: str | None
    points_per_doubling: float | None  # the shipped candidate's curve, late half
    suggested_budget_s: float | None  # None: the curve does not say that more time would close the gap
    expected_top1: float | None  # what the suggested budget would likely reach

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def points_per_doubling(history: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of val top-1 against log2(epoch), over the later half of the epochs."""
    points = [(math.log2(row["epoch"]), row["val_top1"]) for row in history if row.get("val_top1") is not None]
    late = points[len(points) // 2 :]
    if len(late) < CURVE_MIN_EPOCHS:
        return None
    mean_x = sum(x for x, _ in late) / len(late)
    mean_y = sum(y for _, y in late) / len(late)
    spread = sum((x - mean_x) ** 2 for x, _ in late)
    return sum((x - mean_x) * (y - mean_y) for x, y in late) / spread if spread else None


def reachable(state: ShipState) -> tuple[float, str] | None:
    """The best val top-1 any stage of this run measured, and the stage."""
    found: list[tuple[float, str]] = []
    teacher = state.done(TEACHER)
    if teacher is not None:
        found += [(rung.top1, f"the teacher's {rung.name} rung") for rung in teacher.rungs]
        if teacher.trained is not None and teacher.trained.best_top1 is not None:
            found.append((teacher.trained.best_top1, "the teacher"))
    for name, record in state.records(TRAIN).items():
        if record.best_top1 is not None:
            found.append((record.best_top1, f"{name} (fp32, in training)"))
    return max(found) if found else None


def _train_seconds(record: TrainRecord) -> float:
    return record.seconds or sum(row.get("epoch_seconds") or 0.0 for row in record.history)


def threshold(val_images: int) -> float:
    """Points of val top-1 that count as far below: SHORTFALL_POINTS, or NOISE_IMAGES images on a small val set."""
    return max(SHORTFALL_POINTS, 100.0 * NOISE_IMAGES / max(1, val_images))


def shortfall(
    state: ShipState,
    trained: TrainRecord | None,
    shipped_top1: float,
    budget_s: float,
    val_images: int,
    shipped: bool = True,
) -> Shortfall | None:
    """The headline's facts, or None when the shipped model is about as good as this run showed possible."""
    far = threshold(val_images)
    best = reachable(state)
    gap = best[0] - shipped_top1 if best else 0.0
    slope = points_per_doubling(trained.history) if trained is not None else None
    climbing = slope is not None and min(slope, 100.0 - shipped_top1) >= far
    if gap < far and not climbing:
        return None
    suggested = expected = None
    if trained is not None and slope is not None and slope >= FLAT_SLOPE:
        last = trained.history[-1]["val_top1"]
        goal = min(best[0] - 1.0 if best and gap >= far else 100.0, last + slope * MAX_DOUBLINGS)
        doublings = max(1.0, min(MAX_DOUBLINGS, (goal - last) / slope))
        seconds = _train_seconds(trained)
        if seconds > 0:
            suggested = math.ceil(((budget_s - seconds) + seconds * 2**doublings) / 60) * 60
            expected = min(100.0, last + slope * doublings)
    return Shortfall(
        shipped_top1=shipped_top1,
        shipped=shipped,
        far_points=far,
        reachable_top1=best[0] if best else None,
        reachable_from=best[1] if best else None,
        points_per_doubling=slope,
        suggested_budget_s=suggested,
        expected_top1=expected,
    )


def headline(short: dict[str, Any]) -> str:
    """The one sentence the report and the terminal both show."""
    which = "shipped" if short.get("shipped", True) else "closest"
    parts = [f"**The budget was not enough**: the {which} model scores {short['shipped_top1']:.2f}%"]
    if short["reachable_top1"] is not None and short["reachable_top1"] - short["shipped_top1"] >= short["far_points"]:
        parts.append(f", while {short['reachable_from']} reached {short['reachable_top1']:.2f}% in this run")
    slope = short["points_per_doubling"]
    if slope is not None:
        parts.append(f"; its training curve still gained {slope:.1f} points per doubling of its epochs")
    if short["suggested_budget_s"] is not None:
        minutes = short["suggested_budget_s"] / 60
        parts.append(
            f". A budget of about {minutes:.0f} min would likely reach {short['expected_top1']:.1f}% (from the "
            f"measured curve): rerun with --time-budget {minutes:.0f}m and a new --out"
        )
    else:
        parts.append(". More time alone is not expected to close the gap (the curve had flattened)")
    return "".join(parts) + "."


def out_of_time(fitting: int) -> str:
    """Why nothing shipped when candidates fit the size and latency budget but the time ran out before one trained."""
    return (
        f"the time budget ran out before any candidate was trained and exported ({fitting} fit the size and latency "
        "budget); rerun with a longer --time-budget and a new --out"
    )


def not_shown_above_chance(top1: float, images: int) -> str:
    """Why nothing shipped when the only failed verdict is the above-chance test: the val split is too small."""
    return (
        f"its {top1:.2f}% on {images} val image(s) cannot show that it beats answering the largest class; add "
        "images (a few dozen per class at least) and ship again"
    )


def why_nothing_shipped(rows: list[Row], closest: Row | None) -> str | None:
    """The reason, in one line, where it is not simply a budget the candidates missed (the report lists those)."""
    fitting = sum(row.candidate.fits for row in rows)
    if fitting and not any(row.exported for row in rows):
        return out_of_time(fitting)
    if closest is not None and closest.exported is not None:
        failed = [name for name, ok in closest.exported.verdicts.items() if not ok]
        if failed == ["above_chance"]:
            return not_shown_above_chance(closest.exported.chosen.top1, closest.exported.chosen.images)
    return None
