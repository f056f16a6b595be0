"""Finding the data: class folders (with or without train/val splits), CSV tables and the built-in ``digits``,
split into train and val, every problem reported in one line naming the folder or files."""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import random
import shutil
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from mobiforge.config import BUILTIN_DATASETS, DataConfig
from mobiforge.errors import MobiforgeError
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


def relative_to_data(path: str, data: str) -> str:
    """``path`` as the data's reports name it: relative to ``data_root``, with forward slashes (links are not
    followed: a folder of links to photos elsewhere names them by their place in it)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(data_root(data)))).as_posix()


def gate_samples(
    config: DataConfig, classes: list[str], count: int | None, excluded: Collection[str] = ()
) -> list[Sample]:
    """The val images a gate judges on, and ``eval`` of its file repeats: the split without the ``excluded`` ones
    (paths relative to the data: the doctor's val photos with a copy in train), then ``count`` evenly spaced."""
    samples = split_samples(config, "val", classes)
    if excluded:
        named = {relative_to_data(path, config.data): (path, label) for path, label in samples}
        unknown = sorted(set(excluded) - set(named))
        if unknown:  # a list written against another folder, or with absolute paths, would leave nothing out
            raise MobiforgeError(
                f"{len(unknown)} of the {len(excluded)} val images to leave out are not in the val split of "
                f"{config.data} (first: {unknown[0]}); list paths relative to the data folder, e.g. val/CLASS/FILE"
            )
        left_out = set(excluded)
        samples = [sample for name, sample in named.items() if name not in left_out]
    return spaced_subset(samples, count)


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
