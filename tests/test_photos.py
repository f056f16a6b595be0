"""Photos as phones take them (issue 24, item 8): HEIC/HEIF files and portrait JPEGs stored sideways with an EXIF
orientation tag, generated here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from mobiforge.config import DataConfig
from mobiforge.data import discover, load_rgb
from mobiforge.errors import MobiforgeError

ORIENTATION = 0x0112  # the EXIF tag
ROTATED_90_CW = 6  # "the 0th row is the visual right-hand side": turn 90 degrees clockwise to view


def test_heic_photos_are_found_and_decoded(tmp_path: Path) -> None:
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for index in range(3):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.new("RGB", (64, 48), colour).save(tmp_path / name / f"IMG_{index}.HEIC")
    splits = discover(DataConfig(data=str(tmp_path), val_split=0.34))
    assert splits.classes == ["blue", "red"] and len(splits.train) + len(splits.val) == 6
    red = load_rgb(str(tmp_path / "red" / "IMG_0.HEIC"))
    assert red.size == (64, 48)
    assert all(abs(a - b) <= 8 for a, b in zip(red.getpixel((10, 10)), (200, 30, 30), strict=True))


def test_a_portrait_photo_is_turned_upright_by_its_exif_orientation(tmp_path: Path) -> None:
    stored = Image.new("RGB", (60, 40), (255, 255, 255))  # as the sensor wrote it: landscape
    for x in range(10):
        for y in range(10):
            stored.putpixel((x, y), (0, 0, 0))  # a black corner at the stored top left
    exif = stored.getexif()
    exif[ORIENTATION] = ROTATED_90_CW
    stored.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    upright = load_rgb(str(tmp_path / "portrait.jpg"))
    assert upright.size == (40, 60)  # portrait, as the phone showed it
    assert max(upright.getpixel((35, 3))) < 60 and min(upright.getpixel((3, 3))) > 200  # the corner is top right
    assert load_rgb(str(tmp_path / "portrait.jpg"), draft_size=20).size == (
        20,
        30,
    )  # drafted at half scale, then turned


def _photos(root: Path, count: int = 4) -> list[str]:
    lines = []
    for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        for index in range(count):
            path = root / "photos" / f"{label}_{index}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), colour).save(path)
            lines.append(f"photos/{path.name},{label}")
    return lines


def test_a_labels_csv_replaces_class_folders(tmp_path: Path) -> None:
    """Issue 24, item 8: `--data labels.csv`, a path,label table with paths relative to the CSV."""
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "\n".join(_photos(tmp_path)) + "\n")
    splits = discover(DataConfig(data=str(table), val_split=0.25))
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 6 and len(splits.val) == 2
    assert all(Path(path).is_absolute() and Path(path).is_file() for path, _ in splits.train + splits.val)
    with_split = tmp_path / "split.csv"
    rows = _photos(tmp_path)
    with_split.write_text("\n".join(f"{row},{'val' if i % 4 == 0 else 'train'}" for i, row in enumerate(rows)))
    own = discover(DataConfig(data=str(with_split)))
    assert len(own.val) == 2 and len(own.train) == 6  # its own split column, no header


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("photos/none.jpg,cat\nphotos/none2.jpg,dog\n", "2 of 2 image paths do not exist (first: "),
        ("photos/cat_0.jpg\n", "row 1: expected path,label[,split]"),
        ("photos/cat_0.jpg,cat,holdout\n", "split 'holdout' is not train, val or test"),
        ("path,label\n", "no rows"),
        ("photos/cat_0.jpg,cat\nphotos/cat_1.jpg,cat\n", "a single class (cat)"),
        # issue 44 item 7: rows without a split beside rows with one were dropped; val-only classes accepted;
        # a row listed twice counted twice
        (
            "photos/cat_0.jpg,cat,train\nphotos/cat_1.jpg,cat\nphotos/dog_0.jpg,dog,train\nphotos/dog_1.jpg,dog,val\n",
            "1 of 4 rows have no split while others do (first: ",
        ),
        ("photos/cat_0.jpg,cat,train\nphotos/cat_1.jpg,cat,val\nphotos/dog_0.jpg,dog,val\n", "no train rows: dog"),
        (
            "photos/cat_0.jpg,cat,train\nphotos/cat_0.jpg,cat,train\nphotos/cat_1.jpg,cat,val\n"
            "photos/dog_0.jpg,dog,train\nphotos/dog_1.jpg,dog,val\n",
            "is listed twice (train cat and train cat): keep one row",
        ),
    ],
    ids=["missing", "short", "split", "empty", "one class", "unsplit rows", "val-only class", "twice"],
)
def test_a_bad_labels_csv_is_one_line_naming_the_row(tmp_path: Path, content: str, message: str) -> None:
    _photos(tmp_path)
    table = tmp_path / "labels.csv"
    table.write_text(content)
    with pytest.raises(MobiforgeError, match=re.escape(message)):
        discover(DataConfig(data=str(table)))
