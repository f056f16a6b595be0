"""The doctor's checks on features: the pretrained trunk's pooled features of every image (one plain eval crop),
through the transfer cache (``transfer.cached_activations``: read back where a run already computed them, computed
in one pass and written otherwise), out-of-fold probabilities from a k-fold linear probe on them and, on folders
small enough, from k fine-tuned copies of the trunk's last blocks, and cleanlab's Datalab on both: label issues,
near-duplicates, outliers, and a non-IID file order within each class.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mobiforge import engine
from mobiforge.config import PRETRAINED_TRUNK, DataConfig, OptimConfig
from mobiforge.data import Sample
from mobiforge.data.transforms import preprocess_for
from mobiforge.errors import missing
from mobiforge.models import create_model
from mobiforge.models.base import MobileClassifier
from mobiforge.models.weights import get_weights
from mobiforge.progress import Reporter
from mobiforge.transfer import Tail, cached_activations, cut_index, eval_plan, plan_cache, trunk_pass_for

# The probe: logistic regression on L2-normalised features. Against sklearn's default (standardised features, C 1),
# measured on the planted benchmarks' features: hymenoptera's flagged train photos 0.60 -> 0.86 planted, rps's
# 0.36 -> 0.58 (recall 1.00 and 0.86 -> 0.81); a kNN or an MLP probe did no better on both.
PROBE_C = 10.0
PROBE_ITERATIONS = 300
# The label check's probabilities: the probe's (linear or fine-tuned), blended with the labels of each photo's 5
# nearest neighbours. A photo misfiled beside its near copies is outvoted by them, where the probe alone can be
# unsure. Chosen on the planted benchmarks (RESULTS.md#doctor_planted_rps, #doctor_planted_hymenoptera): it raised
# rps's recall and flag precision and left hymenoptera's as they were; a weight of 0.5 cost hymenoptera's
# precision. Blending the fine-tuned probe's too raised the flips' average precision on each of 5 plants of rps
# (0.913 -> 0.942 on average) and left hymenoptera's as they were (RESULTS.md#doctor_plant_seeds_rps).
NEIGHBOUR_VOTES = 5
NEIGHBOUR_WEIGHT = 0.3
# The fine-tuned probe: the trunk's last 2 blocks and a new classifier, trained for 6 epochs per fold on the cached
# activations (mirrored at random). The doctor keeps whichever probe's held-out predictions agree more with the
# given labels. On the planted rps (hand shapes, far from ImageNet) it held out 92% against the linear probe's 89%
# and found 0.87-0.91 of the flips against 0.83; on hymenoptera (ImageNet's own insects, 245 train photos) the linear
# probe stays ahead and is kept (RESULTS.md#doctor_planted_rps, #doctor_planted_hymenoptera). More epochs learnt the
# flipped labels (10: recall 0.83); a third block held out better and found fewer flips.
TUNED_BLOCKS = 2
TUNED_EPOCHS = 6
TUNED_OPTIM = OptimConfig(optimizer="adamw", lr=1e-3, scheduler="onecycle", weight_decay=0.05, label_smoothing=0.1)
TUNED_BATCH = 64
# Above this many train photos only the linear probe runs: 5 folds of the tuned one cost about 0.9 ms per photo and
# epoch here (53 s on rps's 1,900), so 10,000 photos take 4-5 minutes more.
TUNED_MOST_IMAGES = 10_000
LINEAR_PROBE, TUNED_PROBE = "linear probe", f"fine-tuned tail (last {TUNED_BLOCKS} blocks)"
# Near copies: nearest neighbours closer than this fraction of the folder's median nearest-neighbour distance (cosine,
# Datalab's ``threshold``). Its default, 0.13, missed a 5% crop of a hymenoptera photo (0.03-0.10 from its original
# where the median is 0.33, and every other photo at least 0.25 away); the planted benchmark checks the choice
# (RESULTS.md#doctor_planted_hymenoptera, RESULTS.md#doctor_planted_rps).
NEAR_COPY_FRACTION = 0.4
NON_IID_MIN_IMAGES = 20  # a class with fewer files is not tested for a non-IID order
NON_IID_P = 0.01  # a class whose file order's p-value is below this reads as bursts (consecutive near-copies)


def trunk_activations(
    train: Sequence[Sample],
    val: Sequence[Sample],
    cache_dir: Path,
    reporter: Reporter,
    data: DataConfig,
    seed: int = 0,
    engine_name: str = "auto",
    blocks: int = 0,
    device: torch.device | None = None,
) -> tuple[MobileClassifier, torch.Tensor]:
    """``PRETRAINED_TRUNK`` and its outputs on each image's eval crop (the train rows, then the val rows): pooled
    features with ``blocks=0``, else the activations that its last ``blocks`` blocks take. The cache plans are a
    cached tail run's (``transfer.prepare_tail``, one view) for ``data``, ``seed`` and ``blocks``: after ship's first
    ladder rung, the classifier alone on the same folder, the pooled rows are read back and the trunk does not run."""
    weights = get_weights(PRETRAINED_TRUNK).preprocess
    data = data.resolved(weights)
    preprocess = preprocess_for(data, weights)
    model = create_model(PRETRAINED_TRUNK, pretrained=True).eval()
    cut = cut_index(model, blocks)
    train, val = list(train), list(val)
    passes = len(train) + len(val)
    trunk_pass, digest = trunk_pass_for(model, cut, preprocess, engine_name, "auto", passes, cache_dir, train, device)
    plan = plan_cache(model, cut, preprocess, data, 1, seed, train, cache_dir, len(val), trunk_pass.dtype, digest)
    rows, _ = cached_activations(model, cut, train, plan, cache_dir, "doctor: train", seed, reporter, trunk_pass)
    parts = [torch.as_tensor(rows[: len(train)])]
    if val:
        val_plan = eval_plan(plan, cut, preprocess, val, cache_dir)
        rows, _ = cached_activations(model, cut, val, val_plan, cache_dir, "doctor: val", 0, reporter, trunk_pass)
        parts.append(torch.as_tensor(rows[: len(val)]))
    return model, torch.cat(parts)


def pooled_features(model: MobileClassifier, activations: torch.Tensor, blocks: int) -> np.ndarray:
    """The pooled features (float32) of the pretrained network's last ``blocks`` blocks on ``activations``: the
    same as a pass of the whole trunk, from the cached activations."""
    if blocks == 0:
        return activations.float().numpy()
    tail = model.features[cut_index(model, blocks) :].eval()
    with torch.inference_mode():
        pooled = [F.adaptive_avg_pool2d(tail(batch.float()), 1).flatten(1) for batch in activations.split(256)]
    return torch.cat(pooled).numpy()


def held_out_folds(labels: np.ndarray, classes: int, folds: int, seed: int) -> tuple[np.ndarray, list[Any]]:
    """Each image's probabilities set to 1 on its own label, and the stratified folds of the images whose class has
    two or more (a class with a single image cannot be held out: no issue can be found in it)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=classes)
    probabilities = np.zeros((len(labels), classes), dtype=np.float64)
    probabilities[np.arange(len(labels)), labels] = 1.0
    probed = np.flatnonzero(counts[labels] >= 2)
    kept = np.unique(labels[probed])
    if len(kept) < 2:
        return probabilities, []
    k = int(min(folds, counts[kept].min()))
    splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(probed, labels[probed])
    return probabilities, [(probed[fit], probed[held]) for fit, held in splits]


