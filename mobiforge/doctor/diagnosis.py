"""What the doctor found, as one record: the files' facts, the cheap and the feature findings, the leaks across the
split, verdicts in plain words, ``doctor.json`` (paths relative to the data folder) and the cleaned split.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobiforge.doctor.features import NON_IID_P, FeatureFindings
from mobiforge.doctor.files import FileFacts, FileFindings
from mobiforge.doctor.pixels import verified_copies
from mobiforge.units import counted, named

IMBALANCE_RATIO = 10.0  # most / fewest train images of a class above which the folder reads as imbalanced
FEW_IMAGES = 10  # a class with fewer train images than this is flagged (a judgement: a probe fold needs some)


@dataclass
class Leak:
    """A val image with a copy in train: the same pixels (``exact``), or a near copy (``near``) that its thumbnail
    confirms (``similarity``) or that sits in one of Datalab's near-duplicate sets by features alone."""

    val: int
    train: int  # the closest copy
    kind: str  # "exact" or "near"
    distance: float = 0.0  # between their features, cosine (0 for exact)
    similarity: float | None = None  # of their thumbnails (doctor.pixels), when the pixel check confirmed it
    also: list[int] = field(default_factory=list)  # more train copies of it


@dataclass
class Diagnosis:
    data: str  # the data's name (its folder's), for the report's title: no local path
    root: Path  # paths in doctor.json and the report are relative to it
    classes: list[str]
    facts: list[FileFacts]
    cheap: FileFindings
    features: FeatureFindings | None = None
    leaks: list[Leak] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------- shown

    def relative(self, index: int) -> str:
        path = self.facts[index].path
        try:
            return Path(os.path.relpath(path, self.root)).as_posix()
        except ValueError:  # another drive (Windows): the name alone
            return Path(path).name

    def entry(self, index: int) -> dict[str, Any]:
        fact = self.facts[index]
        return {"path": self.relative(index), "split": fact.split, "label": self.classes[fact.label]}

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {name: {"train": 0, "val": 0} for name in self.classes}
        for fact in self.facts:
            counts[self.classes[fact.label]][fact.split] += 1
        return counts

    def leaked_val(self) -> list[int]:
        return sorted({leak.val for leak in self.leaks})

    def imbalance(self) -> float:
        train = [count["train"] for count in self.class_counts().values()]
        return max(train) / max(1, min(train))

    def verdicts(self) -> list[str]:
        """The findings in plain words, the ones that change a score first."""
        said = []
        leaked = self.leaked_val()
        val = sum(1 for fact in self.facts if fact.split == "val")
        if leaked:
            said.append(
                f"{len(leaked)} of {val} val photos have a copy or near-copy in train: the val score may read high "
                "(judge on the rest: ship's report gives the score without them; doctor --fix writes a split "
                "without them)"
            )
        conflicting = [group for group in self.cheap.duplicate_groups if len(self._labels(group)) > 1]
        if conflicting:
            said.append(
                f"{counted(len(conflicting), 'set of identical images carries', 'sets of identical images carry')} "
                "different labels: one of each is wrong"
            )
        if self.features is not None and self.features.label_issues:
            share = 100.0 * len(self.features.label_issues) / len(self.facts)
            said.append(
                f"{counted(len(self.features.label_issues), 'photo')} ({share:.1f}%) "
                f"{'looks' if len(self.features.label_issues) == 1 else 'look'} mislabelled: their features sit "
                "with another class (check them before trusting a tenth of a point)"
            )
        said += self._cheap_verdicts()
        bursts = self.bursts()
        if bursts:
            said.append(
                f"files that follow each other look alike in {named(bursts)} (burst shots or video frames?): a "
                "random split puts near-copies on both sides; split by session or by source"
            )
        return said or ["no problem found"]

    def bursts(self) -> list[str]:
        if self.features is None:
            return []
        return [self.classes[label] for label, p in self.features.non_iid.items() if p < NON_IID_P]

    def _labels(self, group: list[int]) -> set[int]:
        return {self.facts[index].label for index in group}

    def _cheap_verdicts(self) -> list[str]:
        cheap, said = self.cheap, []
        copies = sum(len(group) - 1 for group in cheap.duplicate_groups)
        if copies:
            copied = counted(copies, "file is an exact copy", "files are exact copies")
            said.append(f"{copied} of another (same pixels): each counts twice")
        if cheap.unreadable:
            broken = counted(len(cheap.unreadable), "file does", "files do")
            said.append(f"{broken} not decode: train and ship stop on them (--skip-bad-images)")
        counts = self.class_counts()
        few = [name for name, count in counts.items() if count["train"] < FEW_IMAGES]
        if few:
            said.append(f"classes with fewer than {FEW_IMAGES} train images: {named(few)}")
        if self.imbalance() >= IMBALANCE_RATIO:
            said.append(
                f"the classes are imbalanced {self.imbalance():.0f} to 1 in train: top-1 favours the large ones"
            )
        for items, verbs, what in (
            (cheap.tiny, ("is", "are"), f"tiny (under {cheap.tiny_side} px on a side)"),
            (cheap.extreme_aspect, ("has", "have"), "an extreme aspect ratio: the center crop sees a sliver"),
            (cheap.gray_among_colour, ("is", "are"), "grayscale among colour photos"),
            (cheap.cmyk, ("is", "are"), "stored in CMYK (print colours): some apps decode them with wrong colours"),
            (cheap.lying_extension, ("has", "have"), "an extension that does not match their format"),
        ):
            if items:
                said.append(f"{counted(len(items), 'file ' + verbs[0], 'files ' + verbs[1])} {what}")
        return said

    # --------------------------------------------------------------------------------------------- records

    def to_dict(self) -> dict[str, Any]:
        """``doctor.json``: every finding with paths relative to the data folder."""
        cheap = self.cheap
        listed = {
            "unreadable": [{**self.entry(i), "problem": self.facts[i].problem} for i in cheap.unreadable],
            "exact_duplicates": [[self.entry(i) for i in group] for group in cheap.duplicate_groups],
            "tiny": [{**self.entry(i), "size": [self.facts[i].width, self.facts[i].height]} for i in cheap.tiny],
            "extreme_aspect": [
                {**self.entry(i), "size": [self.facts[i].width, self.facts[i].height]} for i in cheap.extreme_aspect
            ],
            "grayscale_among_colour": [self.entry(i) for i in cheap.gray_among_colour],
            "cmyk": [self.entry(i) for i in cheap.cmyk],
            "exif_rotated": [self.entry(i) for i in cheap.exif_rotated],
            "lying_extension": [{**self.entry(i), "format": self.facts[i].format} for i in cheap.lying_extension],
            "leaked_val": [
                {"val": self.relative(leak.val), "train": self.relative(leak.train), "kind": leak.kind,
                 "distance": round(leak.distance, 5),
                 "pixel_similarity": None if leak.similarity is None else round(leak.similarity, 4),
                 "more_train_copies": [self.relative(index) for index in leak.also]}
                for leak in self.leaks
            ],
        }  # fmt: skip
        if self.features is not None:
            found = self.features
            listed["label_issues"] = [
                {**self.entry(i), "suggested": self.classes[s], "confidence": round(p, 4), "label_score": round(q, 4)}
                for i, s, p, q in found.label_issues
            ]
            listed["near_duplicates"] = [[self.entry(i) for i in group] for group in found.near_duplicate_sets]
            listed["outliers"] = [{**self.entry(i), "outlier_score": round(q, 4)} for i, q in found.outliers]
            listed["file_order_p_values"] = {self.classes[k]: round(p, 5) for k, p in found.non_iid.items()}
        return {
            "data": self.data,
            "images": len(self.facts),
            "classes": self.class_counts(),
            "verdicts": self.verdicts(),
            "feature_checks": self.features is not None,
            "probe_top1_out_of_fold": round(self.features.probe_accuracy, 2) if self.features else None,
            "label_probe": self.features.probe if self.features else None,
            "probes_top1_out_of_fold": (
                {name: round(top1, 2) for name, top1 in self.features.probe_accuracies.items()}
                if self.features
                else None
            ),
            "findings": listed,
            "seconds": {name: round(value, 1) for name, value in self.seconds.items()},
        }

    def cleaned_rows(self) -> list[tuple[int, str]]:
        """The samples a cleaned split keeps, with their split: without the undecodable files, the leaked val
        photos, every copy but one of identical images in a split, and identical images whose labels disagree."""
        dropped = set(self.cheap.unreadable) | set(self.leaked_val())
        for group in self.cheap.duplicate_groups:
            if len(self._labels(group)) > 1:
                dropped.update(group)
                continue
            kept: set[str] = set()
            for index in group:
                split = self.facts[index].split
                if split in kept:
                    dropped.add(index)
                kept.add(split)
        return [(index, fact.split) for index, fact in enumerate(self.facts) if index not in dropped]

    def cleaned_csv(self, csv_folder: Path) -> str:
        """The cleaned split as ``path,label,split``, the paths relative to the CSV's folder (as train reads them)."""
        stream = io.StringIO()
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        for index, split in self.cleaned_rows():
            fact = self.facts[index]
            path = Path(os.path.relpath(Path(fact.path).resolve(), csv_folder.resolve())).as_posix()
            writer.writerow([path, self.classes[fact.label], split])
        return stream.getvalue()


