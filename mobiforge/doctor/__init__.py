"""``mobiforge doctor``: find the exact and near copies, the val photos leaked into train, the wrong labels and the
odd files of an image folder, before they fool a score.

- ``files``: the cheap checks, one decode per file (pixel hashes, sizes, modes, EXIF, formats).
- ``features``: the pretrained trunk's features through the transfer cache, a k-fold linear probe's held-out
  probabilities, and cleanlab's Datalab on both (label issues, near-duplicates, outliers, non-IID order).
- ``diagnosis``: the record: leaks across the split, verdicts, ``doctor.json`` and the cleaned split.
- ``report``: ``doctor.html`` with thumbnails.

The user's folder is only read: the report, the cache and the cleaned CSV go to the run folder.

    from mobiforge.doctor import DoctorConfig, doctor
    diagnosis = doctor(DoctorConfig(data="photos/"))
    diagnosis.leaked_val()   # indices into diagnosis.facts
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mobiforge.config import DataConfig, DoctorConfig
from mobiforge.data import data_name, discover
from mobiforge.doctor.diagnosis import Diagnosis, Leak, duplicated_classes, find_leaks
from mobiforge.doctor.features import (
    TUNED_BLOCKS,
    TUNED_MOST_IMAGES,
    FeatureFindings,
    datalab_findings,
    non_iid_order,
    out_of_fold_probabilities,
    pooled_features,
    trunk_activations,
    tuned_out_of_fold_probabilities,
)
from mobiforge.doctor.files import FileFacts, cheap_findings, scan_files
from mobiforge.doctor.report import write_report
from mobiforge.engine import resolve_device
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.units import named

__all__ = ["Diagnosis", "DoctorConfig", "FileFacts", "Leak", "diagnose", "doctor"]

TINY_FLOOR = 16  # px on the short side: a thumbnail, whatever the folder
TINY_FRACTION = 0.25  # of the folder's median short side
MAX_ASPECT = 3.0  # long side / short side; a 224 center crop of a 3:1 panorama keeps a third of it
CLEANED_CSV = "cleaned.csv"
LEAKED_LIST = "leaked_val.txt"  # for export --exclude-val: one path relative to the data a line
WRITTEN = ("doctor.html", "doctor.json", LEAKED_LIST, CLEANED_CSV)  # what a run may leave, in the order shown


def doctor(config: DoctorConfig, reporter: Reporter | None = None) -> Diagnosis:
    """Diagnose ``config.data`` and write ``doctor.json``, ``doctor.html``, ``leaked_val.txt`` when val photos
    have a copy in train (and with ``fix``, ``cleaned.csv``) to the run folder."""
    reporter = reporter or SilentReporter()
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    diagnosis = diagnose(config, reporter, Path(config.cache_dir) if config.cache_dir else run_dir / "cache")
    write_atomic(run_dir / "doctor.json", json.dumps(diagnosis.to_dict(), indent=2))
    write_report(diagnosis, run_dir / "doctor.html", config.shown)
    leaked = [diagnosis.relative(index) for index in diagnosis.leaked_val()]
    (run_dir / LEAKED_LIST).unlink(missing_ok=True)  # an earlier run's list must not outlive its leaks
    if leaked:
        header = "# val photos with a copy in train, relative to the data: mobiforge export --exclude-val FILE\n"
        write_atomic(run_dir / LEAKED_LIST, header + "".join(f"{path}\n" for path in leaked))
    if config.fix:
        write_atomic(run_dir / CLEANED_CSV, diagnosis.cleaned_csv(run_dir))
    return diagnosis


def diagnose(
    config: DoctorConfig,
    reporter: Reporter,
    cache_dir: Path,
    data: DataConfig | None = None,
    facts: list[FileFacts] | None = None,
) -> Diagnosis:
    """The checks, without writing a report (ship calls this). ``data``: the settings whose feature cache the
    feature checks read (ship passes its teacher probe's, so the probe's cached rows are read back). ``facts``: an
    earlier diagnosis's of the same folder and settings, so that no file is decoded again."""
    started = time.perf_counter()
    try:
        splits = discover(DataConfig(data=config.data, val_split=config.val_split, split_seed=config.split_seed))
    except MobiforgeError as error:  # discovery names train's --data flag; the doctor takes DIR as it is
        raise MobiforgeError(str(error).removeprefix("--data ")) from None
    items = [(path, "train", label) for path, label in splits.train] + [
        (path, "val", label) for path, label in splits.val
    ]
    if facts is None or [(fact.path, fact.split, fact.label) for fact in facts] != items:
        facts = scan_files(items, config.workers)
    cheap = cheap_findings(facts, TINY_FLOOR, TINY_FRACTION, MAX_ASPECT)
    copied = duplicated_classes(facts, splits.classes)
    if copied:
        raise MobiforgeError(
            f"{config.data}: every image of {named(copied)} is a copy of one image or of another class's images; "
            "a class needs photos of its own"
        )
    diagnosis = Diagnosis(data_name(config.data), splits.root, splits.classes, facts, cheap)
    diagnosis.seconds["files"] = time.perf_counter() - started
    reporter.message(f"doctor: {len(facts)} files checked in {diagnosis.seconds['files']:.0f} s")
    vectors = None
    if config.features:
        started = time.perf_counter()
        data = data or DataConfig(data=config.data, val_split=config.val_split, split_seed=config.split_seed)
        diagnosis.features, vectors = feature_checks(facts, len(splits.classes), config, reporter, cache_dir, data)
        diagnosis.seconds["features"] = time.perf_counter() - started
    diagnosis.leaks = find_leaks(facts, cheap, diagnosis.features, vectors)
    return diagnosis