def fitted_probe(features: np.ndarray, labels: np.ndarray) -> Any:
    """The linear probe (logistic regression on L2-normalised features, PROBE_C) fitted on ``features``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    probe = make_pipeline(Normalizer(), LogisticRegression(C=PROBE_C, max_iter=PROBE_ITERATIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs stopping at max_iter: the probe ranks, it need not converge fully
        return probe.fit(features, labels)


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, classes: int, folds: int, seed: int
) -> np.ndarray:
    """Each image's class probabilities from a linear probe that never saw it (k-fold, stratified)."""
    probabilities, splits = held_out_folds(labels, classes, folds, seed)
    for fit, held in splits:
        probe = fitted_probe(features[fit], labels[fit])
        probabilities[held] = 0.0
        probabilities[np.ix_(held, probe.classes_)] = probe.predict_proba(features[held])
    return probabilities


def tuned_out_of_fold_probabilities(
    model: MobileClassifier,
    activations: torch.Tensor,
    labels: np.ndarray,
    classes: int,
    folds: int,
    seed: int,
    unfitted: np.ndarray | None = None,
) -> np.ndarray:
    """Each image's class probabilities from the pretrained network's last ``TUNED_BLOCKS`` blocks and a new
    classifier, fine-tuned (``engine.train_one_epoch``) on the cached activations of the other folds; held-out
    logits averaged with the mirrored activations'. Images ``unfitted`` marks (a boolean mask) are held out in
    their fold but never fitted on."""
    probabilities, splits = held_out_folds(labels, classes, folds, seed)
    if unfitted is not None:
        splits = [(fit[~unfitted[fit]], held) for fit, held in splits]
    start = copy.deepcopy(model)
    start.reset_classifier(classes)
    cut = cut_index(start, TUNED_BLOCKS)
    amp = engine.resolve_amp("auto", torch.device("cpu"))
    targets = torch.as_tensor(labels)
    for fold, (fit, held) in enumerate(splits):
        torch.manual_seed(seed + fold)
        tail = Tail(copy.deepcopy(start), cut)
        generator = torch.Generator().manual_seed(seed + fold)
        rows = TensorDataset(activations[fit], targets[fit])
        loader = DataLoader(rows, TUNED_BATCH, shuffle=True, generator=generator, drop_last=len(fit) > TUNED_BATCH)
        optimizer = engine.build_optimizer(tail, TUNED_OPTIM)
        scheduler = engine.build_scheduler(optimizer, TUNED_OPTIM, TUNED_EPOCHS, len(loader))
        loss = engine.cross_entropy_loss(TUNED_OPTIM.label_smoothing)
        for epoch in range(TUNED_EPOCHS):
            engine.train_one_epoch(
                tail, loader, optimizer, scheduler, loss, epoch=epoch, amp_dtype=amp,
                batch_transform=functools.partial(_mirrored_at_random, generator=generator),
            )  # fmt: skip
        tail.eval()
        with torch.inference_mode(), engine.autocast(torch.device("cpu"), amp):
            logits = [tail(x.float()).float() + tail(x.float().flip(-1)).float() for x in activations[held].split(256)]
        probabilities[held] = torch.softmax(torch.cat(logits) / 2, 1).double().numpy()
    return probabilities


