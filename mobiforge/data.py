"""Datasets, splits, transforms, the bad-file scan and the built-in ``digits`` data.

Layouts accepted for ``--data DIR`` (torchvision ``ImageFolder`` class folders throughout):

* ``DIR/train/<class>/*`` with ``DIR/val/<class>/*`` or ``DIR/test/<class>/*``;
* ``DIR/<class>/*`` alone: split into train/val by a seeded, stratified ``val_split``;
* ``digits``: scikit-learn's 1,797 handwritten digits (8x8 px, bundled with scikit-learn, no download), written
  once as PNG class folders under ``$MOBIFORGE_HOME/datasets/digits`` (default ``~/.cache/mobiforge``).

Every problem with the data is found before training starts and reported in one line naming the folder or files.

Augmentation is made deterministic per sample: each sample's random transform is seeded from (seed, epoch,
index), so a run resumed mid-epoch, or run with another number of loader workers, sees the very same images.

Small datasets are decoded once into memory (``cache="auto"``): the deterministic first steps of each transform
(decode, the resize) run once, in the same pass that checks every file, and each epoch only runs the random steps
on uint8 tensors. Training then needs no loader processes on CPU, where they would compete with the training
threads for the same cores (measured: 23 vs 17 img/s on hymenoptera at 224 px with 2 workers on 2 cores).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from mobiforge.config import BUILTIN_DATASETS as BUILTIN_DATASETS  # public here too
from mobiforge.config import CACHE_MODES as CACHE_MODES
from mobiforge.config import DEFAULT_LOADER_WORKERS as DEFAULT_LOADER_WORKERS
from mobiforge.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from mobiforge.config import DataConfig as DataConfig
from mobiforge.config import loader_workers as loader_workers
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.models.base import Preprocess
from mobiforge.paths import RUN_FILE, mobiforge_home
from mobiforge.units import named

Sample = tuple[str, int]


@dataclass
class DatasetSplits:
    """The samples of both splits, the class names and a description of where they came from."""

    train: list[Sample]
    val: list[Sample]
    classes: list[str]
    root: Path
    description: str
    ignored_files: int = 0
    images: dict[str, torch.Tensor] | None = None  # decoded and prepared, when cached in memory (check_images)


# --------------------------------------------------------------------------------------------------- discovery


def materialize_digits(root: Path | None = None) -> Path:
    """Write scikit-learn's digits as ``root/{train,val}/<digit>/*.png`` once (stratified 80/20, seed 0).

    Safe when several processes first use it at once: one writes, under a lock, into a folder of its own that is
    renamed into place when whole; the others wait and read it. The marker holds the file count, checked before it
    is trusted (three concurrent first uses once left 1,171 of 1,797 files marked complete)."""
    root = root or mobiforge_home() / "datasets" / "digits"
    if _complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(root.with_name(root.name + ".lock")):
        if _complete(root):  # written by another process while this one waited
            return root
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.", suffix=".tmp", dir=root.parent))
        try:
            count = _write_digits(staging)
            (staging / COMPLETE_MARKER).write_text(str(count))
            if root.exists():  # a damaged earlier copy
                shutil.rmtree(root)
            staging.rename(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


COMPLETE_MARKER = ".complete"


def _write_digits(folder: Path) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = list(range(len(digits.target)))
    random.Random(0).shuffle(order)
    seen: Counter[int] = Counter()
    for index in order:
        label = int(digits.target[index])
        split = "val" if seen[label] % 5 == 0 else "train"
        seen[label] += 1
        target = folder / split / str(label)
        target.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * (255.0 / 16.0)).round().astype("uint8")
        Image.fromarray(pixels, mode="L").save(target / f"{index:04d}.png")
    return len(order)


def _complete(root: Path) -> bool:
    """The marker exists and the folder holds as many images as it says."""
    try:
        expected = int((root / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return expected == sum(len([f for f in files if f.endswith(".png")]) for _, _, files in os.walk(root))


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock between processes (``flock``; where the platform has none, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def class_folders(folder: Path) -> list[str]:
    """The class folders of a split: its visible sub-folders, except mobiforge's own output (``runs`` made by
    ``cd photos && mobiforge train --data .`` once became a third class, holding the first run's plots)."""
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".") and not is_run_output(Path(entry.path))
    )


def is_run_output(folder: Path) -> bool:
    """Whether ``folder`` is a mobiforge run (it holds RUN_FILE) or a folder of runs (a sub-folder that does)."""
    if (folder / RUN_FILE).is_file():
        return True
    with os.scandir(folder) as entries:
        return any(entry.is_dir() and (Path(entry.path) / RUN_FILE).is_file() for entry in entries)


