"""The label check with the probe the doctor cannot afford: the whole EfficientNet-Lite0 fine-tuned per fold
(``mobiforge.train``, ImageNet start, its default recipe) on ``doctor_planted``'s plant, each photo's probabilities
taken from the fold that held it out, then cleanlab's count as the doctor uses it. The doctor's folds
(``doctor.features.held_out_folds``), the same seed. Minutes per fold on this machine's CPU, where the doctor's own
probes take seconds: does more of the network, trained on the photos themselves, judge the labels better?

    python -m benchmarks.doctor_full_probe --data ../shared/datasets/rps --scratch /tmp/full-probe --epochs 4
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.doctor_plant_seeds import TARGET_PRECISION, TARGET_RECALL, ranking
from benchmarks.doctor_planted import plant
from benchmarks.results import write_section
from mobiforge.config import PRETRAINED_TRUNK, DataConfig, TrainConfig
from mobiforge.data import discover
from mobiforge.doctor import features as doctor_features
from mobiforge.inference import predict
from mobiforge.progress import SilentReporter
from mobiforge.train import train

MODEL = PRETRAINED_TRUNK


def held_out_probabilities(
    samples: list[tuple[str, int]], classes: list[str], folds: int, epochs: int, scratch: Path
) -> np.ndarray:
    labels = np.array([label for _, label in samples])
    probabilities, splits = doctor_features.held_out_folds(labels, len(classes), folds, 0)
    for fold, (fit, held) in enumerate(splits):
        table = scratch / f"fold-{fold}.csv"
        with table.open("w", newline="") as stream:
            rows = csv.writer(stream)
            rows.writerow(["path", "label", "split"])
            for indices, split in ((fit, "train"), (held, "val")):
                rows.writerows([samples[i][0], classes[samples[i][1]], split] for i in indices)
        run = train(
            TrainConfig(model=MODEL, pretrained=True, epochs=epochs, data=DataConfig(data=str(table)),
                        runs_dir=str(scratch / "runs"), name=f"fold-{fold}", tensorboard=False),
            SilentReporter(),
        )  # fmt: skip
        found = predict(run.run_dir / "last.pt", [samples[i][0] for i in held], top_k=len(classes))
        for index, result in zip(held, found, strict=True):
            probabilities[index] = 0.0
            for entry in result["top"]:
                probabilities[index, classes.index(entry["class"])] = entry["probability"]
        print(f"fold {fold}: {run.last}", flush=True)
    return probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    data, scratch, name = Path(args.data), Path(args.scratch), Path(args.data).resolve().name
    shutil.rmtree(scratch / "runs", ignore_errors=True)
    root, flipped, _, _ = plant(data, scratch, 0)
    splits = discover(DataConfig(data=str(root)))
    samples = [*splits.train, *splits.val]
    started = time.perf_counter()
    probabilities = held_out_probabilities(samples, splits.classes, args.folds, args.epochs, scratch)
    minutes = (time.perf_counter() - started) / 60
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.array([label for _, label in samples])
    train_rows = np.arange(len(samples)) < len(splits.train)
    planted = np.array([path in flipped for path, _ in samples])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagged = find_label_issues(labels, probabilities) & train_rows
        scores = get_label_quality_scores(labels, probabilities)[train_rows]
    hits = int((flagged & planted).sum())
    figures = {
        "epochs": args.epochs, "folds": args.folds, "minutes": minutes, "planted": int(planted.sum()),
        "held_out_top1": 100.0 * float((probabilities.argmax(1) == labels).mean()),
        "flagged": int(flagged.sum()), "found": hits, "recall": hits / planted.sum(),
        "precision": hits / max(1, flagged.sum()), **ranking(scores, planted[train_rows]),
    }  # fmt: skip
    print(figures)
    f = figures
    body = "\n".join([
        f"## Doctor's label check with the whole network fine-tuned per fold: planted {name}",
        "",
        f"`benchmarks.doctor_planted`'s plant (seed 0, {f['planted']} train photos filed under another class); "
        f"{MODEL} fine-tuned whole from ImageNet for {f['epochs']} epochs on each of {f['folds']} folds "
        f"(`mobiforge.train`'s default recipe), {f['minutes']:.0f} minutes in all; each photo judged by the fold "
        "that held it out, with cleanlab's count as the doctor uses it. Compare "
        "[doctor_plant_seeds](#doctor_plant_seeds_" + name + ") (the doctor's own probes, seconds).",
        "",
        "| held-out top-1 | flagged in train | found | recall | precision, strict | ranking's average precision "
        "| oracle cut at precision 0.8: recall (flagged) | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {f['held_out_top1']:.1f}% | {f['flagged']} | {f['found']} | {f['recall']:.3f} | {f['precision']:.3f} | "
        f"{f['average_precision']:.3f} | {f['best_cut_recall']:.3f} ({f['best_cut_flagged']}) | "
        f"recall >= {TARGET_RECALL}, precision >= {TARGET_PRECISION}: "
        f"{'met' if f['recall'] >= TARGET_RECALL and f['precision'] >= TARGET_PRECISION else 'MISSED'} |",
    ])  # fmt: skip
    write_section(f"doctor_full_probe_{name}", body, figures)


if __name__ == "__main__":
    main()