def _mirrored_at_random(
    activations: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of cached activations (as float32) with half its rows mirrored left to right: a flip of the photo,
    as the trunk's activations see it."""
    activations = activations.float()
    mirrored = torch.rand(len(activations), generator=generator) < 0.5
    return torch.where(mirrored[:, None, None, None], activations.flip(-1), activations), labels


@dataclass
class FeatureFindings:
    """Datalab's findings, by kind (indices into the samples), with what each needs to be shown."""

    label_issues: list[tuple[int, int, float, float]] = field(default_factory=list)  # index, suggested, p, score
    near_duplicate_sets: list[list[int]] = field(default_factory=list)
    near_distance: dict[int, float] = field(default_factory=dict)
    outliers: list[tuple[int, float]] = field(default_factory=list)  # index, score (low: far from the rest)
    non_iid: dict[int, float] = field(default_factory=dict)  # class -> p-value of its file order, when tested
    probe_accuracy: float = 0.0  # out-of-fold top-1 of the probe whose probabilities judged the labels, %
    probe: str = LINEAR_PROBE  # which one: LINEAR_PROBE or TUNED_PROBE
    probe_accuracies: dict[str, float] = field(default_factory=dict)  # every probe that ran, by name
    # every photo's label quality (cleanlab's label_score; low: likely wrong; NaN: not checked), for a cut-off of
    # one's own: label_issues holds the ones cleanlab flags, as many as it estimates are wrong
    label_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))


def datalab_findings(
    features: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, tuned: np.ndarray | None = None
) -> FeatureFindings:
    """cleanlab's Datalab on the features, then its label check on the probabilities of whichever probe agrees more
    with the given labels out of fold, the linear probe's (``probabilities``) or the fine-tuned one's (``tuned``),
    each blended with the labels of each photo's nearest neighbours (``neighbour_votes``, on the kNN graph Datalab
    built)."""
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
        own = {LINEAR_PROBE: probabilities, TUNED_PROBE: tuned}
        probes = {
            name: (1.0 - NEIGHBOUR_WEIGHT) * p + NEIGHBOUR_WEIGHT * votes for name, p in own.items() if p is not None
        }
        accuracies = {name: 100.0 * float((p.argmax(1) == labels).mean()) for name, p in probes.items()}
        chosen = max(accuracies, key=accuracies.__getitem__)  # a tie keeps the linear probe, the cheaper one
        probabilities = probes[chosen]
        lab.find_issues(pred_probs=probabilities, issue_types={"label": {}})
    label = lab.get_issues("label")
    found = FeatureFindings(
        probe_accuracy=accuracies[chosen], probe=chosen, probe_accuracies=accuracies,
        label_scores=label["label_score"].to_numpy(dtype=np.float64),
    )  # fmt: skip
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