def feature_checks(
    facts: list[FileFacts], classes: int, config: DoctorConfig, reporter: Reporter, cache_dir: Path, data: DataConfig
) -> tuple[FeatureFindings, np.ndarray]:
    """Datalab on the trunk's features of the readable files; its findings indexed as ``facts`` is, and the features
    in that indexing too (zero rows for the unreadable files)."""
    readable = [index for index, fact in enumerate(facts) if fact.problem is None]
    readable.sort(key=lambda index: facts[index].split != "train")  # the train rows first, as the cache holds them
    samples = [(facts[index].path, facts[index].label) for index in readable]
    train = [sample for index, sample in zip(readable, samples, strict=True) if facts[index].split == "train"]
    val = samples[len(train) :]
    tuned = config.label_probe == "auto" and len(train) <= TUNED_MOST_IMAGES
    blocks = TUNED_BLOCKS if tuned else 0
    model, activations = trunk_activations(
        train, val, cache_dir, reporter, data, config.seed, config.trunk_engine, blocks, resolve_device(config.device)
    )
    features = pooled_features(model, activations, blocks)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    probabilities = out_of_fold_probabilities(features, labels, classes, config.folds, config.seed)
    tuned_probabilities = None
    if tuned:
        reporter.message(f"doctor: fine-tuning the trunk's last {TUNED_BLOCKS} blocks on {config.folds} folds")
        tuned_probabilities = tuned_out_of_fold_probabilities(
            model, activations, labels, classes, config.folds, config.seed
        )
    found = datalab_findings(features, labels, probabilities, tuned_probabilities)
    by_name = np.argsort([path for path, _ in samples], kind="stable")  # the order a folder lists its files
    order = non_iid_order(features[by_name], labels[by_name], classes)
    found = _reindexed(found, readable, len(facts))
    found.non_iid = order
    vectors = np.zeros((len(facts), features.shape[1]), dtype=np.float32)
    vectors[readable] = features
    return found, vectors


def _reindexed(found: FeatureFindings, readable: list[int], files: int) -> FeatureFindings:
    at = readable.__getitem__
    scores = np.full(files, np.nan)
    scores[readable] = found.label_scores
    return FeatureFindings(
        label_issues=[(at(i), s, p, q) for i, s, p, q in found.label_issues],
        near_duplicate_sets=[[at(i) for i in group] for group in found.near_duplicate_sets],
        near_distance={at(i): d for i, d in found.near_distance.items()},
        outliers=[(at(i), q) for i, q in found.outliers],
        non_iid=found.non_iid,
        probe_accuracy=found.probe_accuracy,
        probe=found.probe,
        probe_accuracies=found.probe_accuracies,
        label_scores=scores,
    )
