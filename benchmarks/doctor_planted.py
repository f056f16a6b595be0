"""Planted issues: does the doctor find them? On a copy of a split folder (links to its files, never the files):
5% of train photos filed under another class (flipped labels), and 20 val photos copied into train after a JPEG
re-encode, a 5% crop or a brightness change (a third each). The doctor runs cold (no feature cache), as a user's
first run does.

Counted: the planted flips among the photos it flags as mislabelled in train (recall), and the planted copies among
the val photos it reports leaked, with the copy among their train partners (recall). Precision is counted two ways:
- strict: the share of the flags (or reported leaks) that were planted, as if the original folder were clean;
- on what planting added: the same share, leaving out the flags (leaks) the doctor also raises on the original
  folder, which it runs on too. Those pre-existing findings go on contact sheets beside the record
  (``reports/doctor_planted_<set>/``), so a reader can judge whether the folder really had them; for leaks whose
  files carry Roboflow export names (``<source>_<ext>.rf.<hash>``), a shared source photo is counted as well.

    python -m benchmarks.doctor_planted --data ../shared/datasets/hymenoptera --scratch /tmp/planted
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import ImageEnhance

from benchmarks.results import BENCHMARKS, write_section
from benchmarks.sheets import contact_sheet, stamped
from mobiforge.config import DataConfig, DoctorConfig
from mobiforge.data import discover, load_rgb
from mobiforge.doctor import Diagnosis, Leak, doctor
from mobiforge.progress import SilentReporter

FLIPPED = 0.05
COPIES = 20
KINDS = ("JPEG re-encode (quality 75)", "5% crop", "brightness x1.2")
ROBOFLOW_SOURCE = re.compile(r"^(.+?)_(?:png|jpe?g)\.rf\.[0-9a-f]+")  # an export's name: <source>_<ext>.rf.<hash>
SHEET_SIDE, SHEET_COLUMNS, SHEET_MOST = 96, 4, 32


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
    parser.add_argument("--scratch", required=True, help="where the planted folder and the doctor's runs go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scratch, name = Path(args.scratch), Path(args.data).resolve().name
    root, flipped, copies, kinds = plant(Path(args.data), scratch, args.seed)
    for run in ("run", "original"):
        shutil.rmtree(scratch / run, ignore_errors=True)
    started = time.perf_counter()
    diagnosis = doctor(DoctorConfig(data=str(root), out=str(scratch / "run")), SilentReporter())
    seconds = time.perf_counter() - started
    original = doctor(DoctorConfig(data=args.data, out=str(scratch / "original")), SilentReporter())
    assert diagnosis.features is not None and original.features is not None
    path = {index: fact.path for index, fact in enumerate(diagnosis.facts)}
    flags = {index: suggested for index, suggested, *_ in diagnosis.features.label_issues}
    flagged = {path[index] for index in flags if diagnosis.facts[index].split == "train"}
    flagged_val = sum(1 for index in flags if diagnosis.facts[index].split == "val")
    found_flips = flipped & flagged
    flagged_before = {file_key(original, index) for index, *_ in original.features.label_issues}
    old_flags = [i for i in flags if path[i] in flagged - flipped and file_key(diagnosis, i) in flagged_before]
    partners = {leak.val: [path[i] for i in (leak.train, *leak.also)] for leak in diagnosis.leaks}
    leaks = {(path[val], partner) for val, found in partners.items() for partner in found}
    found_copies = {copy for copy, original_path in copies.items() if (original_path, copy) in leaks}
    # a leak through a planted copy is real: the copy's original, or a val sibling of it (rps has several crops of
    # one source photo in val), is in train now
    planted_val = {path[val] for val, found in partners.items() if set(found) & set(copies)}
    leaked_before = {file_key(original, leak.val) for leak in original.leaks}
    old_leaks = [leak for leak in diagnosis.leaks if path[leak.val] not in planted_val]
    old_leaks = [leak for leak in old_leaks if file_key(diagnosis, leak.val) in leaked_before]
    same_source = sum(1 for leak in old_leaks if _same_source(path[leak.val], partners[leak.val]))
    by_kind = {kind: sum(1 for copy in found_copies if kinds[copy] == kind) for kind in KINDS}
    planted_kind = {kind: sum(1 for copy in copies if kinds[copy] == kind) for kind in KINDS}
    reports = BENCHMARKS / "reports" / f"doctor_planted_{name}"
    sheets = _sheets(diagnosis, old_flags, flags, old_leaks, reports)
    figures = {
        "images": len(diagnosis.facts),
        "flips_planted": len(flipped),
        "flips_found": len(found_flips),
        "flip_recall": len(found_flips) / max(1, len(flipped)),
        "flip_precision": len(found_flips) / max(1, len(flagged)),
        "flip_precision_added": len(found_flips) / max(1, len(flagged) - len(old_flags)),
        "train_flagged": len(flagged),
        "train_flagged_before": len(old_flags),
        "val_flagged": flagged_val,
        "copies_planted": len(copies),
        "copies_found": len(found_copies),
        "copy_recall": len(found_copies) / len(copies),
        "copy_precision": len(planted_val) / max(1, len(diagnosis.leaks)),
        "copy_precision_added": len(planted_val) / max(1, len(diagnosis.leaks) - len(old_leaks)),
        "leaks_reported": len(diagnosis.leaks),
        "leaks_before": len(old_leaks),
        "leaks_before_same_source": same_source,
        "seconds": seconds,
        "probe_top1": diagnosis.features.probe_accuracy,
        "label_probe": diagnosis.features.probe,
        "probes_top1": diagnosis.features.probe_accuracies,
    }
    print(figures)
    write_section(
        f"doctor_planted_{name}", _body(name, args.seed, diagnosis, figures, by_kind, planted_kind, sheets), figures
    )


def file_key(diagnosis: Diagnosis, index: int) -> tuple[str, str]:
    """A file across the original and the planted folder: its split and name (a flip moves it to another class)."""
    fact = diagnosis.facts[index]
    return fact.split, Path(fact.path).name


def _same_source(val: str, partners: list[str]) -> bool:
    source = ROBOFLOW_SOURCE.match(Path(val).name)
    return source is not None and any(
        (match := ROBOFLOW_SOURCE.match(Path(partner).name)) and match[1] == source[1] for partner in partners
    )


def _sheets(
    diagnosis: Diagnosis, old_flags: list[int], flags: dict[int, int], old_leaks: list[Leak], reports: Path
) -> list[str]:
    """The pre-existing findings, for a reader to judge: flagged photos (given -> suggested), leaked pairs; returns
    the sheets' names (stamped with the run's date)."""
    sheets = [stamped(Path(name)).name for name in ("label_flags_before_planting.png", "leaks_before_planting.png")]
    classes, facts = diagnosis.classes, diagnosis.facts
    shown = old_flags[:SHEET_MOST]
    contact_sheet(
        [([facts[i].path], f"{classes[facts[i].label][:8]} -> {classes[flags[i]][:8]}") for i in shown],
        reports / sheets[0], SHEET_SIDE, 2 * SHEET_COLUMNS,
    )  # fmt: skip
    pairs = random.Random(0).sample(old_leaks, min(SHEET_MOST, len(old_leaks)))
    contact_sheet(
        [([facts[leak.val].path, facts[leak.train].path], _caption(leak)) for leak in pairs],
        reports / sheets[1], SHEET_SIDE, SHEET_COLUMNS,
    )  # fmt: skip
    return sheets


def _caption(leak: Leak) -> str:
    return f"{leak.kind} d={leak.distance:.2f}" + (f" r={leak.similarity:.3f}" if leak.similarity is not None else "")


def _body(
    name: str, seed: int, diagnosis: Diagnosis, figures: dict, by_kind: dict, planted_kind: dict, sheets: list[str]
) -> str:
    f = figures
    met = f["flip_recall"] >= 0.9 and f["flip_precision_added"] >= 0.8
    met_copies = f["copy_recall"] >= 0.95 and f["copy_precision_added"] >= 0.8
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in diagnosis.seconds.items())
    probes = "; ".join(f"{probe} {top1:.1f}%" for probe, top1 in f["probes_top1"].items())
    return "\n".join(
        [
            f"## Doctor: planted issues in {name}",
            "",
            f"{f['images']} files after planting (seed {seed}): {f['flips_planted']} train photos ({FLIPPED:.0%}) "
            f"filed under another class, and {f['copies_planted']} val photos copied into train ({', '.join(KINDS)}, "
            f"in turn). Doctor run cold (no feature cache): {f['seconds']:.0f} s, of which {seconds}. The labels were "
            f"judged by the {f['label_probe']}, the probe that agreed more with them out of fold ({probes}).",
            "",
            "| planted | planted | found | recall | flagged or reported | of them also on the original folder | "
            "precision, strict | precision on what planting added | target |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| flipped labels (train) | {f['flips_planted']} | {f['flips_found']} | {f['flip_recall']:.2f} | "
            f"{f['train_flagged']} flagged in train ({f['val_flagged']} more in val) | {f['train_flagged_before']} | "
            f"{f['flip_precision']:.2f} | {f['flip_precision_added']:.2f} | recall >= 0.9, precision >= 0.8: "
            f"{'met' if met else 'MISSED'} |",
            f"| val copies in train | {f['copies_planted']} | {f['copies_found']} | {f['copy_recall']:.2f} | "
            f"{f['leaks_reported']} leaked val photos reported | {f['leaks_before']} "
            f"({f['leaks_before_same_source']} share a source photo by their Roboflow names) | "
            f"{f['copy_precision']:.2f} | {f['copy_precision_added']:.2f} | recall >= 0.95, precision >= 0.8: "
            f"{'met' if met_copies else 'MISSED'} |",
            "",
            "Copies found by kind: "
            + ", ".join(f"{kind} {by_kind[kind]} of {planted_kind[kind]}" for kind in KINDS)
            + f". The findings also raised on the original folder, for a reader to judge: "
            f"`reports/doctor_planted_{name}/{sheets[0]}` (given -> suggested class) and "
            f"`{sheets[1]}` (val left, train right). Verdicts: " + "; ".join(diagnosis.verdicts()),
        ]
    )


if __name__ == "__main__":
    main()
