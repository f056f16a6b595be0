"""Data discovery, splits, bad files and transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from mobiforge.data import (
    DataConfig,
    ImageSamples,
    cache_specs,
    check_images,
    decode_into_memory,
    discover,
    eval_stages,
    eval_transform,
    materialize_digits,
    preprocess_for,
    stratified_split,
    train_stages,
    train_transform,
)
from mobiforge.errors import MobiforgeError
from tests.helpers import make_folder, make_image, make_split_folder


def test_train_val_layout(tmp_path: Path) -> None:
    splits = discover(DataConfig(data=str(make_split_folder(tmp_path))))
    assert splits.classes == ["class0", "class1", "class2"]
    assert len(splits.train) == 36 and len(splits.val) == 12


def test_train_test_layout(tmp_path: Path) -> None:
    splits = discover(DataConfig(data=str(make_split_folder(tmp_path, val_name="test"))))
    assert len(splits.val) == 12 and "test" in splits.description


def test_class_folders_are_split_stratified_and_seeded(tmp_path: Path) -> None:
    make_folder(tmp_path, classes=3, per_class=20)
    first = discover(DataConfig(data=str(tmp_path), val_split=0.25, split_seed=1))
    again = discover(DataConfig(data=str(tmp_path), val_split=0.25, split_seed=1))
    other = discover(DataConfig(data=str(tmp_path), val_split=0.25, split_seed=2))
    assert first.val == again.val and first.val != other.val
    assert [label for _, label in first.val].count(0) == 5  # 25% of each class
    assert not set(first.train) & set(first.val)


def test_stratified_split_keeps_one_val_image_per_class() -> None:
    samples = [(f"a{i}", 0) for i in range(3)] + [(f"b{i}", 1) for i in range(30)]
    train, val = stratified_split(samples, 0.1, 0)
    assert sorted(label for _, label in val) == [0, 1, 1, 1]
    assert len(train) + len(val) == 33


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: make_folder(root, classes=1), "single class"),
        (lambda root: (make_folder(root), (root / "empty_class").mkdir()), "class folders with no images: empty_class"),
        (lambda root: (make_folder(root / "train"), make_folder(root / "val", classes=4)), "classes not in"),
        (lambda root: make_folder(root / "train"), "no val or test/ folder"),
        (lambda root: root.mkdir(exist_ok=True), "has no class folders"),
    ],
)
def test_layout_errors_are_one_line(tmp_path: Path, build, message: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    build(root)
    with pytest.raises(MobiforgeError, match=message) as error:
        discover(DataConfig(data=str(root)))
    assert "\n" not in str(error.value)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    make_folder(tmp_path / "train")
    for label in range(3):
        (tmp_path / "val" / f"class{label}").mkdir(parents=True)
        (tmp_path / "val" / f"class{label}" / "notes.txt").write_text("not an image")
    with pytest.raises(MobiforgeError, match="class folders with no images"):
        discover(DataConfig(data=str(tmp_path)))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MobiforgeError, match="no such folder"):
        discover(DataConfig(data=str(tmp_path / "nope")))


def _add_bad_files(root: Path) -> list[Path]:
    good = make_image(root / "train" / "class0" / "good.jpg", (10, 10, 10), size=64)
    truncated = root / "train" / "class0" / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = root / "train" / "class1" / "empty.jpg"
    empty.write_bytes(b"")
    text = root / "val" / "class2" / "text.jpg"
    text.write_text("this is not a jpeg")
    return [truncated, empty, text]


def test_bad_files_are_all_listed_before_training(tmp_path: Path) -> None:
    make_split_folder(tmp_path)
    bad = _add_bad_files(tmp_path)
    splits = discover(DataConfig(data=str(tmp_path)))
    with pytest.raises(MobiforgeError, match="3 image file") as error:
        check_images(splits, skip_bad=False)
    message = str(error.value)
    assert all(str(path) in message for path in bad) and "--skip-bad-images" in message
    assert "\n" not in message


def test_skip_bad_images_warns_and_drops_them(tmp_path: Path) -> None:
    make_split_folder(tmp_path)
    _add_bad_files(tmp_path)
    splits = discover(DataConfig(data=str(tmp_path)))
    with pytest.warns(UserWarning, match="skipping 3"):
        checked = check_images(splits, skip_bad=True)
    assert len(checked.train) == 37 and len(checked.val) == 12


def test_files_ignored_by_extension_are_counted(tmp_path: Path) -> None:
    make_split_folder(tmp_path)
    (tmp_path / "train" / "class0" / "animation.gif").write_bytes(b"GIF89a")
    assert discover(DataConfig(data=str(tmp_path))).ignored_files == 1


def test_digits_are_materialised_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBIFORGE_HOME", str(tmp_path))
    root = materialize_digits()
    splits = discover(DataConfig(data="digits"))
    assert splits.classes == [str(d) for d in range(10)]
    assert len(splits.train) + len(splits.val) == 1797
    stamp = (root / ".complete").stat().st_mtime_ns
    assert materialize_digits() == root and (root / ".complete").stat().st_mtime_ns == stamp


def test_transforms_shapes_and_determinism(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=4, size=40)
    splits = discover(DataConfig(data=str(tmp_path), val_split=0.25))
    config = DataConfig(data=str(tmp_path), img_size=32, trivial_augment=True, random_erasing=0.5)
    dataset = ImageSamples(splits.train, train_transform(config), seed=3)
    first, label = dataset[0]
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32 and label == 0
    assert torch.equal(dataset[0][0], first)  # the same sample, epoch and seed give the same augmentation
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], first)
    preprocess = preprocess_for(DataConfig(img_size=96))
    assert (preprocess.img_size, preprocess.resize_size) == (96, 109)
    evaluated = ImageSamples(splits.val, eval_transform(preprocess))[0][0]
    assert evaluated.shape == (3, 96, 96)


def test_training_rng_is_untouched_by_sample_seeding(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=2)
    splits = discover(DataConfig(data=str(tmp_path), val_split=0.5))
    dataset = ImageSamples(splits.train, train_transform(DataConfig(img_size=16)))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    dataset[0]
    assert torch.equal(torch.rand(3), expected)


def test_cached_images_report_the_same_bad_files_in_one_pass(tmp_path: Path) -> None:
    make_split_folder(tmp_path)
    bad = _add_bad_files(tmp_path)
    config = DataConfig(data=str(tmp_path), img_size=32)
    splits = discover(config)
    with pytest.raises(MobiforgeError, match="3 image file") as error:
        check_images(splits, skip_bad=False, cache=cache_specs(config, preprocess_for(config)))
    assert all(str(path) in str(error.value) for path in bad) and "\n" not in str(error.value)
    with pytest.warns(UserWarning, match="skipping 3"):
        checked = check_images(discover(config), skip_bad=True, cache=cache_specs(config, preprocess_for(config)))
    assert checked.images is not None
    assert set(checked.images) == {path for path, _ in checked.train + checked.val}


@pytest.mark.parametrize("img_size", [32, 96])  # pad-and-crop, RandomResizedCrop
def test_cached_samples_match_samples_read_from_disk(tmp_path: Path, img_size: int) -> None:
    make_folder(tmp_path, per_class=3, size=120)
    config = DataConfig(data=str(tmp_path), img_size=img_size, val_split=0.34)
    preprocess = preprocess_for(config)
    splits = check_images(discover(config), skip_bad=False, cache=cache_specs(config, preprocess))
    assert splits.images is not None and all(image.dtype == torch.uint8 for image in splits.images.values())
    augment = v2.Compose(train_stages(config, cached=True)[1])
    cached = ImageSamples(splits.train, augment, seed=5, images=splits.images)
    from_disk = ImageSamples(splits.train, train_transform(config), seed=5, draft_size=2 * img_size)
    first = cached[0][0]
    assert first.shape == (3, img_size, img_size) and torch.equal(cached[0][0], first)  # seeded per sample
    if img_size == 32:  # the same steps split in two: the very same tensors
        assert all(torch.equal(cached[i][0], from_disk[i][0]) for i in range(len(splits.train)))
    val_cached = ImageSamples(splits.val, v2.Compose(eval_stages(preprocess)[1]), images=splits.images)
    val_disk = ImageSamples(splits.val, eval_transform(preprocess), draft_size=preprocess.resize_size)
    assert all(torch.equal(val_cached[i][0], val_disk[i][0]) for i in range(len(splits.val)))


def test_cache_over_budget_falls_back_to_files_but_still_checks_them(tmp_path: Path) -> None:
    make_split_folder(tmp_path)
    bad = _add_bad_files(tmp_path)
    config = DataConfig(data=str(tmp_path), img_size=32)
    with pytest.warns(UserWarning, match="skipping 3"):
        checked = check_images(
            discover(config), skip_bad=True, cache=cache_specs(config, preprocess_for(config)), budget=1000
        )
    assert checked.images is None
    assert not {str(path) for path in bad} & {path for path, _ in checked.train + checked.val}


def test_files_after_the_budget_is_passed_are_still_checked(tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for index in range(300):  # more than one decoding chunk (256 files)
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (8, 8), (index % 256, 0, 0)).save(path)
        paths.append(str(path))
    late_bad = tmp_path / "late.jpg"
    late_bad.write_text("not an image")
    paths.append(str(late_bad))
    spec = cache_specs(DataConfig(img_size=8), preprocess_for(DataConfig(img_size=8)))[0]
    images, bad = decode_into_memory(paths, spec, budget=8 * 8 * 3 * 10)
    assert images is None
    assert list(bad) == [str(late_bad)]
    images, bad = decode_into_memory(paths[:300], spec, budget=10**9)
    assert images is not None and len(images) == 300 and not bad


def test_loader_workers_default_to_none_for_cached_images_on_cpu() -> None:
    assert DataConfig().resolved_workers(cached=True, device_type="cpu") == 0
    assert DataConfig().resolved_workers(cached=False, device_type="cpu") == 2
    assert DataConfig().resolved_workers(cached=True, device_type="cuda") == 2
    assert DataConfig(workers=3).resolved_workers(cached=True, device_type="cpu") == 3


def test_a_cached_small_image_batch_is_augmented_as_the_per_sample_steps_would() -> None:
    from mobiforge.data import PadCropBatch, batch_augment

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    identity = PadCropBatch(4, hflip=True, mean=(0, 0, 0), std=(1 / 255,) * 3)  # output = pixel values
    out = identity(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images.float(), [4] * 4, mode="reflect")  # v2.RandomCrop's reflect padding
    windows = {(top, left, flipped) for top in range(9) for left in range(9) for flipped in (False, True)}
    seen = set()
    for index in range(len(images)):
        matches = [
            (top, left, flipped)
            for top, left, flipped in windows
            if torch.equal(out[index], _window(padded[index], top, left, flipped))
        ]
        assert matches, f"image {index} is not a (flipped) window of its padded self"
        seen.update(matches)
    assert {flipped for _, _, flipped in seen} == {False, True} and len({w[:2] for w in seen}) > 20
    assert torch.equal(identity(images, torch.Generator().manual_seed(0)), out)  # the generator decides it all
    # The normalisation is the per-sample steps' (ToDtype scaled, then Normalize with the configured mean and std).
    config = DataConfig(data="x", img_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    normalised = batch_augment(config)(images, torch.Generator().manual_seed(0))
    expected = v2.Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])(out / 255)
    torch.testing.assert_close(normalised, expected)


def _window(image: torch.Tensor, top: int, left: int, flipped: bool) -> torch.Tensor:
    crop = image[:, top : top + 32, left : left + 32]
    return crop.flip(-1) if flipped else crop


def test_only_the_pad_crop_flip_recipe_has_a_batched_form() -> None:
    from mobiforge.data import batch_augment

    assert batch_augment(DataConfig(data="x", img_size=32)) is not None
    assert batch_augment(DataConfig(data="digits")).hflip is False  # as the per-sample steps: no mirrored glyphs
    assert batch_augment(DataConfig(data="x", img_size=224)) is None  # RandomResizedCrop
    assert batch_augment(DataConfig(data="x", img_size=32, trivial_augment=True)) is None
    assert batch_augment(DataConfig(data="x", img_size=32, random_erasing=0.25)).erasing == 0.25


def test_batched_random_erasing_draws_the_boxes_torchvision_draws() -> None:
    from mobiforge.data import batch_augment, erased_boxes

    count, generator = 4000, torch.Generator().manual_seed(0)
    mask = erased_boxes(torch.Size((count, 3, 32, 32)), 0.5, generator)[:, 0]
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])  # one box per image at most
    for lines in (rows, cols):  # ... and a box, not scattered lines: its rows (and columns) are contiguous
        assert ((lines[:, 1:].int() - lines[:, :-1].int()) == 1).sum(1).le(1).all()
    erased = mask.flatten(1).any(1)
    assert 0.45 < erased.float().mean() < 0.55
    shares = mask[erased].flatten(1).float().mean(1)
    assert shares.min() > 0.015 and shares.max() < 0.36  # v2.RandomErasing's (0.02, 0.33), up to rounding
    torch.manual_seed(0)
    reference = v2.RandomErasing(p=1.0)
    torch_shares = torch.stack([(reference(torch.ones(3, 32, 32)) == 0)[0].float().mean() for _ in range(count)])
    assert abs(shares.mean() - torch_shares.mean()) < 0.01 and abs(shares.std() - torch_shares.std()) < 0.01
    # The whole batch step: erased pixels read 0, the mean after normalisation.
    config = DataConfig(data="x", img_size=32, random_erasing=1.0)
    images = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = batch_augment(config)(images, torch.Generator().manual_seed(1))
    assert ((out == 0).all(1).flatten(1).any(1)).float().mean() > 0.9


def test_a_class_name_with_a_line_break_is_refused(tmp_path: Path) -> None:
    """labels.txt holds one name per line: a name with a newline would shift every later class an app reads."""
    make_folder(tmp_path, classes=2)
    (tmp_path / "class1").rename(tmp_path / "bad\nname")
    with pytest.raises(MobiforgeError, match="control character") as error:
        discover(DataConfig(data=str(tmp_path)))
    assert "rename it" in str(error.value)


def test_a_checkpoint_with_a_line_break_in_a_class_name_is_refused() -> None:
    from mobiforge.checkpoint import Checkpoint

    with pytest.raises(MobiforgeError, match="control character"):
        Checkpoint.from_dict({"state_dict": {}, "classes": ["ants", "be\nes"]}, source="x.pt")


def test_a_run_folder_inside_the_data_folder_is_not_a_class(tmp_path: Path) -> None:
    """``cd photos && mobiforge train --data .`` writes ./runs/NAME/; the next run must not train on it."""
    make_folder(tmp_path, classes=2)
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"kind": "train"}')
    (run / "curves.png").write_bytes((tmp_path / "class0" / "000.png").read_bytes())
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "run.json").write_text('{"kind": "ship"}')
    assert discover(DataConfig(data=str(tmp_path))).classes == ["class0", "class1"]


def test_many_empty_class_folders_make_one_short_line(tmp_path: Path) -> None:
    make_folder(tmp_path, classes=2)
    for index in range(500):
        (tmp_path / f"empty{index:04d}").mkdir()
    with pytest.raises(MobiforgeError, match=r"empty0000, .* and 490 more; add images") as error:
        discover(DataConfig(data=str(tmp_path)))
    assert len(str(error.value)) < 300


def test_load_image_gives_pillows_pixels_faster_and_its_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEGs go through libjpeg-turbo straight into a tensor: the same upright pixels as ``load_rgb``, for colour,
    grayscale and an EXIF-rotated photo; a draft that shrinks, a PNG and a truncated JPEG go through Pillow."""
    import numpy as np
    from PIL import Image

    from mobiforge.data import load_image, load_rgb

    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    colour.save(tmp_path / "colour.jpg", quality=90)
    colour.convert("L").save(tmp_path / "gray.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    colour.save(tmp_path / "rotated.jpg", quality=90, exif=exif)
    colour.save(tmp_path / "colour.png")
    Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)).save(tmp_path / "large.jpg", quality=90)
    import mobiforge.data.images as images

    through_pillow: list[str] = []
    monkeypatch.setattr(
        images, "load_rgb", lambda path, *a: through_pillow.append(Path(path).name) or load_rgb(path, *a)
    )
    for name, draft in (("colour.jpg", None), ("gray.jpg", None), ("rotated.jpg", None), ("colour.png", None),
                        ("large.jpg", 100), ("large.jpg", 300)):  # fmt: skip
        image = load_image(str(tmp_path / name), draft)
        expected = torch.from_numpy(np.array(load_rgb(str(tmp_path / name), draft))).permute(2, 0, 1)
        assert image.dtype == torch.uint8, name
        assert torch.equal(image, expected), name
    # libjpeg-turbo decoded the JPEGs a draft would not shrink; Pillow the PNG and the one its draft shrinks
    assert through_pillow == ["colour.png", "large.jpg"]
    assert load_image(str(tmp_path / "rotated.jpg")).shape == (3, 80, 48)
    data = (tmp_path / "colour.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="truncated"):
        load_rgb(str(tmp_path / "truncated.jpg"))
    with pytest.raises(OSError, match="truncated"):
        load_image(str(tmp_path / "truncated.jpg"))
