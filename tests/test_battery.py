"""The battery (issue 43, item 3): generated rows, how a run's outcome is read and judged, crash handling; and the
survey's check that fails a folder of non-images before the search spends the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import battery, results
from mobiforge.config import ShipConfig
from mobiforge.errors import MobiforgeError
from mobiforge.ship.search import survey


def test_generated_rows_are_photo_like_folders(tmp_path):
    folder = Path(battery.generated("tiny", 2, 12, unreadable_class=True)(tmp_path))
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert classes == ["broken", "ellipse_00", "rectangle_01"]
    for name in classes[1:]:
        files = sorted((folder / name).glob("*.jpg"))
        assert len(files) == 12
        with Image.open(files[0]) as image:
            assert image.format == "JPEG" and min(image.size) >= 140
    assert battery.generated("tiny", 2, 12)(tmp_path) == str(folder)  # written once, then found


def _outcome(tmp_path, rc=0, log="done\n", card=None, state=None, wall=100.0, budget=120.0):
    path = tmp_path / "ship.log"
    path.write_text(log)
    return battery.Outcome(rc, wall, budget, path, card, state, battery._last_line(path))


def test_a_one_line_refusal_is_an_error_and_a_traceback_is_not(tmp_path):
    refused = _outcome(tmp_path, rc=2, log="mobiforge ship: error: X has a single class (a); a classifier needs two\n")
    assert refused.error.startswith("mobiforge ship: error:") and battery.ships_or_refuses(refused)
    crashed = _outcome(tmp_path, rc=1, log="Traceback (most recent call last):\n  ...\nValueError: boom\n")
    assert crashed.error is None and not battery.ships_or_refuses(crashed)
    late = _outcome(tmp_path, rc=2, log="mobiforge ship: error: refused\n", wall=140.0)
    assert not battery.ships_or_refuses(late)  # over the budget + 10%


CARD = {"shipped": True, "model": {"candidate": "convpool_s-32px"}, "artifact": {"bytes": 650_000},
        "accuracy": {"top1_in_runtime": 99.5, "top1_fp32_pytorch": 99.7}, "latency_ms": {"median": 0.2},
        "budget": {"verdicts": {"above_chance": True}}}  # fmt: skip
STATE = {"stages": {"survey": {"train_images": 100, "val_images": 20},
                    "teacher": {"rungs": [{"top1": 90.0}, {"top1": 95.0}], "best_top1": 94.0}},
         "finished_at_s": {"survey": 2.0, "search": 30.5, "teacher": 80.0}}  # fmt: skip


def test_targets_read_the_card_and_the_teachers_rungs(tmp_path):
    out = _outcome(tmp_path, card=CARD, state=STATE)
    assert out.teacher_best == 95.0 and out.shipped and out.top1 == 99.5
    assert battery.at_least(99.0)(out) and not battery.at_least(99.6)(out)
    assert battery.near_teacher(1.0)(out) and battery.above_chance(out)
    below = _outcome(tmp_path, card={**CARD, "accuracy": {"top1_in_runtime": 93.0, "top1_fp32_pytorch": 93.0}},
                     state=STATE)  # fmt: skip
    assert not battery.near_teacher(1.0)(below)
    assert battery.stage_seconds(STATE) == {"survey": 2.0, "search": 28.5, "teacher": 49.5}


def test_a_crashed_row_is_recorded_as_a_failure_and_the_battery_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RECORDS", tmp_path / "results")
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(results, "TABLE_FILES", [tmp_path / "README.md"])
    monkeypatch.setattr(results, "machine", lambda: {"described": "a test machine"})
    calls = []

    def fake_run(row, data, work):
        calls.append(row.name)
        if row.name == "one_class":
            return _outcome(tmp_path, rc=1, log="Traceback (most recent call last):\nRuntimeError: boom\n", wall=5)
        return _outcome(tmp_path, rc=2, log=f"mobiforge ship: error: {data} has one image per class\n", wall=5)

    monkeypatch.setattr(battery, "run_row", fake_run)
    rows = [row for row in battery.ROWS if row.name in ("one_class", "one_image_per_class")]
    summary = battery.run_battery(rows, tmp_path, repeat=1)
    assert calls == ["one_class", "one_image_per_class"]
    assert summary == [("one_class", "NOT MET"), ("one_image_per_class", "met")]
    record = json.loads((tmp_path / "results" / "battery_one_class.json").read_text())
    assert record["figures"]["last_line"] == "RuntimeError: boom" and not record["figures"]["target_met"]
    assert str(tmp_path) not in json.dumps(record)  # a record is shared: no path of this machine
    assert "**failed** (exit 1)" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow
def test_a_single_class_folder_is_refused_in_one_line_within_its_budget(tmp_path):
    row = next(row for row in battery.ROWS if row.name == "one_class")
    out = battery.run_row(row, row.data(tmp_path / "data"), tmp_path)
    assert out.rc == 2 and "single class" in out.error and row.met(out)


def _folder(tmp_path, broken_files: dict[str, int]) -> Path:
    for index, name in enumerate(("cats", "dogs")):
        (tmp_path / name).mkdir()
        for number in range(6):
            Image.new("RGB", (40, 40), (index * 200, 50, 50)).save(tmp_path / name / f"{number}.png")
    for name, count in broken_files.items():
        (tmp_path / name).mkdir(exist_ok=True)
        for number in range(count):
            (tmp_path / name / f"bad{number}.jpg").write_text("not an image")
    return tmp_path


def test_survey_refuses_a_class_with_no_image_before_the_search(tmp_path):
    data = _folder(tmp_path, {"broken": 4})
    for skip in (False, True):
        with pytest.raises(MobiforgeError, match=r"class 'broken' holds no readable image \(4 file"):
            survey(ShipConfig(data=str(data), skip_bad_images=skip))


def test_survey_lists_stray_files_unless_told_to_skip_them(tmp_path):
    data = _folder(tmp_path, {"dogs": 1})
    with pytest.raises(MobiforgeError, match=r"1 image file\(s\) cannot be decoded: .*bad0\.jpg.*--skip-bad-images"):
        survey(ShipConfig(data=str(data)))
    assert survey(ShipConfig(data=str(data), skip_bad_images=True)).classes == ["cats", "dogs"]


def test_the_cost_growth_benchmark_links_each_size_and_tabulates_what_each_stage_used(tmp_path):
    from benchmarks import cost_growth

    full = tmp_path / "full"
    for split, count in (("train", 5), ("test", 2)):
        for name in ("a", "b"):
            (full / split / name).mkdir(parents=True)
            for number in range(count):
                (full / split / name / f"{number:04d}.jpg").write_bytes(b"x")
    folder = cost_growth.linked_folder(full, tmp_path / "four", 4)
    assert sorted(p.name for p in (folder / "train" / "a").iterdir()) == ["0000.jpg", "0001.jpg"]
    assert len(list((folder / "test" / "b").iterdir())) == 2 and (folder / "train" / "a" / "0000.jpg").is_symlink()
    state = {"stages": {"teacher": {"rungs": [{"name": "linear probe", "images": 4, "views": 2, "seconds": 30.0,
                                               "top1": 80.0, "trunk_pass": "onnxruntime int8"}]},
                        "train:student": {"rung": "last 9 blocks", "images": 4, "views": 8, "seconds": 100.0,
                                          "top1": 85.0, "epochs_run": 3}},
             "finished_at_s": {"survey": 1.0, "search": 5.0, "teacher": 40.0, "train:student": 150.0}}  # fmt: skip
    used = battery.trained_on(state)
    assert [row["what"] for row in used] == ["teacher: linear probe", "student: last 9 blocks"]
    figures = {"images": 4, "wall_s": 200.0, "top1_runtime": 84.5, "stages_s": battery.stage_seconds(state),
               "trained_on": used}  # fmt: skip
    table = cost_growth.summary_body([({"commit": "abc1234"}, figures)])
    assert (
        "| 4 | 1 | 4 | 35 | 110 | 0 | 0 | 3.3 min | linear probe 4 x 2 | last 9 blocks 4 x 8 | 84.50% | abc1234 |"
        in table
    )


def test_the_short_large_folder_row_asks_for_a_probe_on_a_subset(tmp_path):
    def state(images):
        rungs = [{"name": "linear probe", "top1": 80.0, "images": images}]
        return {"stages": {"survey": {"train_images": 50_000, "val_images": 1000}, "teacher": {"rungs": rungs}}}

    met = battery.on_a_subset(0.05)
    assert met(_outcome(tmp_path, card=CARD, state=state(18_000), wall=600.0, budget=600.0))
    assert not met(_outcome(tmp_path, card=CARD, state=state(50_000), wall=600.0, budget=600.0))
    assert not met(_outcome(tmp_path, card=CARD, state=state(18_000), wall=700.0, budget=600.0))  # over budget + 5%