def find_leaks(
    facts: list[FileFacts], cheap: FileFindings, features: FeatureFindings | None, vectors: np.ndarray | None
) -> list[Leak]:
    """Val images with a copy in train, each paired with its closest train copy: exact (same pixels), then near:
    confirmed on pixels among the nearest by features (``doctor.pixels``), or in one near-duplicate set."""
    leaks: dict[int, Leak] = {}
    for group in cheap.duplicate_groups:
        train = [index for index in group if facts[index].split == "train"]
        for index in group:
            if facts[index].split == "val" and train:
                leaks[index] = Leak(index, train[0], "exact", also=train[1:])
    if features is None or vectors is None:
        return sorted(leaks.values(), key=lambda leak: leak.val)
    readable = [index for index, fact in enumerate(facts) if fact.problem is None]
    thumbs = [fact.thumbnail for fact in facts]
    train = [index for index in readable if facts[index].split == "train"]
    val = [index for index in readable if facts[index].split == "val" and index not in leaks]
    for copy in verified_copies(thumbs, vectors, train, val):
        leaks[copy.val] = Leak(copy.val, copy.train[0], "near", copy.distance, copy.similarity, copy.train[1:])
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    for group in features.near_duplicate_sets:
        train = [index for index in group if facts[index].split == "train"]
        for index in group:
            if facts[index].split != "val" or not train or index in leaks:
                continue
            distances = 1.0 - unit[train] @ unit[index]
            closest = int(np.argmin(distances))
            leaks[index] = Leak(index, train[closest], "near", float(distances[closest]))
    return sorted(leaks.values(), key=lambda leak: leak.val)


def duplicated_classes(facts: list[FileFacts], classes: list[str]) -> list[str]:
    """Classes with at most one image of their own: every other file is a copy of it or of another class's image."""
    owners: dict[str, set[int]] = defaultdict(set)
    for fact in facts:
        if fact.problem is None:
            owners[fact.digest].add(fact.label)
    unique: dict[int, set[str]] = defaultdict(set)
    for fact in facts:
        if fact.problem is None and owners[fact.digest] == {fact.label}:
            unique[fact.label].add(fact.digest)
    present = {fact.label for fact in facts if fact.problem is None}
    return [classes[label] for label in sorted(present) if len(unique[label]) <= 1 and _copies(facts, label)]


def _copies(facts: list[FileFacts], label: int) -> bool:
    return sum(1 for fact in facts if fact.label == label and fact.problem is None) > 1
