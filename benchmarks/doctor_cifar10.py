"""The doctor on CIFAR-10 (train 50,000 / test 10,000): how many test images it finds with a near-copy in train,
beside ciFAIR's 3.25% (Barz and Denzler, "Do we train on test data?"), and how many test labels it suspects, beside
the 54 that Northcutt et al. ("Pervasive label errors in test sets") published. A contact sheet of 20 random flagged
pairs (test left, its train partner right) is written beside the record so that a reader can judge them.

    python -m benchmarks.doctor_cifar10 --data ../shared/datasets/cifar10 --out /tmp/doctor-cifar10
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from benchmarks.results import BENCHMARKS, write_section
from benchmarks.sheets import contact_sheet, stamped
from mobiforge.config import DoctorConfig
from mobiforge.doctor import Diagnosis, Leak, doctor
from mobiforge.progress import SilentReporter

CIFAIR_SHARE = 3.25  # % of the test set with a near-duplicate in train (ciFAIR)
PUBLISHED_LABEL_ERRORS = 54  # in the test set (labelerrors.com)
SHEET = Path("reports/doctor_cifar10/leak_pairs.png")  # stamped with the run's date
PAIRS, SIDE, COLUMNS = 20, 64, 4


def leak_sheet(diagnosis: Diagnosis, seed: int, path: Path) -> list[tuple[str, str, float]]:
    """20 random leak pairs, test image left and train image right, 4 pairs a row; returns them."""
    leaks = random.Random(seed).sample(diagnosis.leaks, min(PAIRS, len(diagnosis.leaks)))
    groups = [
        ([diagnosis.facts[leak.val].path, diagnosis.facts[leak.train].path], f"{number + 1}: {_measures(leak)}")
        for number, leak in enumerate(leaks)
    ]
    contact_sheet(groups, path, SIDE, COLUMNS)
    return [(diagnosis.relative(leak.val), diagnosis.relative(leak.train), leak.distance) for leak in leaks]


def _measures(leak: Leak) -> str:
    return f"d={leak.distance:.3f}" + (f" r={leak.similarity:.2f}" if leak.similarity is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cold = not (Path(args.out) / "cache").exists()  # a second run reads the trunk's features back
    started = time.perf_counter()
    diagnosis = doctor(DoctorConfig(data=args.data, out=args.out), SilentReporter())
    seconds = time.perf_counter() - started
    assert diagnosis.features is not None
    test = sum(1 for fact in diagnosis.facts if fact.split == "val")
    leaked = diagnosis.leaked_val()
    exact = sum(1 for leak in diagnosis.leaks if leak.kind == "exact")
    test_issues = sum(1 for index, *_ in diagnosis.features.label_issues if diagnosis.facts[index].split == "val")
    train_issues = len(diagnosis.features.label_issues) - test_issues
    sheet = stamped(SHEET)
    shown = leak_sheet(diagnosis, args.seed, BENCHMARKS / sheet)
    figures = {
        "test_images": test,
        "test_leaked": len(leaked),
        "test_leaked_share": 100.0 * len(leaked) / test,
        "exact_leaks": exact,
        "test_label_issues": test_issues,
        "train_label_issues": train_issues,
        "probe_top1": diagnosis.features.probe_accuracy,
        "seconds": seconds,
        "cold": cold,
    }
    print(figures)
    pairs = "; ".join(f"{n + 1}. {val} ~ {train}" for n, (val, train, _) in enumerate(shown))
    body = "\n".join(
        [
            "## Doctor on CIFAR-10: test images with a copy in train, and suspected wrong test labels",
            "",
            "| | the doctor | published |",
            "|---|---|---|",
            f"| test images with a near-copy in train | {len(leaked)} of {test} ({figures['test_leaked_share']:.2f}%; "
            f"{exact} of them exact) | ciFAIR: {CIFAIR_SHARE}% |",
            f"| suspected wrong labels in test | {test_issues} | {PUBLISHED_LABEL_ERRORS} (Northcutt et al., "
            "confirmed by reviewers) |",
            f"| suspected wrong labels in train | {train_issues} | |",
            "",
            f"Features: EfficientNet-Lite0 (ImageNet) on each 32 px image resized to 224; the labels judged by the "
            f"{diagnosis.features.probe}, out-of-fold top-1 {diagnosis.features.probe_accuracy:.1f}%. Whole run, "
            f"{'cold' if cold else 'on a warm feature cache'}: {seconds / 60:.1f} min ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in diagnosis.seconds.items())
            + ").",
            "",
            f"20 random flagged pairs (test left, train right; d: cosine distance of their features, r: correlation "
            f"of their thumbnails where the pixel check confirmed them): ![pairs]({sheet.as_posix()})",
            "",
            f"The pairs: {pairs}.",
        ]
    )
    write_section("doctor_cifar10", body, figures)


if __name__ == "__main__":
    main()
