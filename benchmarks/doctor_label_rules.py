"""Which label check finds the planted flips (issue 46): the doctor's two probes, blends of them, and cleanlab's
ways of choosing how many to flag, on one set of out-of-fold probabilities of a planted folder
(``benchmarks.doctor_planted``: 5% of train photos filed under another class).

    python -m benchmarks.doctor_label_rules --data ../shared/datasets/rps --scratch /tmp/label-rules

The probabilities are the doctor's own (``doctor.features``: the linear probe and the fine-tuned tail, each with
its neighbour votes; the tail without them too, as the doctor judged before), computed once; every rule then runs on
the same ones, so the table compares rules, not runs. The doctor itself keeps the probe that agrees more with the
given labels and cleanlab's default cut-off. Two more sets
cost a second round of the tuned probe each: another fold split (its average with the first lowers the variance of
one split), and a refit whose folds leave out the photos the first round flagged (so that the flips no longer teach
the probe their wrong labels).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.doctor_planted import plant
from benchmarks.results import write_section
from mobiforge.config import DataConfig
from mobiforge.data import discover
from mobiforge.doctor import features as doctor_features
from mobiforge.progress import SilentReporter

FILTERS = ("prune_by_noise_rate", "both", "confident_learning", "low_self_confidence", "predicted_neq_given")
EXTRA_FLAGS = (1.0, 1.05, 1.1, 1.15)  # top-ranked counts, as a multiple of cleanlab's own count


def probabilities(data: Path, scratch: Path) -> dict[str, Any]:
    """The planted folder's labels, which train photos were flipped, and each probe's out-of-fold probabilities."""
    root, flipped, _, _ = plant(data, scratch, 0)
    splits = discover(DataConfig(data=str(root)))
    samples = [*splits.train, *splits.val]
    labels = np.array([label for _, label in samples], dtype=np.int64)
    classes, blocks = len(splits.classes), doctor_features.TUNED_BLOCKS
    model, activations = doctor_features.trunk_activations(
        list(splits.train), list(splits.val), scratch / "cache", SilentReporter(), DataConfig(data=str(root)), 0,
        "auto", blocks,
    )  # fmt: skip
    features = doctor_features.pooled_features(model, activations, blocks)
    linear = doctor_features.out_of_fold_probabilities(features, labels, classes, 5, 0)
    tuned = doctor_features.tuned_out_of_fold_probabilities(model, activations, labels, classes, 5, 0)
    other_split = doctor_features.tuned_out_of_fold_probabilities(model, activations, labels, classes, 5, 1)
    from cleanlab.filter import find_label_issues

    refit = doctor_features.tuned_out_of_fold_probabilities(
        model, activations, labels, classes, 5, 0, unfitted=find_label_issues(labels, tuned)
    )
    votes = neighbour_votes(features, labels, classes)
    blend = (1 - doctor_features.NEIGHBOUR_WEIGHT) * linear + doctor_features.NEIGHBOUR_WEIGHT * votes
    train = np.arange(len(samples)) < len(splits.train)
    flip = np.array([path in flipped for path, _ in samples])
    tuned_votes = (1 - doctor_features.NEIGHBOUR_WEIGHT) * tuned + doctor_features.NEIGHBOUR_WEIGHT * votes
    return {"labels": labels, "train": train, "flip": flip, "linear probe + votes": blend, "tuned tail": tuned,
            "tuned tail + votes": tuned_votes,
            "tuned tail, another split": other_split, "tuned tail, refit": refit}  # fmt: skip


def neighbour_votes(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """The doctor's neighbour votes, on the kNN graph cleanlab's Datalab builds from the features."""
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(features=features, issue_types={"outlier": {}})
    return doctor_features.neighbour_votes(lab.get_info("statistics")["weighted_knn_graph"], labels, classes)


def rows(found: dict[str, Any]) -> list[tuple[str, str, int, int, float]]:
    """(probabilities, rule, flagged train photos, planted flips among them, the probe's agreement with the labels)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels, train, flip = found["labels"], found["train"], found["flip"]
    tuned, blend = found["tuned tail"], found["linear probe + votes"]
    other, refit = found["tuned tail, another split"], found["tuned tail, refit"]
    sets = {
        "linear probe + votes": blend,
        "tuned tail": tuned,
        "tuned tail + votes (the doctor's now)": found["tuned tail + votes"],
        "mean of both": (tuned + blend) / 2,
        "tuned tail, two splits averaged": (tuned + other) / 2,
        "tuned tail refit without the photos it flagged": refit,
        "tuned tail and its refit averaged": (tuned + refit) / 2,
    }
    table = []
    for name, probs in sets.items():
        agreement = 100.0 * float((probs.argmax(1) == labels).mean())
        for rule in FILTERS:
            flagged = find_label_issues(labels, probs, filter_by=rule) & train
            table.append(
                (name, f"cleanlab filter_by={rule}", int(flagged.sum()), int((flagged & flip).sum()), agreement)
            )
        count = int(find_label_issues(labels, probs).sum())
        order = np.argsort(get_label_quality_scores(labels, probs, method="self_confidence"))
        for factor in EXTRA_FLAGS[1:]:
            top = np.zeros(len(labels), dtype=bool)
            top[order[: round(factor * count)]] = True
            flagged = top & train
            rule = f"lowest self-confidence, {factor:g}x as many as cleanlab flags"
            table.append((name, rule, int(flagged.sum()), int((flagged & flip).sum()), agreement))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--scratch", required=True)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = probabilities(Path(args.data), Path(args.scratch))
        table = rows(found)
    planted = int(found["flip"].sum())
    name = Path(args.data).resolve().name
    lines = [
        f"## Doctor: which label check finds the planted flips in {name}",
        "",
        f"{planted} train photos of the planted `{name}` filed under another class (`benchmarks.doctor_planted`, "
        "seed 0). One set of out-of-fold probabilities per probe; every rule on the same ones. Recall: planted "
        "flips among the flagged train photos; precision: the flagged that were planted (strict: as if the folder "
        "were clean). The doctor's own choice: the probe that agrees more with the labels, cleanlab's default "
        "(prune_by_noise_rate). Target: recall 0.90 and precision 0.80 together.",
        "",
        "| probabilities | agreement with the labels | rule | flagged | recall | precision |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for probs, rule, flagged, hits, agreement in table:
        lines.append(
            f"| {probs} | {agreement:.1f}% | {rule} | {flagged} | {hits / planted:.3f} | {hits / max(1, flagged):.3f} |"
        )
    figures = {"planted": planted, "rows": [list(row) for row in table]}
    write_section(f"doctor_label_rules_{name}", "\n".join(lines), figures)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