pillow_heif.register_heif_opener()  # iPhone photos are HEIC by default; Pillow opens them through this plugin
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".heic", ".heif")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_split(folder: Path, class_to_idx: dict[str, int]) -> tuple[list[Sample], int, list[str]]:
    """Samples of one split folder, the number of files ignored by extension and the empty class folders."""
    samples: list[Sample] = []
    ignored = 0
    empty: list[str] = []
    real_dir = functools.cache(os.path.realpath)
    for name in class_folders(folder):
        files = _files_under(folder / name, real_dir)
        images = [path for path in files if is_image_name(path)]
        ignored += len(files) - len(images)
        if not images:
            empty.append(name)
            continue
        if name in class_to_idx:
            samples += [(path, class_to_idx[name]) for path in images]
    return samples, ignored, empty


def _files_under(top: Path, real_dir: Callable[[str], str]) -> list[str]:
    """The files under ``top``, links followed but each real directory and file taken once: a link loop (``a/loop
    -> ..``) once walked the whole split into one class, over and over."""
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    files = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = real_dir(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        if os.path.islink(dirpath) and system_folder(Path(real)):  # a class folder linked to / was walked whole
            raise MobiforgeError(
                f"{dirpath} links to {real}, a system or home folder, not a dataset; remove the link or point it "
                "at a folder of images"
            )
        seen_dirs.add(real)
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            if not filename.startswith(".") and (real_file := _real_file(path, real_dir)) not in seen_files:
                seen_files.add(real_file)
                files.append(path)
    return sorted(files)


def _real_file(path: str, real_dir: Callable[[str], str]) -> str:
    """``os.path.realpath`` at one ``lstat`` per file, ``real_dir`` a cache of the folders' (one scan's: a folder
    may become a link between two): CIFAR-10 has 60,000 files."""
    folder, name = os.path.split(path)
    return os.path.realpath(path) if os.path.islink(path) else os.path.join(real_dir(folder), name)


def check_distinct(splits: dict[str, list[Sample]], classes: Sequence[str]) -> None:
    """Refuse a file that is listed twice, or reached twice through a link: in two classes or splits its label would
    be ambiguous or val would leak into train; in one, it would count twice."""
    where: dict[str, tuple[str, int, str]] = {}
    real_dir = functools.cache(os.path.realpath)
    for split, samples in splits.items():
        for path, label in samples:
            real = _real_file(path, real_dir)
            if real not in where:
                where[real] = (split, label, path)
                continue
            first = where[real]
            places = f"{first[0]} {classes[first[1]]} and {split} {classes[label]}"
            if first[2] == path:
                raise MobiforgeError(f"{path} is listed twice ({places}): keep one row for each image")
            raise MobiforgeError(
                f"{path} is the same file as {first[2]} ({places}, through a link): remove the link so that each "
                "image has one class and one split"
            )


def stratified_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class with a seeded shuffle: every class with 2+ images gets at least one val image."""
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    train: list[Sample] = []
    val: list[Sample] = []
    rng = random.Random(seed)
    for label in sorted(by_class):
        items = sorted(by_class[label])
        rng.shuffle(items)
        count = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        val += items[:count]
        train += items[count:]
    return sorted(train), sorted(val)


def discover(config: DataConfig, train_split: str = "train", val_split: str | None = None) -> DatasetSplits:
    """Find the images of ``config.data`` and check the layout; raises ``MobiforgeError`` on any problem."""
    if is_table(config.data):
        return _discover_table(Path(config.data).expanduser(), config)
    if config.data in BUILTIN_DATASETS:
        root = materialize_digits()
    else:
        root = Path(config.data).expanduser()
        if not root.is_dir():
            raise MobiforgeError(
                f"--data {config.data}: no such folder; give an image folder, a labels.csv or 'digits'"
            )
    if (root / "train").is_dir():
        names = [val_split] if val_split else ["val", "test"]
        val_dir = next((root / name for name in names if (root / name).is_dir()), None)
        if val_dir is None:
            raise MobiforgeError(f"--data {root}: found train/ but no {' or '.join(names)}/ folder beside it")
        train_dir = root / train_split
        if not train_dir.is_dir():
            raise MobiforgeError(f"--data {root}: no {train_split}/ folder")
        classes = class_folders(train_dir)
        _check_classes(train_dir, classes)
        class_to_idx = {name: index for index, name in enumerate(classes)}
        train, ignored_train, empty = scan_split(train_dir, class_to_idx)
        _check_empty(train_dir, empty)
        unknown = sorted(set(class_folders(val_dir)) - set(classes))
        if unknown:
            raise MobiforgeError(f"{val_dir} has classes not in {train_dir}: {named(unknown)}")
        val, ignored_val, empty = scan_split(val_dir, class_to_idx)
        _check_empty(val_dir, empty)
        description = f"{_shown(config.data, train_dir, root)} + {_shown(config.data, val_dir, root)}"
        ignored = ignored_train + ignored_val
    else:
        classes = class_folders(root)
        _check_classes(root, classes)
        class_to_idx = {name: index for index, name in enumerate(classes)}
        samples, ignored, empty = scan_split(root, class_to_idx)
        _check_empty(root, empty)
        train, val = stratified_split(samples, config.val_split, config.split_seed)
        description = _seeded_description(root, config)
    return _checked_splits(DatasetSplits(train, val, classes, root, description, ignored), root)


def _seeded_description(source: Path, config: DataConfig) -> str:
    shown = _shown(config.data, source, source)
    return f"{shown} split {1 - config.val_split:.0%}/{config.val_split:.0%} (seed {config.split_seed})"


def _shown(given: str, folder: Path, root: Path) -> str:
    """``folder`` (under the data's ``root``) as the user named the data: a built-in set by its name (its cache's
    place on this machine is nobody else's business), a folder as given."""
    if given in BUILTIN_DATASETS:
        relative = folder.relative_to(root).as_posix()
        return given if relative == "." else f"{given}/{relative}"
    return str(folder)


def data_name(data: str) -> str:
    """A short name for ``data``: a built-in set's, a table's folder's, or the folder's own."""
    if data in BUILTIN_DATASETS:
        return data
    path = Path(data).expanduser().resolve()
    return (path.parent if is_table(data) else path).name or "data"


def data_root(data: str) -> Path:
    """The folder the samples of ``data`` lie under: a built-in set's cache, a table's folder, or the folder."""
    if data in BUILTIN_DATASETS:
        return materialize_digits()
    path = Path(data).expanduser()
    return path.parent if is_table(data) else path


def spaced_subset(samples: list[Any], count: int | None) -> list[Any]:
    """``count`` evenly spaced samples (all when ``count`` is None or more): it keeps the class balance of a split
    sorted by class, and the same call always picks the same images (export's gate, then ``eval`` of its file)."""
    if count is None or count >= len(samples):
        return samples
    return [samples[int(i * len(samples) / count)] for i in range(count)]


def _checked_splits(splits: DatasetSplits, source: Path) -> DatasetSplits:
    """No file in two classes or both splits, and images in each split."""
    check_distinct({"train": splits.train, "val": splits.val}, splits.classes)
    for name, chosen in (("train", splits.train), ("val", splits.val)):
        if not chosen:
            total = len(splits.train) + len(splits.val)
            raise MobiforgeError(
                f"--data {source}: the {name} split has no images ({total} image(s) in all, "
                f"{len(splits.classes)} classes); add images (a few dozen per class at least) or give it "
                "train/ and val/ folders"
            )
    return splits


def is_table(data: str) -> bool:
    """``--data labels.csv``: a ``path,label`` table (paths relative to the file) instead of class folders."""
    return data.lower().endswith(".csv")


TABLE_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "val"}


def _discover_table(table: Path, config: DataConfig) -> DatasetSplits:
    """The samples of a ``path,label[,split]`` CSV. A header row is optional. Without a split column, the rows are
    split as a class-folder dataset is (seeded, stratified ``val_split``)."""
    rows = _table_rows(table)
    classes = sorted({label for _, label, _ in rows})
    _check_classes(table, classes)
    class_to_idx = {name: index for index, name in enumerate(classes)}
    missing = [path for path, _, _ in rows if not Path(path).is_file()]
    if missing:
        raise MobiforgeError(
            f"{table}: {len(missing)} of {len(rows)} image paths do not exist (first: {missing[0]}); paths are "
            "relative to the CSV file's folder"
        )
    if any(split for _, _, split in rows):
        _check_split_column(table, rows)
        train = [(path, class_to_idx[label]) for path, label, split in rows if split == "train"]
        val = [(path, class_to_idx[label]) for path, label, split in rows if split == "val"]
        description = f"{table} ({len(rows)} rows, its own train/val column)"
    else:
        samples = [(path, class_to_idx[label]) for path, label, _ in rows]
        train, val = stratified_split(samples, config.val_split, config.split_seed)
        description = _seeded_description(table, config)
    return _checked_splits(DatasetSplits(train, val, classes, table.parent, description), table)


def _check_split_column(table: Path, rows: list[tuple[str, str, str]]) -> None:
    """A table with a split column gives every row a split, and every class train rows."""
    unsplit = [path for path, _, split in rows if not split]
    if unsplit:
        raise MobiforgeError(
            f"{table}: {len(unsplit)} of {len(rows)} rows have no split while others do (first: {unsplit[0]}); "
            "give every row train or val, or leave the column out for a seeded split"
        )
    untrained = sorted({label for _, label, _ in rows} - {label for _, label, split in rows if split == "train"})
    if untrained:
        raise MobiforgeError(f"{table}: classes with val rows but no train rows: {named(untrained)}; add train rows")


def _table_rows(table: Path) -> list[tuple[str, str, str]]:
    """(absolute path, label, "train"/"val"/"") per row of the CSV; one-line errors name the row."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as stream:
            lines = list(csv.reader(stream))
    except FileNotFoundError:
        raise MobiforgeError(f"--data {table}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MobiforgeError(f"--data {table}: not a readable CSV ({error})") from None
    if lines and [cell.strip().lower() for cell in lines[0][:2]] == ["path", "label"]:
        lines = lines[1:]
    rows = []
    for number, line in enumerate(lines, start=1):
        cells = [cell.strip() for cell in line]
        if not any(cells):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise MobiforgeError(f"{table}, row {number}: expected path,label[,split], got {','.join(line)!r}")
        split = cells[2].lower() if len(cells) > 2 and cells[2] else ""
        if split and split not in TABLE_SPLITS:
            raise MobiforgeError(f"{table}, row {number}: split {cells[2]!r} is not train, val or test")
        rows.append((str((table.parent / cells[0]).resolve()), cells[1], TABLE_SPLITS.get(split, "")))
    if not rows:
        raise MobiforgeError(f"--data {table}: no rows; expected path,label lines")
    return rows


def unprintable_class(classes: list[str]) -> str | None:
    """The first class name holding a line break or another control character, which would shift every later line
    of ``labels.txt`` (and so every index an app reads from it), or None."""
    return next((name for name in classes if any(unicodedata.category(c).startswith("C") for c in name)), None)


def _check_classes(folder: Path, classes: list[str]) -> None:
    bad = unprintable_class(classes)
    if bad is not None:
        raise MobiforgeError(f"{folder}: the class name {bad!r} holds a control character (a line break?); rename it")
    if not classes:
        raise MobiforgeError(f"{folder} has no class folders; expected {folder}/<class>/<image files>")
    if len(classes) == 1:
        raise MobiforgeError(f"{folder} has a single class ({classes[0]}); a classifier needs at least two")


def _check_empty(folder: Path, empty: list[str]) -> None:
    if empty:
        raise MobiforgeError(f"{folder}: class folders with no images: {named(empty)}; add images or remove them")


# --------------------------------------------------------------------------------------------- bad-file scan


def checkpoint_data_config(train_config: dict[str, Any] | None, data: str | None) -> DataConfig:
    """The data a checkpoint trained on, from its saved training config (``data`` overrides the folder), with the
    run's own seeded split."""
    saved = dict((train_config or {}).get("data") or {})
    return DataConfig(
        data=data or _stored_data_folder(str(saved.get("data", "digits"))),
        val_split=float(saved.get("val_split", 0.1)),
        split_seed=int(saved.get("split_seed", 0)),
    )


# Folders a stored data path may not name: walking them would scan the whole system, not a dataset.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/run", "/sbin", "/sys", "/usr", "/var")


def system_folder(resolved: Path) -> bool:
    """Whether a resolved folder is the root, a system folder, the home folder or above it: walking it would scan
    the whole system, not a dataset."""
    home = Path.home().resolve()
    pseudo = any(part in ("proc", "sys", "dev") for part in resolved.parts[1:2])  # kernel files, endless to walk
    return pseudo or str(resolved) in SYSTEM_FOLDERS or resolved == home or resolved in home.parents


def _stored_data_folder(folder: str) -> str:
    """A data folder read from a checkpoint (not typed by the user): walked only if it can be a dataset."""
    if folder == "digits":
        return folder
    path = Path(folder).expanduser()
    if is_table(folder) and path.is_file():
        return folder
    if not path.is_dir():
        raise MobiforgeError(f"the checkpoint was trained on {folder}, which is not a folder here; pass --data FOLDER")
    if system_folder(path.resolve()):
        raise MobiforgeError(
            f"the checkpoint names {folder} as its data, a system or home folder, not a dataset; pass --data FOLDER"
        )
    return folder


def split_samples(config: DataConfig, split: str, classes: list[str]) -> list[Sample]:
    """The samples of ``split`` labelled with the checkpoint's ``classes`` (class folders matched by name)."""
    if is_table(config.data) and split in ("train", "val"):
        splits = discover(config)  # the table's own split column, or the run's seeded split
        if splits.classes != classes:
            raise MobiforgeError(f"{config.data} has classes {splits.classes}, the checkpoint {classes}")
        return splits.train if split == "train" else splits.val
    root = materialize_digits() if config.data == "digits" else Path(config.data).expanduser()
    if not root.is_dir():
        raise MobiforgeError(f"--data {config.data}: no such folder")
    class_to_idx = {name: index for index, name in enumerate(classes)}
    folder = root / split
    if split == "val" and not folder.is_dir() and (root / "test").is_dir():
        folder = root / "test"  # DIR/{train,test}: training validated on test/, so "val" means the same here
    if folder.is_dir():
        unknown = sorted(set(class_folders(folder)) - set(classes))
        if unknown:
            raise MobiforgeError(f"{folder} has classes the model does not know: {named(unknown)}")
        samples, _, _ = scan_split(folder, class_to_idx)
    elif (root / "train").is_dir():
        present = ", ".join(name for name in ("train", "val", "test") if (root / name).is_dir())
        raise MobiforgeError(f"--split {split}: {root} has no {split}/ folder (it has {present})")
    elif split in ("train", "val"):
        splits = discover(config)  # recreate the training run's seeded split
        if splits.classes != classes:
            raise MobiforgeError(f"{root} has classes {splits.classes}, the checkpoint {classes}")
        samples = splits.train if split == "train" else splits.val
    else:
        raise MobiforgeError(f"--split {split}: {root} holds class folders only; use --split val or train")
    if not samples:
        raise MobiforgeError(f"no images in the {split} split of {root}")
    return samples


def _decode_problem(path: str) -> str | None:
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))  # the smallest scale still reads (and checks) the whole stream
            if problem := oversized(image):  # before decoding, as load_rgb refuses it: the scan is no way around
                return problem
            image.load()  # a full decode: verify() misses truncated JPEGs
    except Exception as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def _header_problem(path: str) -> str | None:
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:  # the header only: what PIL needs to name the format and the size
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))
            return oversized(image)
    except Exception as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def find_unreadable(paths: Sequence[str], workers: int = 4) -> dict[str, str]:
    """Every file among ``paths`` whose header PIL cannot read (not an image at all), with the reason: a scan of a
    large folder in seconds, where ``find_bad_images`` decodes every pixel."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_header_problem, paths, chunksize=64))
    return {path: problem for path, problem in zip(paths, problems, strict=True) if problem}


def classes_without_images(samples: Sequence[Sample], classes: Sequence[str], unreadable: dict[str, str]) -> None:
    """Fail in one line when a class folder holds files but none that is an image: no skipping can rescue it."""
    by_class: dict[int, list[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    for label, paths in sorted(by_class.items()):
        if all(path in unreadable for path in paths):
            example = paths[0]
            raise MobiforgeError(
                f"class {classes[label]!r} holds no readable image ({len(paths)} file(s); {example}: "
                f"{unreadable[example]}); remove the folder or put its images in it"
            )


def find_bad_images(paths: Sequence[str], workers: int = 4) -> dict[str, str]:
    """Every file among ``paths`` that PIL cannot fully decode, with the reason."""
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        problems = list(pool.map(_decode_problem, paths, chunksize=64))
    return {path: problem for path, problem in zip(paths, problems, strict=True) if problem}


def report_bad(bad: dict[str, str], skip_bad: bool) -> set[str]:
    if not bad:
        return set()
    listing = "; ".join(f"{path} ({reason})" for path, reason in sorted(bad.items()))
    if not skip_bad:
        raise MobiforgeError(
            f"{len(bad)} image file(s) cannot be decoded: {listing}. Fix or delete them, or pass --skip-bad-images"
        )
    warnings.warn(f"skipping {len(bad)} image file(s) that cannot be decoded: {listing}", stacklevel=4)
    return set(bad)


def decodable(samples: Sequence[Sample], skip_bad: bool) -> set[str]:
    """Scan every image of ``samples``; fail listing the bad ones, or (``skip_bad``) warn and return their paths."""
    return report_bad(find_bad_images([path for path, _ in samples]), skip_bad)


@dataclass
class CacheSpec:
    """How one split is kept in memory: the deterministic transform steps, run once on the decoded image."""

    prepare: Callable[[Any], torch.Tensor]
    draft_size: int | None = None


def cache_specs(config: DataConfig, preprocess: Preprocess) -> tuple[CacheSpec, CacheSpec]:
    """The train and val splits' deterministic steps, for ``check_images(cache=...)``."""
    train_prepare = v2.Compose(train_stages(config, cached=True)[0])
    return (
        CacheSpec(train_prepare, 2 * config.resolved_img_size()),
        CacheSpec(v2.Compose(eval_stages(preprocess)[0]), preprocess.resize_size),
    )


