"""`mobiforge doctor`: each cheap check on generated images, the feature checks (leaks, wrong labels) with the real
pretrained trunk, the report's escaping, the cleaned CSV read back by train, and the user's folder left as it was."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from mobiforge.cli import main
from mobiforge.config import PRETRAINED_TRUNK, DataConfig, DoctorConfig
from mobiforge.data import discover
from mobiforge.doctor import doctor
from mobiforge.doctor.features import (
    LINEAR_PROBE,
    TUNED_BLOCKS,
    TUNED_PROBE,
    datalab_findings,
    pooled_features,
    tuned_out_of_fold_probabilities,
)
from mobiforge.doctor.pixels import COPY_SIMILARITY, similarity, thumbnail, verified_copies, views
from mobiforge.errors import MobiforgeError
from tests.helpers import COLOURS, make_image, small_train_config

pytest.importorskip("cleanlab")


def make_split_folder(root: Path, classes: int, train: int, val: int) -> Path:
    """Train and val photos that all differ (``tests.helpers.make_split_folder`` draws val with train's seeds: its
    val photos are copies of train's, which the doctor rightly reports)."""
    for split, count, offset in (("train", train, 0), ("val", val, 500)):
        for label in range(classes):
            for index in range(count):
                path = root / split / f"class{label}" / f"{index:03d}.png"
                make_image(path, COLOURS[label], 24, seed=label * 1000 + offset + index)
    return root


def folder_state(root: Path) -> dict[str, str]:
    """Every entry under ``root`` with its bytes' digest (folders and links too): what 'unchanged' means."""
    state = {}
    for path in sorted(root.rglob("*")):
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        content = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else ""
        state[str(path.relative_to(root))] = f"{kind}:{content}:{path.stat().st_mtime_ns}"
    return state


def planted_cheap_issues(root: Path) -> Path:
    """A split folder with one of each cheap issue planted."""
    data = make_split_folder(root, classes=3, train=10, val=4)
    first = Image.open(data / "train/class0/000.png").convert("RGB")
    first.save(data / "train/class0/copy-of-000.bmp")  # the same pixels in another format: an exact copy
    Image.open(data / "val/class1/000.png").convert("RGB").save(data / "train/class1/leaked.png")  # val in train
    Image.new("RGB", (4, 4), (200, 10, 10)).save(data / "train/class2/tiny.png")
    Image.new("RGB", (96, 24), (10, 200, 10)).save(data / "train/class2/panorama.png")
    Image.new("L", (24, 24), 128).save(data / "train/class1/gray.png")
    first.convert("CMYK").save(data / "train/class0/print.jpg")
    rotated = first.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways, to be turned upright
    rotated.save(data / "train/class0/sideways.jpg", exif=exif)
    first.save(data / "train/class0/really-a-png.jpg", format="PNG")
    return data


def test_each_cheap_check_finds_what_was_planted(tmp_path: Path) -> None:
    data = planted_cheap_issues(tmp_path / "data")
    before = folder_state(data)
    diagnosis = doctor(DoctorConfig(data=str(data), out=str(tmp_path / "run"), features=False, fix=True, workers=0))
    found = json.loads((tmp_path / "run" / "doctor.json").read_text())["findings"]
    assert folder_state(data) == before  # nothing written, moved or touched in the user's folder

    def paths(key: str) -> set[str]:
        return {entry["path"] for entry in found[key]}

    groups = [{entry["path"] for entry in group} for group in found["exact_duplicates"]]
    assert {"train/class0/000.png", "train/class0/copy-of-000.bmp", "train/class0/really-a-png.jpg"} in groups
    assert [(leak["val"], leak["train"], leak["kind"]) for leak in found["leaked_val"]] == [
        ("val/class1/000.png", "train/class1/leaked.png", "exact")
    ]
    assert paths("tiny") == {"train/class2/tiny.png"} and paths("extreme_aspect") == {"train/class2/panorama.png"}
    assert paths("grayscale_among_colour") == {"train/class1/gray.png"} and paths("cmyk") == {"train/class0/print.jpg"}
    assert paths("exif_rotated") == {"train/class0/sideways.jpg"}
    assert found["lying_extension"] == [
        {"path": "train/class0/really-a-png.jpg", "split": "train", "label": "class0", "format": "PNG"}
    ]
    assert diagnosis.class_counts()["class0"] == {"train": 14, "val": 4}
    verdicts = " ".join(diagnosis.verdicts())
    assert "1 of 12 val photos have a copy or near-copy in train" in verdicts and "exact copies" in verdicts
    assert "1 file is tiny" in verdicts and "1 file has an extreme aspect ratio" in verdicts  # not "1 files"

    # the cleaned split: the leaked val photo and all but one of each set of copies are gone; train reads it
    cleaned = discover(DataConfig(data=str(tmp_path / "run" / "cleaned.csv")))
    val = {Path(path).relative_to(data.resolve()).as_posix() for path, _ in cleaned.val}
    train = {Path(path).relative_to(data.resolve()).as_posix() for path, _ in cleaned.train}
    assert "val/class1/000.png" not in val and len(val) == 11
    assert len({"train/class0/000.png", "train/class0/copy-of-000.bmp", "train/class0/really-a-png.jpg"} & train) == 1
    from mobiforge.train import train as run_training

    config = small_train_config(tmp_path / "run" / "cleaned.csv", tmp_path / "runs", epochs=1)
    assert run_training(config).best_top1 >= 0.0
    assert folder_state(data) == before


def test_a_folder_with_one_class_or_a_class_of_copies_is_a_one_line_error(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "one", classes=1, train=4, val=2)
    with pytest.raises(MobiforgeError, match="single class"):
        doctor(DoctorConfig(data=str(data), out=str(tmp_path / "r1"), features=False, workers=0))
    data = make_split_folder(tmp_path / "copies", classes=2, train=4, val=2)
    for path in (data / "train/class1").iterdir():
        shutil.copyfile(data / "train/class0/000.png", path)  # every class1 photo is a class0 photo
    for path in (data / "val/class1").iterdir():
        shutil.copyfile(data / "train/class0/001.png", path)
    with pytest.raises(MobiforgeError, match=r"every image of class1 is a copy .* a class needs photos of its own"):
        doctor(DoctorConfig(data=str(data), out=str(tmp_path / "r2"), features=False, workers=0))
    assert main(["doctor", str(data), "--no-features", "--out", str(tmp_path / "r3")]) == 2


def test_the_report_escapes_names_and_lists_paths_relative_to_the_folder(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "data", classes=2, train=4, val=2)
    (data / "train/class0").rename(data / "train/<b>class0")
    (data / "val/class0").rename(data / "val/<b>class0")
    source = data / "train/<b>class0/000.png"
    shutil.copyfile(source, data / "train/<b>class0/<img src=x onerror=alert(1)>.png")
    doctor(DoctorConfig(data=str(data), out=str(tmp_path / "run"), features=False, workers=0))
    page = (tmp_path / "run" / "doctor.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert "<b>class0" not in page and "&lt;b&gt;class0" in page
    assert "data:image/jpeg;base64," in page  # the copies are shown, inline
    record = (tmp_path / "run" / "doctor.json").read_text()
    assert str(tmp_path) not in record and str(tmp_path) not in page


def test_the_cli_prints_the_verdicts_or_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = planted_cheap_issues(tmp_path / "data")
    assert main(["doctor", str(data), "--no-features", "--out", str(tmp_path / "run"), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "- 1 of 12 val photos have a copy or near-copy in train" in printed and "doctor.html" in printed
    assert main(["doctor", str(data), "--no-features", "--out", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["findings"]["leaked_val"][0]["kind"] == "exact"


def photo_like(path: Path, seed: int, size: int = 256) -> None:
    """A smooth picture of overlapping shapes, each one unlike the others (a photo's features vary as much)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size), rng.randrange(size)
        box = (x, y, x + rng.randrange(size // 8, size), y + rng.randrange(size // 8, size))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.filter(ImageFilter.GaussianBlur(4)).save(path)


def photo_folder(data: Path) -> Path:
    """Two classes of ``photo_like`` pictures, 12 train and 4 val each, none a copy of another."""
    for split, count, offset in (("train", 12, 0), ("val", 4, 500)):
        for label in range(2):
            for index in range(count):
                photo_like(data / split / f"class{label}" / f"{index:03d}.png", label * 1000 + offset + index)
    return data


def test_the_feature_checks_find_a_brightened_re_encoded_val_photo_in_train(tmp_path: Path) -> None:
    """The real pretrained trunk: a val photo copied into train, brightened and saved as JPEG, is a near-copy leak
    (not an exact one: its pixels differ)."""
    data = photo_folder(tmp_path / "data")
    original = Image.open(data / "val/class1/003.png").convert("RGB")
    ImageEnhance.Brightness(original).enhance(1.15).save(data / "train/class1/brighter-copy.jpg", quality=90)
    diagnosis = doctor(DoctorConfig(data=str(data), out=str(tmp_path / "run"), workers=0))
    leaks = diagnosis.to_dict()["findings"]["leaked_val"]
    assert [(leak["val"], leak["train"], leak["kind"]) for leak in leaks] == [
        ("val/class1/003.png", "train/class1/brighter-copy.jpg", "near")
    ]
    assert not diagnosis.cheap.duplicate_groups
    assert (tmp_path / "run" / "cache").is_dir()  # features cached: a second run reads them back
    again = doctor(DoctorConfig(data=str(data), out=str(tmp_path / "run"), workers=0))
    assert again.to_dict()["findings"]["leaked_val"] == leaks


def test_the_feature_checks_rank_a_misfiled_photo_first(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "data", classes=3, train=16, val=6)
    shutil.move(data / "train/class0/005.png", data / "train/class1/misfiled.png")
    diagnosis = doctor(DoctorConfig(data=str(data), out=str(tmp_path / "run"), workers=0))
    issues = diagnosis.to_dict()["findings"]["label_issues"]
    assert issues[0]["path"] == "train/class1/misfiled.png" and issues[0]["suggested"] == "class0"
    assert issues[0]["confidence"] > 0.5 and "mislabelled" in " ".join(diagnosis.verdicts())
    assert diagnosis.features is not None and len(diagnosis.features.label_scores) == len(diagnosis.facts)
    assert diagnosis.facts[int(np.nanargmin(diagnosis.features.label_scores))].path.endswith("misfiled.png")
    assert set(diagnosis.to_dict()["probes_top1_out_of_fold"]) == {LINEAR_PROBE, TUNED_PROBE}  # a small folder


def test_the_labels_are_judged_by_the_probe_that_agrees_more_with_them_out_of_fold() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 20)
    guessing = np.eye(2)[1 - labels] * 0.6 + 0.2  # the linear probe is wrong throughout
    knowing = np.eye(2)[labels] * 0.9 + 0.05
    knowing[3] = [0.05, 0.95]  # ... and says one photo of class 0 belongs to class 1
    knowing[10] = [0.45, 0.55]  # and leans the wrong way on another, which sits among its own class
    sits = labels.copy()
    sits[3] = 1
    features = (rng.normal(size=(40, 8)) + 4 * np.eye(8)[sits]).astype(np.float32)
    found = datalab_findings(features, labels, guessing, knowing)
    # photo 10's neighbours outvote the probe's lean (blended 0.3, as the linear probe's are): 39 of 40 agree
    assert found.probe == TUNED_PROBE and found.probe_accuracy == pytest.approx(97.5)
    assert set(found.probe_accuracies) == {LINEAR_PROBE, TUNED_PROBE}
    assert [issue[:2] for issue in found.label_issues] == [(3, 1)]
    assert datalab_findings(features, labels, knowing).probe == LINEAR_PROBE  # the linear probe alone


def test_the_tuned_probe_holds_each_photo_out_and_the_pooled_features_match_the_whole_trunk() -> None:
    torch = pytest.importorskip("torch")
    from mobiforge.models import create_model
    from mobiforge.transfer import cut_index

    model = create_model(PRETRAINED_TRUNK, pretrained=False).eval()
    images = torch.randn(12, 3, 64, 64)
    with torch.inference_mode():
        activations = model.features[: cut_index(model, TUNED_BLOCKS)](images)
        whole = torch.nn.functional.adaptive_avg_pool2d(model.forward_features(images), 1).flatten(1)
    np.testing.assert_allclose(pooled_features(model, activations, TUNED_BLOCKS), whole.numpy(), atol=1e-4)
    labels = np.array([0] * 6 + [1] * 5 + [2])  # class 2 has one photo: it cannot be held out
    probabilities = tuned_out_of_fold_probabilities(model, activations, labels, 3, folds=3, seed=0)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert probabilities[11].tolist() == [0.0, 0.0, 1.0]


def test_photos_left_unfitted_are_judged_by_the_tuned_probe_but_never_taught_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = pytest.importorskip("torch")
    import mobiforge.doctor.features as features
    from mobiforge.models import create_model
    from mobiforge.transfer import cut_index

    model = create_model(PRETRAINED_TRUNK, pretrained=False).eval()
    with torch.inference_mode():
        activations = model.features[: cut_index(model, TUNED_BLOCKS)](torch.randn(12, 3, 64, 64))
    labels = np.array([0] * 6 + [1] * 6)
    fitted: list[set[int]] = []
    original = features.TensorDataset

    def spy(rows: torch.Tensor, targets: torch.Tensor) -> object:
        fitted.append({index for index in range(12) if any(torch.equal(row, activations[index]) for row in rows)})
        return original(rows, targets)

    monkeypatch.setattr(features, "TensorDataset", spy)
    monkeypatch.setattr(features, "TUNED_EPOCHS", 1)
    unfitted = np.zeros(12, dtype=bool)
    unfitted[[0, 7]] = True
    probabilities = tuned_out_of_fold_probabilities(model, activations, labels, 2, folds=3, seed=0, unfitted=unfitted)
    assert len(fitted) == 3 and not any({0, 7} & rows for rows in fitted)  # every fold, neither photo taught
    assert set().union(*fitted) == set(range(12)) - {0, 7}
    assert probabilities[0].sum() == pytest.approx(1.0) and probabilities[0].max() < 1.0  # judged, held out


def test_ship_scores_the_gate_without_the_leaked_val_photos() -> None:
    from mobiforge.ship.health import without_leaks
    from mobiforge.ship.state import DataHealth

    health = DataHealth(leaked_val=["val/a/1.png", "val/a/2.png", "val/b/9.png"])
    gate = ["val/a/1.png", "val/a/2.png", "val/a/3.png", "val/b/4.png", "val/b/5.png"]  # val/b/9.png: not gated
    # 5 gated, 2 of them leaked; wrong: one leaked and one clean photo -> 2 of the 3 clean ones right
    assert without_leaks(health, ["val/a/1.png", "val/b/4.png"], 5, gate) == (pytest.approx(200 / 3), 2)
    assert without_leaks(DataHealth(), [], 5, gate) is None
    assert without_leaks(DataHealth(leaked_val=gate), [], 5, gate) is None  # all leaked: no score without them


def test_dedupe_val_leaves_the_leaked_photos_out_of_the_gate_unless_none_would_be_left(tmp_path: Path) -> None:
    """``ship --dedupe-val``: the gate judges on the val photos without a copy in train; off by default; when
    every val photo has one, the gate judges on all of them (nothing else to judge on) and the report says so."""
    from types import SimpleNamespace

    from mobiforge.config import ShipConfig
    from mobiforge.ship.health import gate_images
    from mobiforge.ship.report import _health_table, _leak_free_score
    from mobiforge.ship.stages import left_out_of_gate
    from mobiforge.ship.state import DataHealth

    data = make_split_folder(tmp_path / "data", classes=2, train=4, val=3)
    leaked = ["val/class0/000.png", "val/class1/002.png"]
    state = SimpleNamespace(
        health=DataHealth(leaked_val=leaked), survey=SimpleNamespace(val_images=6, classes=["class0", "class1"])
    )
    config = ShipConfig(data=str(data))
    assert left_out_of_gate(config, state) == ()  # off by default: the report gives both scores
    deduped = ShipConfig(data=str(data), dedupe_val=True)
    assert left_out_of_gate(deduped, state) == tuple(leaked)
    assert sorted(gate_images(deduped, state)) == sorted(
        f"val/class{label}/{index:03d}.png" for label in range(2) for index in range(3) if
        f"val/class{label}/{index:03d}.png" not in leaked
    )  # fmt: skip
    shipped = SimpleNamespace(top1=75.0, images=4, wrong_images=["val/class0/001.png"])
    focus = SimpleNamespace(exported=SimpleNamespace(chosen=shipped))
    assert _leak_free_score(deduped, state, focus) == (75.0, 2)  # the gate's own score is already without them
    assert (
        "--dedupe-val: the gate judged on the val photos without the 2"
        in _health_table(deduped, state, focus, (75.0, 2))[-2][0]
    )
    everything = SimpleNamespace(health=DataHealth(leaked_val=leaked), survey=SimpleNamespace(val_images=2))
    assert left_out_of_gate(deduped, everything) == ()
    assert "every val photo has a copy" in " ".join(row[0] for row in _health_table(deduped, everything, None, None))


def test_a_folder_of_small_images_is_not_tiny_throughout() -> None:
    """Digits are 8 px: the folder is small-image data, not a folder of tiny strays; a 2 px one among them is."""
    from mobiforge.doctor.files import FileFacts, cheap_findings

    facts = [FileFacts(f"{index}.png", "train", 0, width=8, height=8, digest=str(index)) for index in range(10)]
    facts.append(FileFacts("stray.png", "train", 0, width=2, height=2, digest="stray"))
    assert cheap_findings(facts, tiny_floor=16, tiny_fraction=0.25, max_aspect=3.0).tiny == [10]


def test_ship_skips_the_feature_checks_that_would_not_fit_its_time(tmp_path: Path) -> None:
    from mobiforge.ship.health import feature_health
    from mobiforge.ship.state import DataHealth, Survey
    from tests.helpers import ship_run

    class State:
        survey = Survey(classes=["a", "b"], train_images=50_000, val_images=10_000)
        health = DataHealth(verdicts=["cheap"], features=False)

        def left(self) -> float:
            return 600.0  # 60,000 images' feature checks take minutes: more than 5% of 10

    skipped = feature_health(ship_run(State(), run_dir=tmp_path))  # type: ignore[arg-type]
    assert skipped.verdicts == ["cheap"] and not skipped.features
    assert "feature checks were skipped: ~210 s for 60000 images" in skipped.note
    assert State.health.note == ""  # the cheap record itself is left as it was


def test_the_report_opens_in_a_real_browser_with_its_thumbnails_and_no_script_run(tmp_path: Path) -> None:
    """doctor.html in Debian's chromium: every thumbnail decodes, and a file named like markup stays text (its
    onerror handler, were it parsed, would set the page's title)."""
    from tests.test_serve import chromium_or_skip

    executable, sync_playwright = chromium_or_skip()
    data = make_split_folder(tmp_path / "data", classes=2, train=4, val=2)
    hostile = "<img src=x onerror=document.title='pwned'>.png"
    shutil.copyfile(data / "train/class0/000.png", data / "train/class0" / hostile)
    doctor(DoctorConfig(data=str(data), out=str(tmp_path / "run"), features=False, workers=0))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((tmp_path / "run" / "doctor.html").as_uri())
        loaded = page.eval_on_selector_all("figure img", "images => images.map(image => image.naturalWidth > 0)")
        title, text = page.title(), page.inner_text("body")
        browser.close()
    assert loaded and all(loaded)
    assert title == "mobiforge doctor" and hostile in text


def test_a_missing_folder_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error == f"mobiforge doctor: error: {tmp_path / 'nowhere'}: no such folder; give an image folder, a "
        "labels.csv or 'digits'"
    )


def test_the_pixel_check_confirms_crops_mirrors_and_brightness_and_refuses_look_alikes(tmp_path: Path) -> None:
    """Features only propose (here: every train photo is as near as any); thumbnails decide. A 5% crop, a mirror
    and a brighter JPEG of the val photo are copies; other photos, and a copy beyond the features' reach, are not."""
    photo_like(tmp_path / "val.png", 1)
    original = Image.open(tmp_path / "val.png").convert("RGB")
    width, height = original.size
    changed = {
        "crop": original.crop(
            (round(0.025 * width), round(0.025 * height), round(0.975 * width), round(0.975 * height))
        ),
        "mirror": ImageOps.mirror(original),
        "brighter": ImageEnhance.Brightness(original).enhance(1.2),
    }
    thumbs = [thumbnail(original)]
    for name, image in changed.items():
        image.save(tmp_path / f"{name}.jpg", quality=75)
        thumbs.append(thumbnail(Image.open(tmp_path / f"{name}.jpg").convert("RGB")))
    for seed in range(2, 6):
        photo_like(tmp_path / f"other{seed}.png", seed)
        thumbs.append(thumbnail(Image.open(tmp_path / f"other{seed}.png").convert("RGB")))
    vectors = np.tile(np.array([[0.5, 1.0, 0.0, 0.0]], dtype=np.float32), (len(thumbs), 1))
    vectors[0] = [1.0, 0.0, 0.0, 0.0]
    vectors[1:4, 1] = [0.10, 0.11, 0.12]  # the copies nearest by features: the candidates checked
    for index in range(4):
        assert similarity(views(thumbs[0]), views(thumbs[index])) >= COPY_SIMILARITY
    for index in range(4, len(thumbs)):
        assert similarity(views(thumbs[0]), views(thumbs[index])) < COPY_SIMILARITY
    [found] = verified_copies(thumbs, vectors, train=range(1, len(thumbs)), val=[0])
    assert found.val == 0 and sorted(found.train) == [1, 2, 3] and found.similarity >= 0.95
    far = vectors.copy()
    far[1:4] = [[0.0, 0.0, 1.0, 0.0]] * 3  # the copies' features far from the val photo: never proposed
    assert verified_copies(thumbs, far, train=range(1, len(thumbs)), val=[0]) == []


def test_a_leak_lists_every_train_copy_and_its_pixel_similarity_in_the_json(tmp_path: Path) -> None:
    """Two near copies of one val photo in train: the leak names the closer, lists the other, and says how well
    their pixels correlate (doctor.json and the report)."""
    data = photo_folder(tmp_path / "data")
    original = Image.open(data / "val/class0/002.png").convert("RGB")
    original.save(data / "train/class0/copy-a.jpg", quality=80)
    ImageEnhance.Brightness(original).enhance(1.1).save(data / "train/class0/copy-b.jpg", quality=80)
    diagnosis = doctor(DoctorConfig(data=str(data), out=str(tmp_path / "run"), workers=0))
    [leak] = diagnosis.to_dict()["findings"]["leaked_val"]
    assert leak["val"] == "val/class0/002.png" and leak["pixel_similarity"] >= COPY_SIMILARITY
    assert {leak["train"], *leak["more_train_copies"]} == {"train/class0/copy-a.jpg", "train/class0/copy-b.jpg"}
    assert "pixels correlate" in (tmp_path / "run" / "doctor.html").read_text()
    listed = (tmp_path / "run" / "leaked_val.txt").read_text().splitlines()  # for export --exclude-val
    assert listed[0].startswith("#") and listed[1:] == ["val/class0/002.png"]
