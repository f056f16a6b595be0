"""The doctor's checks on features: the pretrained trunk's pooled features of every image (one plain eval crop),
through the transfer cache (``transfer.cached_activations``: read back where a run already computed them, computed
in one pass and written otherwise), out-of-fold probabilities from a k-fold linear probe on them, and cleanlab's
Datalab on both: label issues, near-duplicates, outliers, and a non-IID file order within each class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobiforge.config import PRETRAINED_TRUNK, DataConfig
from mobiforge.data import Sample
from mobiforge.data.transforms import preprocess_for
from mobiforge.errors import missing
from mobiforge.models import create_model
from mobiforge.models.weights import get_weights
from mobiforge.progress import Reporter
from mobiforge.transfer import TrunkModule, cached_activations, eval_plan, plan_cache, trunk_digest
from mobiforge.trunk import choose_trunk_pass, memo_path

# The probe: logistic regression on L2-normalised features. Against sklearn's default (standardised features, C 1),
# measured on the planted benchmarks' features: hymenoptera's flagged train photos 0.60 -> 0.86 planted, rps's
# 0.36 -> 0.58 (recall 1.00 and 0.86 -> 0.81); a kNN or an MLP probe did no better on both.
PROBE_C = 10.0
PROBE_ITERATIONS = 300
# The label check's probabilities: the probe's, blended with the labels of each photo's 5 nearest neighbours. A
# photo misfiled beside its near copies is outvoted by them, where the probe alone can be unsure. Chosen on the
# planted benchmarks (RESULTS.md#doctor_planted_rps, #doctor_planted_hymenoptera): it raised rps's recall and flag
# precision and left hymenoptera's as they were; a weight of 0.5 cost hymenoptera's precision.
NEIGHBOUR_VOTES = 5
NEIGHBOUR_WEIGHT = 0.3
# Near copies: nearest neighbours closer than this fraction of the folder's median nearest-neighbour distance (cosine,
# Datalab's ``threshold``). Its default, 0.13, missed a 5% crop of a hymenoptera photo (0.03-0.10 from its original
# where the median is 0.33, and every other photo at least 0.25 away); the planted benchmark checks the choice
# (RESULTS.md#doctor_planted_hymenoptera, RESULTS.md#doctor_planted_rps).
NEAR_COPY_FRACTION = 0.4
NON_IID_MIN_IMAGES = 20  # a class with fewer files is not tested for a non-IID order
NON_IID_P = 0.01  # a class whose file order's p-value is below this reads as bursts (consecutive near-copies)


def trunk_features(
    train: Sequence[Sample],
    val: Sequence[Sample],
    cache_dir: Path,
    reporter: Reporter,
    data: DataConfig,
    seed: int = 0,
    engine: str = "auto",
) -> np.ndarray:
    """The pooled features (float32; the train rows, then the val rows) of ``PRETRAINED_TRUNK`` on each image's eval
    crop. The cache plans are a cached tail run's with the classifier alone (``transfer.prepare_tail`` with
    ``trainable_blocks=0``, one view) for ``data`` and ``seed``: after ship's first ladder rung, which is that run
    on the same folder, every row is read back and the trunk does not run."""
    weights = get_weights(PRETRAINED_TRUNK).preprocess
    data = data.resolved(weights)
    preprocess = preprocess_for(data, weights)
    model = create_model(PRETRAINED_TRUNK, pretrained=True).eval()
    train, val = list(train), list(val)
    digest = trunk_digest(model, None)
    memo = memo_path(cache_dir, digest, None, preprocess.img_size, "auto")
    trunk = TrunkModule(model, None).eval()
    trunk_pass = choose_trunk_pass(trunk, preprocess.img_size, engine, "auto", len(train) + len(val), memo)
    plan = plan_cache(model, None, preprocess, data, 1, seed, train, cache_dir, len(val), trunk_pass.dtype, digest)
    rows, _ = cached_activations(model, None, train, plan, cache_dir, "doctor: train", seed, reporter, trunk_pass)
    parts = [torch.as_tensor(rows[: len(train)]).float()]
    if val:
        val_plan = eval_plan(plan, None, preprocess, val, cache_dir)
        rows, _ = cached_activations(model, None, val, val_plan, cache_dir, "doctor: val", 0, reporter, trunk_pass)
        parts.append(torch.as_tensor(rows[: len(val)]).float())
    return torch.cat(parts).numpy()


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, classes: int, folds: int, seed: int
) -> np.ndarray:
    """Each image's class probabilities from a linear probe that never saw it (k-fold, stratified). A class with
    a single image cannot be held out: its image keeps probability 1 on its own label (no issue can be found)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    counts = np.bincount(labels, minlength=classes)
    probed = counts[labels] >= 2
    probabilities = np.zeros((len(labels), classes), dtype=np.float64)
    probabilities[np.arange(len(labels)), labels] = 1.0
    kept = np.unique(labels[probed])
    if len(kept) < 2:
        return probabilities
    k = int(min(folds, counts[kept].min()))
    probe = make_pipeline(Normalizer(), LogisticRegression(C=PROBE_C, max_iter=PROBE_ITERATIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs stopping at max_iter: the probe ranks, it need not converge fully
        folded = cross_val_predict(
            probe, features[probed], labels[probed], cv=StratifiedKFold(k, shuffle=True, random_state=seed),
            method="predict_proba",
        )  # fmt: skip
    probabilities[np.ix_(np.flatnonzero(probed), kept)] = folded
    return probabilities


@dataclass
class FeatureFindings:
    """Datalab's findings, by kind (indices into the samples), with what each needs to be shown."""

    label_issues: list[tuple[int, int, float, float]] = field(default_factory=list)  # index, suggested, p, score
    near_duplicate_sets: list[list[int]] = field(default_factory=list)
    near_distance: dict[int, float] = field(default_factory=dict)
    outliers: list[tuple[int, float]] = field(default_factory=list)  # index, score (low: far from the rest)
    non_iid: dict[int, float] = field(default_factory=dict)  # class -> p-value of its file order, when tested
    probe_accuracy: float = 0.0  # out-of-fold top-1 of the probe, %


def datalab_findings(features: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> FeatureFindings:
    """cleanlab's Datalab on the features, then its label check on the probe's out-of-fold probabilities blended
    with the labels of each photo's nearest neighbours (``neighbour_votes``, on the kNN graph Datalab built)."""
    try:
        from cleanlab import Datalab
    except ImportError:
        raise missing("cleanlab") from None
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    issue_types: dict[str, Any] = {"near_duplicate": {"threshold": NEAR_COPY_FRACTION}, "outlier": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab.find_issues(features=features, issue_types=issue_types)
        votes = neighbour_votes(lab.get_info("statistics")["weighted_knn_graph"], labels, probabilities.shape[1])
        probe_accuracy = 100.0 * float((probabilities.argmax(1) == labels).mean())
        probabilities = (1.0 - NEIGHBOUR_WEIGHT) * probabilities + NEIGHBOUR_WEIGHT * votes
        lab.find_issues(pred_probs=probabilities, issue_types={"label": {}})
    found = FeatureFindings(probe_accuracy=probe_accuracy)
    label = lab.get_issues("label")
    for index in np.flatnonzero(label["is_label_issue"].to_numpy()):
        suggested = int(label["predicted_label"].iloc[index])
        found.label_issues.append(
            (int(index), suggested, float(probabilities[index, suggested]), float(label["label_score"].iloc[index]))
        )
    found.label_issues.sort(key=lambda issue: issue[3])  # the most likely wrong first
    near = lab.get_issues("near_duplicate")
    seen: set[frozenset[int]] = set()
    for index in np.flatnonzero(near["is_near_duplicate_issue"].to_numpy()):
        members = frozenset([int(index), *(int(other) for other in near["near_duplicate_sets"].iloc[index])])
        if len(members) > 1 and members not in seen:
            seen.add(members)
            found.near_duplicate_sets.append(sorted(members))
        found.near_distance[int(index)] = float(near["distance_to_nearest_neighbor"].iloc[index])
    outlier = lab.get_issues("outlier")
    found.outliers = sorted(
        ((int(i), float(outlier["outlier_score"].iloc[i])) for i in np.flatnonzero(outlier["is_outlier_issue"])),
        key=lambda pair: pair[1],
    )
    return found


def neighbour_votes(graph: Any, labels: np.ndarray, classes: int) -> np.ndarray:
    """Each photo's class distribution among its ``NEIGHBOUR_VOTES`` nearest others (a sparse kNN graph of cosine
    distances, self left out), each vote weighted by its similarity; a little mass on every class."""
    graph = graph.tocsr()
    votes = np.full((len(labels), classes), 1e-3)
    for row in range(graph.shape[0]):
        start, end = graph.indptr[row], graph.indptr[row + 1]
        order = np.argsort(graph.data[start:end])[:NEIGHBOUR_VOTES]
        neighbours, distances = graph.indices[start:end][order], graph.data[start:end][order]
        np.add.at(votes[row], labels[neighbours], np.clip(1.0 - distances, 0.0, None))
    return votes / votes.sum(axis=1, keepdims=True)


def non_iid_order(features: np.ndarray, labels: np.ndarray, classes: int) -> dict[int, float]:
    """Datalab's non-IID test on each class's files in name order (the order a folder lists them): a low p-value
    says neighbouring files look alike, as burst shots and video frames do, so a random split puts near-copies on
    both sides of it. Classes are tested apart: a folder listed class by class is non-IID by construction."""
    from cleanlab import Datalab

    found = {}
    for label in range(classes):
        members = np.flatnonzero(labels == label)
        if len(members) < NON_IID_MIN_IMAGES:
            continue
        lab = Datalab(data={"label": labels[members]}, label_name="label", verbosity=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lab.find_issues(features=features[members], issue_types={"non_iid": {}})
        found[label] = float(lab.get_info("non_iid")["p-value"])
    return found