def memory_budget() -> int:
    """Bytes of decoded images ``cache="auto"`` may keep: a quarter of the machine's memory, at most 4 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return min(4 * 2**30, total // 4)


def _decode_prepared(path: str, spec: CacheSpec) -> tuple[torch.Tensor | None, str | None]:
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file"
        image = spec.prepare(load_rgb(path, spec.draft_size))  # convert() decodes fully: truncation raises
    except Exception as error:
        return None, str(error).splitlines()[0] if str(error) else type(error).__name__
    return image.as_subclass(torch.Tensor).contiguous(), None


def decode_into_memory(
    paths: Sequence[str], spec: CacheSpec, budget: int, threads: int = 4
) -> tuple[dict[str, torch.Tensor] | None, dict[str, str]]:
    """Decode and prepare every image (the bad-file scan in the same pass). Returns the uint8 tensors by path, or
    None once they pass ``budget`` bytes (the remaining files are then only checked), and the bad files."""
    images: dict[str, torch.Tensor] = {}
    bad: dict[str, str] = {}
    used, checked = 0, len(paths)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL and torch release the GIL while resizing
        for start in range(0, len(paths), 256):  # chunks: memory is checked before more is decoded
            chunk = paths[start : start + 256]
            for path, (tensor, problem) in zip(
                chunk, pool.map(_decode_prepared, chunk, [spec] * len(chunk)), strict=True
            ):
                if problem is not None:
                    bad[path] = problem
                elif tensor is not None:
                    images[path] = tensor
                    used += tensor.numel()
            if used > budget:
                checked = start + len(chunk)
                break
    if used > budget:  # the files after the chunk that passed the budget are only checked
        bad.update(find_bad_images(paths[checked:], threads))
        return None, bad
    return images, bad


def check_images(
    splits: DatasetSplits,
    skip_bad: bool,
    cache: tuple[CacheSpec, CacheSpec] | None = None,
    budget: int | None = None,
) -> DatasetSplits:
    """Scan both splits before training starts (see ``decodable``); an emptied split is an error.

    With ``cache`` (the train and val splits' deterministic steps), every image is also kept decoded and prepared
    in ``splits.images``, unless together they pass ``budget`` bytes (then ``splits.images`` stays None)."""
    if cache is None:
        bad = find_bad_images([path for path, _ in splits.train + splits.val])
    else:
        budget = memory_budget() if budget is None else budget
        train_images, bad = decode_into_memory([path for path, _ in splits.train], cache[0], budget)
        val_paths = [path for path, _ in splits.val]
        if train_images is None:  # over budget already: the val split is only checked
            bad.update(find_bad_images(val_paths))
            splits.images = None
        else:
            used = sum(t.numel() for t in train_images.values())
            val_images, val_bad = decode_into_memory(val_paths, cache[1], budget - used)
            bad.update(val_bad)
            splits.images = {**train_images, **val_images} if val_images is not None else None
    dropped = report_bad(bad, skip_bad)
    if dropped:
        splits.train = [s for s in splits.train if s[0] not in dropped]
        splits.val = [s for s in splits.val if s[0] not in dropped]
        for name, split in (("train", splits.train), ("val", splits.val)):
            if not split:
                raise MobiforgeError(f"the {name} split has no decodable images left")
    return splits


class ShrinkTo:
    """Resize so that the short side is at most ``short_side`` (never enlarges): bounds a cached image's memory."""

    def __init__(self, short_side: int) -> None:
        self.short_side = short_side

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if min(image.shape[-2:]) <= self.short_side:
            return image
        return v2.functional.resize(image, self.short_side, antialias=True)


def crop_mode(config: DataConfig) -> str:
    """--crop, else pad-and-crop up to 64 px (CIFAR's recipe) and RandomResizedCrop above."""
    return config.crop or ("pad" if config.resolved_img_size() <= 64 else "rrc")


def crop_padding(size: int) -> int:
    return size // 8  # 4 px at CIFAR's 32


def flips(config: DataConfig) -> bool:
    """--hflip, else on (off for the built-in digits, which a mirror turns into other glyphs)."""
    return config.hflip if config.hflip is not None else config.data != "digits"


ERASED_AREA = (0.02, 0.33)  # the erased box's share of the image (v2.RandomErasing's default) ...
ERASED_RATIO = (0.3, 3.3)  # ... and its aspect ratio, drawn log-uniform; both paths, per sample and batched, use them
ERASING_TRIES = 10  # v2.RandomErasing draws up to 10 boxes until one fits, else leaves the image as it is


def train_stages(config: DataConfig, cached: bool = False) -> tuple[list[Any], list[Any]]:
    """The training transform as (deterministic steps, random steps). Cached images run the first list once, when
    they are decoded; the second runs for every sample of every epoch."""
    size = config.resolved_img_size()
    crop = crop_mode(config)
    prepare: list[Any] = [v2.ToImage()]
    if crop == "rrc":
        if cached:  # RandomResizedCrop samples from the whole image: keep it, at up to twice the output size
            prepare.append(ShrinkTo(2 * size))
        augment: list[Any] = [v2.RandomResizedCrop(size, scale=(config.min_scale, 1.0), antialias=True)]
    elif crop == "pad":
        prepare.append(v2.Resize((size, size), antialias=True))
        augment = [v2.RandomCrop(size, padding=crop_padding(size), padding_mode="reflect")]
    else:
        raise MobiforgeError(f"--crop must be 'rrc' or 'pad', got {crop!r}")
    if flips(config):
        augment.append(v2.RandomHorizontalFlip())
    if config.trivial_augment:
        augment.append(v2.TrivialAugmentWide())
    mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
    augment += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if config.random_erasing > 0:
        augment.append(v2.RandomErasing(p=config.random_erasing, scale=ERASED_AREA, ratio=ERASED_RATIO))
    return prepare, augment


class PadCropBatch:
    """The small-image recipe of ``train_stages`` (reflect-pad and random crop, optional flip, float, normalise) on a
    whole batch of equal-size uint8 images at once: a few tensor ops instead of a chain of torchvision calls per
    image, which cost a sizeable share of a 32 px training step (``benchmarks/batch_augment.py``)."""

    def __init__(
        self, padding: int, hflip: bool, mean: Sequence[float], std: Sequence[float], erasing: float = 0.0
    ) -> None:
        self.padding = padding
        self.hflip = hflip
        self.erasing = erasing
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = images.shape
        pad = self.padding
        padded = nn.functional.pad(images.float(), [pad] * 4, mode="reflect")  # reflect needs a float tensor
        top, left = (torch.randint(0, 2 * pad + 1, (count, 1), generator=generator) for _ in range(2))
        rows, cols = top + torch.arange(height), left + torch.arange(width)
        batch = torch.arange(count)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.hflip:
            flip = torch.rand(count, generator=generator) < 0.5
            crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
        normalised = (crops - self.mean) / self.std
        if self.erasing:
            normalised = normalised.masked_fill(erased_boxes(normalised.shape, self.erasing, generator), 0.0)
        return normalised


def erased_boxes(shape: torch.Size, probability: float, generator: torch.Generator) -> torch.Tensor:
    """A (count, 1, height, width) mask of v2.RandomErasing's boxes for a whole batch: with ``probability`` an image
    gets one box, drawn as that transform draws it (area share, log-uniform aspect ratio, the first of 10 draws
    that fits, any position); the masked pixels are set to 0, the dataset's mean after normalisation."""
    count, _, height, width = shape
    area = height * width * torch.empty(count, ERASING_TRIES).uniform_(*ERASED_AREA, generator=generator)
    log_ratio = torch.empty(count, ERASING_TRIES).uniform_(*map(math.log, ERASED_RATIO), generator=generator)
    ratio = torch.exp(log_ratio)
    box_h, box_w = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    fits = (box_h < height) & (box_w < width)
    first = fits.float().argmax(1, keepdim=True)  # the first draw that fits (0 where none does: then unused)
    box_h, box_w = box_h.gather(1, first).squeeze(1), box_w.gather(1, first).squeeze(1)
    erase = fits.any(1) & (torch.rand(count, generator=generator) < probability)
    top = (torch.rand(count, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(count, generator=generator) * (width - box_w + 1)).long()
    rows, cols = torch.arange(height), torch.arange(width)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    return (erase[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def batch_augment(config: DataConfig) -> PadCropBatch | None:
    """The batched form of the cached training steps where it exists: pad-and-crop, flip, normalise and erase."""
    if crop_mode(config) != "pad" or config.trivial_augment:
        return None
    padding = crop_padding(config.resolved_img_size())
    mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
    return PadCropBatch(padding, flips(config), mean, std, erasing=config.random_erasing)


def train_transform(config: DataConfig) -> v2.Compose:
    prepare, augment = train_stages(config)
    return v2.Compose(prepare + augment)


def eval_stages(preprocess: Preprocess) -> tuple[list[Any], list[Any]]:
    """The eval transform as (resize and crop, then normalise); all deterministic, split for caching."""
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    if preprocess.crop_pct >= 1.0:
        resize: Any = v2.Resize((preprocess.img_size, preprocess.img_size), interpolation, antialias=True)
    else:
        resize = v2.Resize(preprocess.resize_size, interpolation, antialias=True)
    prepare = [v2.ToImage(), resize, v2.CenterCrop(preprocess.img_size)]
    return prepare, [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(preprocess.mean), list(preprocess.std))]


def eval_transform(preprocess: Preprocess) -> v2.Compose:
    """Resize the short side to ``resize_size``, center-crop ``img_size``, normalise: the checkpoint's recipe."""
    prepare, normalise = eval_stages(preprocess)
    return v2.Compose(prepare + normalise)


def preprocess_for(config: DataConfig, weights_preprocess: Preprocess | None = None) -> Preprocess:
    """The eval preprocessing that matches a (resolved) training config; stored in every checkpoint. Crop ratio
    and interpolation follow the pretrained weights when there are any."""
    size = config.resolved_img_size()
    crop_pct = 1.0 if size <= 64 else (weights_preprocess.crop_pct if weights_preprocess else 0.875)
    interpolation = weights_preprocess.interpolation if weights_preprocess else "bilinear"
    return Preprocess(
        img_size=size,
        crop_pct=crop_pct,
        mean=config.mean or IMAGENET_MEAN,
        std=config.std or IMAGENET_STD,
        interpolation=interpolation,
    )


# Decoded size per image, bounded so a few huge files cannot take the machine's memory (a 13,000-pixel square PNG
# is 500 MB decoded): above a 48-megapixel phone photo; JPEGs are measured after their reduced-scale draft.
MAX_DECODED_PIXELS = 64 * 10**6


DIGESTS_FILE = "file-digests.json"  # in a cache folder: the digests of the files it cached, by path and stat


def content_digests(paths: Sequence[str], folder: Path) -> list[str]:
    """A digest of each file's bytes (BLAKE2b, 128 bits), for caches keyed on what the pixels are, not on a path
    and a modification time (a repainted photo kept its size and mtime, and its stale features were served). Each
    is remembered with the file's size, mtime, ctime and inode: any write changes the ctime, which no user can
    set back, so a file whose stat is unchanged is not read again (the memo: ``folder / DIGESTS_FILE``)."""
    memo_path = folder / DIGESTS_FILE
    try:
        memo = json.loads(memo_path.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    digests, changed = [], False
    for path in paths:
        stat = os.stat(path)
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        known = memo.get(path)
        if not (isinstance(known, list) and known[:4] == signature):
            known, changed = [*signature, _file_digest(path)], True
            memo[path] = known
        digests.append(str(known[4]))
    if changed:
        with contextlib.suppress(MobiforgeError):  # a read-only home: the digests are read again next time
            write_atomic(memo_path, json.dumps(memo))
    return digests


def _file_digest(path: str) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def oversized(image: Image.Image) -> str | None:
    """Why an opened (not yet decoded) image is too large to decode, or None."""
    width, height = image.size
    if width * height <= MAX_DECODED_PIXELS:
        return None
    return (
        f"{width}x{height} pixels is over the {MAX_DECODED_PIXELS // 10**6} megapixels mobiforge decodes; downscale it"
    )


def load_rgb(path: str | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Open an image (a path, or a binary file such as an upload) as RGB, upright (EXIF orientation applied),
    8 bits per channel. For JPEGs, ``draft_size`` lets libjpeg decode at a reduced scale (a large speed-up on
    full-size photos) while keeping at least ``draft_size`` pixels on each side."""
    with Image.open(path) as image:
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        if problem := oversized(image):  # checked before decoding: the header alone gives the size
            raise ValueError(problem)
        ImageOps.exif_transpose(image, in_place=True)  # a portrait phone photo is stored sideways plus a tag
        if image.mode in SIXTEEN_BIT_MODES:
            return _to_8_bit(image).convert("RGB")
        if image.mode == "F":  # 32-bit float (TIFF): convert() truncates 0.0-1.0 values to 0 or 1, a black image
            return _float_to_8_bit(image).convert("RGB")
        return image.convert("RGB")


# Pillow opens 16-bit grayscale (PNG, TIFF) as one of these, values 0-65535; its convert("RGB") clips them at 255,
# so a mid-gray photo came out all white.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _float_to_8_bit(image: Image.Image) -> Image.Image:
    """A float image as 8 bits: values in [0, 1] (the usual float convention) scaled by 255, others read as 0-255."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def _to_8_bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


class ImageSamples(Dataset):
    """(path, label) samples with a transform; ``set_epoch`` re-seeds the per-sample augmentation (seeded by the
    sample's index, or by its entry in ``sample_ids``: the feature cache names files by their bytes). With ``images``
    (prepared uint8 tensors by path, see ``check_images``) nothing is read from disk and ``transform`` is only the
    random part of the recipe."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Any], Any],
        seed: int = 0,
        draft_size: int | None = None,
        images: dict[str, torch.Tensor] | None = None,
        sample_ids: Sequence[int] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.sample_ids = sample_ids  # what seeds each sample's augmentation (default: its index)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.draft_size = draft_size
        self.images = images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = tv_tensors.Image(self.images[path]) if self.images is not None else load_rgb(path, self.draft_size)
        # Seeding per sample makes augmentation independent of worker count and of where a resumed run restarts.
        # (The CPU generator alone: torch.manual_seed also seeds every accelerator, ~150 us a call here.)
        sample = index if self.sample_ids is None else self.sample_ids[index]
        sample_seed = hash((self.seed, self.epoch, sample)) & 0x7FFF_FFFF_FFFF_FFFF
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(sample_seed)  # a worker's RNG serves only augmentation
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):  # in the main process, leave the training RNG (dropout) alone
            torch.default_generator.manual_seed(sample_seed)
            return self.transform(image), label
