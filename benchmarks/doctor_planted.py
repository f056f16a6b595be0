"""Planted issues: does the doctor find them? On a copy of a split folder (links to its files, never the files):
5% of train photos filed under another class (flipped labels), and 20 val photos copied into train after a JPEG
re-encode, a 5% crop or a brightness change (a third each). The doctor runs cold (no feature cache), as a user's
first run does.

Counted: the planted flips among the photos it flags as mislabelled in train (recall) and the share of those flags
that are planted (precision; a flag on a photo the original folder already had wrong counts against it); the
planted copies among the val photos it reports leaked, with the copy as the train partner (recall), and the share
of the reported leaks that are planted (precision).

    python -m benchmarks.doctor_planted --data ../shared/datasets/hymenoptera --scratch /tmp/planted
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import ImageEnhance

from benchmarks.results import write_section
from mobiforge.config import DataConfig, DoctorConfig
from mobiforge.data import discover, load_rgb
from mobiforge.doctor import doctor
from mobiforge.progress import SilentReporter

FLIPPED = 0.05
COPIES = 20
KINDS = ("JPEG re-encode (quality 75)", "5% crop", "brightness x1.2")


def plant(data: Path, scratch: Path, seed: int) -> tuple[Path, set[str], dict[str, str], dict[str, str]]:
    """The planted folder, the flipped train files, {copy: its val original} and {copy: its kind} (paths in it)."""
    splits = discover(DataConfig(data=str(data)))
    rng = random.Random(seed)
    root = scratch / "data"
    if root.exists():
        shutil.rmtree(root)
    flipped_count = round(FLIPPED * len(splits.train))
    flips = set(rng.sample(range(len(splits.train)), flipped_count))
    flipped, copies, kinds = set(), {}, {}
    for index, (path, label) in enumerate(splits.train):
        if index in flips:
            label = rng.choice([other for other in range(len(splits.classes)) if other != label])
        target = root / "train" / splits.classes[label] / Path(path).name
        _link(Path(path), target)
        if index in flips:
            flipped.add(str(target))
    val_links = []
    for path, label in splits.val:
        target = root / "val" / splits.classes[label] / Path(path).name
        _link(Path(path), target)
        val_links.append((target, label))
    for number, (original, label) in enumerate(rng.sample(val_links, COPIES)):
        kind = KINDS[number % len(KINDS)]
        copy = root / "train" / splits.classes[label] / f"planted-copy-{number:02d}.jpg"
        _changed(load_rgb(str(original)), kind).save(copy, quality=75)
        copies[str(copy)], kinds[str(copy)] = str(original), kind
    return root, flipped, copies, kinds


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), target)


def _changed(image: Any, kind: str) -> Any:
    if kind.startswith("5% crop"):
        width, height = image.size
        return image.crop((round(0.025 * width), round(0.025 * height), round(0.975 * width), round(0.975 * height)))
    if kind.startswith("brightness"):
        return ImageEnhance.Brightness(image).enhance(1.2)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a split folder (train/ and val/)")
    parser.add_argument("--scratch", required=True, help="where the planted folder and the doctor's run go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scratch = Path(args.scratch)
    root, flipped, copies, kinds = plant(Path(args.data), scratch, args.seed)
    shutil.rmtree(scratch / "run", ignore_errors=True)
    started = time.perf_counter()
    diagnosis = doctor(DoctorConfig(data=str(root), out=str(scratch / "run")), SilentReporter())
    seconds = time.perf_counter() - started
    assert diagnosis.features is not None
    path = {index: fact.path for index, fact in enumerate(diagnosis.facts)}
    flagged = {path[index] for index, *_ in diagnosis.features.label_issues if diagnosis.facts[index].split == "train"}
    flagged_val = sum(1 for index, *_ in diagnosis.features.label_issues if diagnosis.facts[index].split == "val")
    found_flips = flipped & flagged
    leaks = {(path[leak.val], path[leak.train]) for leak in diagnosis.leaks}
    found_copies = {copy for copy, original in copies.items() if (original, copy) in leaks}
    by_kind = {kind: sum(1 for copy in found_copies if kinds[copy] == kind) for kind in KINDS}
    planted_kind = {kind: sum(1 for copy in copies if kinds[copy] == kind) for kind in KINDS}
    figures = {
        "images": len(diagnosis.facts),
        "flips_planted": len(flipped),
        "flips_found": len(found_flips),
        "flip_recall": len(found_flips) / max(1, len(flipped)),
        "flip_precision": len(found_flips) / max(1, len(flagged)),
        "train_flagged": len(flagged),
        "val_flagged": flagged_val,
        "copies_planted": len(copies),
        "copies_found": len(found_copies),
        "copy_recall": len(found_copies) / len(copies),
        "copy_precision": len(found_copies) / max(1, len(leaks)),
        "leaks_reported": len(leaks),
        "seconds": seconds,
        "probe_top1": diagnosis.features.probe_accuracy,
    }
    met = figures["flip_recall"] >= 0.9 and figures["flip_precision"] >= 0.8
    met_copies = figures["copy_recall"] >= 0.95 and figures["copy_precision"] >= 0.8
    print(figures)
    name = Path(args.data).resolve().name
    body = "\n".join(
        [
            f"## Doctor: planted issues in {name}",
            "",
            f"{len(diagnosis.facts)} files after planting (seed {args.seed}): {len(flipped)} train photos "
            f"({FLIPPED:.0%}) filed under another class, and {len(copies)} val photos copied into train "
            f"({', '.join(KINDS)}, in turn). "
            f"Doctor run cold (no feature cache): {seconds:.0f} s, of which "
            + ", ".join(f"{k} {v:.0f} s" for k, v in diagnosis.seconds.items())
            + f". The linear probe's out-of-fold top-1: {diagnosis.features.probe_accuracy:.1f}%.",
            "",
            "| planted | planted | found | recall | flagged or reported | precision | target |",
            "|---|---|---|---|---|---|---|",
            f"| flipped labels (train) | {len(flipped)} | {len(found_flips)} | {figures['flip_recall']:.2f} | "
            f"{len(flagged)} flagged in train ({flagged_val} more in val) | {figures['flip_precision']:.2f} | "
            f"recall >= 0.9, precision >= 0.8: {'met' if met else 'MISSED'} |",
            f"| val copies in train | {len(copies)} | {len(found_copies)} | {figures['copy_recall']:.2f} | "
            f"{len(leaks)} leaked val photos reported | {figures['copy_precision']:.2f} | "
            f"recall >= 0.95, precision >= 0.8: {'met' if met_copies else 'MISSED'} |",
            "",
            "Copies found by kind: "
            + ", ".join(f"{kind} {by_kind[kind]} of {planted_kind[kind]}" for kind in KINDS)
            + ". Verdicts: "
            + "; ".join(diagnosis.verdicts()),
        ]
    )
    write_section(f"doctor_planted_{name}", body, figures)


if __name__ == "__main__":
    main()
