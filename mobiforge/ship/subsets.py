"""Plans that know the folder's size: when the budget cannot pass every training photo through the trunk, the
teacher's probe rungs train on a stratified subset, a learning curve of its probe (top-1 at 1/4, 1/2 and all of
the subset) tells whether more photos or more epochs pay, and the rungs and students after it take as many photos
as their time allows.

A subset is a ``path,label,split`` table in the run folder (the val rows all of the split's): ``train`` reads it as
it reads the user's own tables, and its cached rows are the folder's own (rows are named by file, so a larger
subset, or the whole folder, reads back the rows a smaller one computed). The user's folder is only read.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mobiforge.data import DataConfig, discover, spaced_subset
from mobiforge.doctor.features import fitted_probe
from mobiforge.files import write_atomic
from mobiforge.ship.policy import CURVE_GAIN, CURVE_SHARES, SUBSET_MIN_PER_CLASS

SUBSETS = "subsets"  # the run folder's tables of training subsets
Labelled = TypeVar("Labelled", bound=tuple[Any, int])  # a sample: (path or row, label)


def stratified_subset(samples: list[Labelled], count: int) -> list[Labelled]:
    """``count`` samples (all when ``count`` is as many or more) with each class's share of them kept (at least one
    per class), evenly spaced within each class: a folder's bursts of near-identical photos are thinned, not kept
    whole or dropped whole."""
    if count >= len(samples):
        return list(samples)
    by_class: dict[int, list[Labelled]] = {}
    for sample in sorted(samples):
        by_class.setdefault(sample[1], []).append(sample)
    quotas = {label: max(1, int(count * len(items) / len(samples))) for label, items in by_class.items()}
    by_remainder = sorted(by_class, key=lambda label: -(count * len(by_class[label]) / len(samples)) % 1)
    for label in by_remainder[: max(0, count - sum(quotas.values()))]:  # the largest remainders take what is left
        quotas[label] += 1
    return sorted(sample for label, items in by_class.items() for sample in spaced_subset(items, quotas[label]))


def floor_images(classes: int, train_images: int) -> int:
    """The fewest training photos a subset keeps: SUBSET_MIN_PER_CLASS per class (all, where the folder has fewer)."""
    return min(train_images, SUBSET_MIN_PER_CLASS * classes)


def most_images(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The most photos in ``[low, high]`` for which ``fits`` holds (it holds for fewer wherever it holds for more):
    ``high`` when it fits there, 0 when not even ``low`` fits."""
    if fits(high):
        return high
    if low >= high or not fits(low):
        return 0
    while high - low > max(1, low // 50):  # to 2%: a plan's estimates are no finer
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def subset_table(run_dir: Path, data: DataConfig, classes: list[str], count: int) -> str:
    """The table of ``count`` training photos of ``data`` (``stratified_subset``) and all its val photos, written
    once into the run folder; its path, for ``--data``. Paths are relative to the table, so the run folder moves."""
    splits = discover(data)
    table = run_dir / SUBSETS / f"train-{count}.csv"
    if table.exists():
        return str(table)
    table.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for split, samples in (("train", stratified_subset(splits.train, count)), ("val", splits.val)):
        for path, label in samples:
            writer.writerow([Path(os.path.relpath(path, table.parent)).as_posix(), classes[label], split])
    write_atomic(table, text.getvalue())
    return str(table)


def learning_curve(
    features: np.ndarray, labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray
) -> list[tuple[int, float]]:
    """(photos, val top-1) of a linear probe on CURVE_SHARES of the training ``features`` (stratified, evenly spaced):
    the shape of the curve says whether more photos would pay."""
    rows = [(index, int(label)) for index, label in enumerate(labels)]
    curve = []
    for share in CURVE_SHARES:
        picked = [index for index, _ in stratified_subset(rows, max(1, round(share * len(rows))))]
        if len(set(labels[picked].tolist())) < 2:  # a probe needs two classes
            continue
        probe = fitted_probe(features[picked], labels[picked])
        curve.append((len(picked), round(100.0 * float(probe.score(val_features, val_labels)), 2)))
    return curve


def more_images_pay(curve: Sequence[Sequence[float]]) -> bool:
    """Whether the curve still climbs: its last doubling of photos gained at least CURVE_GAIN points."""
    return len(curve) >= 2 and curve[-1][1] - curve[-2][1] >= CURVE_GAIN
