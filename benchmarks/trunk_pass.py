"""The trunk pass of the feature cache, end to end from files, before and after issue 47's changes, side by side
in one run: img/s with the decode included (``transfer.cached_activations`` into a fresh cache), and the top-1 of a
linear probe fit on the train rows and scored on the val rows, so a faster pass that loses accuracy shows it.

Before, as the cache ran until issue 47: each JPEG decoded by Pillow at full size (``load_rgb``), then the trunk,
one batch after the other, ONNX Runtime's threads spinning between runs; eager bf16 (what ``auto`` keeps for short
passes) or ONNX Runtime fp32 (what it takes for long ones). After: JPEGs decoded straight into a tensor by
libjpeg-turbo (``load_image``; the eval view with its JPEG draft) on a thread, a batch ahead of the trunk, whose
threads no longer spin; and ONNX Runtime int8 beside the two engines.

    python -m benchmarks.trunk_pass --data ../shared/datasets/hymenoptera --scratch /tmp/trunk-pass
    python -m benchmarks.trunk_pass --data ../shared/datasets/cifar10 --images 3000 --scratch /tmp/trunk-pass
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mobiforge.data.datasets as datasets
import mobiforge.transfer as transfer
import mobiforge.trunk as trunk
from benchmarks.doctor_speed import linked_folder
from benchmarks.results import write_section
from mobiforge.config import PRETRAINED_TRUNK, DataConfig
from mobiforge.data import discover, load_rgb
from mobiforge.data.transforms import preprocess_for
from mobiforge.models import create_model
from mobiforge.models.weights import get_weights
from mobiforge.progress import SilentReporter
from mobiforge.transfer import cached_activations, eval_plan, plan_cache, trunk_pass_for

REPEATS = 5  # passes per configuration, each into a fresh cache, in rounds: the median is recorded
PROBE_TOLERANCE = 0.5  # points: the bound on what a faster pass may cost the probe
TARGET_SPEEDUP = 2.0
CONFIGS = (  # name, engine, whether the pipeline is today's
    ("before: eager bf16", "eager", "before"),
    ("before: ONNX Runtime fp32", "onnxruntime", "before"),
    ("after: eager bf16", "eager", "after"),
    ("after: ONNX Runtime fp32", "onnxruntime", "after"),
    ("after: ONNX Runtime int8", "onnxruntime-int8", "after"),
)


def _pillow_image(path: str, draft_size: int | None = None) -> Any:
    """The decode the cache used before: Pillow at full size, the transform's ``ToImage`` then converting it."""
    return load_rgb(path)


@contextlib.contextmanager
def pipeline(before: bool) -> Iterator[None]:
    """The cache pass as it ran before issue 47 (Pillow at full size, no draft, one batch after the other, ONNX
    Runtime's threads spinning), or as it runs now."""
    original = datasets.load_image
    datasets.load_image = _pillow_image if before else original  # type: ignore[assignment]
    transfer.DECODE_AHEAD, trunk.ORT_SPINNING = not before, before
    try:
        yield
    finally:
        datasets.load_image = original  # type: ignore[assignment]
        transfer.DECODE_AHEAD, trunk.ORT_SPINNING = True, False


@dataclass
class Setup:
    title: str
    before: bool
    trunk_pass: Any
    digest: str
    seconds: float  # the export and quantization, once
    times: list[float] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)


def set_up(title: str, engine: str, before: bool, model: Any, preprocess: Any, samples: list, folder: Path) -> Setup:
    with pipeline(before):
        started = time.perf_counter()
        trunk_pass, digest = trunk_pass_for(model, None, preprocess, engine, "auto", len(samples), folder, samples)
        trunk_pass.run(torch.zeros(2, 3, preprocess.img_size, preprocess.img_size))  # export and quantize: once
    return Setup(title, before, trunk_pass, digest, time.perf_counter() - started)


def timed_pass(
    setup: Setup, model: Any, preprocess: Any, data: DataConfig, train: list, val: list, folder: Path
) -> None:
    """One pass over ``train`` then ``val`` into a fresh cache: its seconds and rows go into ``setup``."""
    shutil.rmtree(folder, ignore_errors=True)
    plan = plan_cache(model, None, preprocess, data, 1, 0, train, folder, len(val), setup.trunk_pass.dtype,
                      setup.digest)  # fmt: skip
    plans = (plan, eval_plan(plan, None, preprocess, val, folder))
    with pipeline(setup.before):
        started = time.perf_counter()
        rows = []
        for samples, split_plan in zip((train, val), plans, strict=True):
            if setup.before:
                split_plan.draft_size = None
            got, _ = cached_activations(model, None, samples, split_plan, folder, "bench", 0, SilentReporter(),
                                        setup.trunk_pass)  # fmt: skip
            rows.append(torch.as_tensor(got[: len(samples)]).float().numpy())
        setup.times.append(time.perf_counter() - started)
    setup.rows = rows


def preprocess_line(root: Path) -> str:
    weights = get_weights(PRETRAINED_TRUNK).preprocess
    preprocess = preprocess_for(DataConfig(data=str(root)).resolved(weights), weights)
    return f"{preprocess.img_size} px crops of the short side resized to {preprocess.resize_size}"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def probe_top1(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray) -> float:
    from mobiforge.doctor.features import fitted_probe

    probe = fitted_probe(train, train_labels)
    return 100.0 * float((probe.predict(val) == val_labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a split folder (train/ and val/)")
    parser.add_argument("--images", type=int, default=0, help="link this many of its files (0: all of them)")
    parser.add_argument("--scratch", required=True)
    args = parser.parse_args()

    scratch, name = Path(args.scratch), Path(args.data).resolve().name
    shutil.rmtree(scratch, ignore_errors=True)
    data = Path(args.data)
    if args.images:
        linked_folder(data, args.images, scratch / "data")
        data = scratch / "data"
    splits = discover(DataConfig(data=str(data)))
    train_labels = np.array([label for _, label in splits.train])
    val_labels = np.array([label for _, label in splits.val])
    weights = get_weights(PRETRAINED_TRUNK).preprocess
    config = DataConfig(data=str(data)).resolved(weights)
    preprocess = preprocess_for(config, weights)
    model = create_model(PRETRAINED_TRUNK, pretrained=True).eval()
    setups = [set_up(title, engine, stage == "before", model, preprocess, splits.train, scratch / "engines")
              for title, engine, stage in CONFIGS]  # fmt: skip
    for _ in range(REPEATS):  # in rounds, so that a slow spell of the machine falls on every configuration alike
        for setup in setups:
            timed_pass(setup, model, preprocess, config, splits.train, splits.val, scratch / "rows")
    results, val_rows = {}, {}
    images = len(splits.train) + len(splits.val)
    for setup in setups:
        seconds = float(np.median(setup.times))
        results[setup.title] = {
            "label": setup.trunk_pass.label, "seconds": seconds, "setup_seconds": setup.seconds,
            "images_per_second": images / seconds, "times": setup.times,
            "probe_top1": probe_top1(setup.rows[0], train_labels, setup.rows[1], val_labels),
        }  # fmt: skip
        val_rows[setup.title] = setup.rows[1]
        print(setup.title, results[setup.title], flush=True)
    before = max(r["images_per_second"] for title, r in results.items() if title.startswith("before"))
    after = results[CONFIGS[-1][0]]
    fp32_probe = results[CONFIGS[1][0]]["probe_top1"]
    speedup = after["images_per_second"] / before
    held = abs(after["probe_top1"] - fp32_probe) <= PROBE_TOLERANCE
    cosine = _cosines(val_rows[CONFIGS[-1][0]], val_rows[CONFIGS[-2][0]])
    met = speedup >= TARGET_SPEEDUP and held
    size = f"{len(splits.train)} train and {len(splits.val)} val photos" + (" (linked)" if args.images else "")
    lines = [
        f"## Trunk pass from files: {name}",
        "",
        f"EfficientNet-Lite0's pooled features of {size}, one eval crop each, into a fresh cache "
        f"(`transfer.cached_activations`, decode included), {preprocess_line(data)}. Probe: logistic regression "
        f"fit on the train rows, top-1 on the val rows. Each pass runs {REPEATS} times, the configurations in "
        "turn, each time into a fresh cache: the median is shown.",
        "",
        f"Target: the trunk pass at least {TARGET_SPEEDUP:.0f}x today's best, the probe within {PROBE_TOLERANCE} "
        f"points of fp32: **{'met' if met else 'MISSED'}** ({speedup:.2f}x; probe {after['probe_top1']:.2f}% "
        f"against {fp32_probe:.2f}%). The int8 features of the val photos against fp32's, cosine similarity: mean "
        f"{cosine.mean():.4f}, lowest {cosine.min():.4f}.",
        "",
        "| configuration | engine | img/s, decode included | pass | export/quantize once | probe top-1 |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {title} | {r['label']} | {r['images_per_second']:.0f} | {r['seconds']:.1f} s | "
            f"{r['setup_seconds']:.1f} s | {r['probe_top1']:.2f}% |"
            for title, r in results.items()
        ),
    ]
    figures = {"speedup": speedup, "probe_held": held, "met": met, "int8_cosine_mean": float(cosine.mean()),
               "int8_cosine_min": float(cosine.min()),
               "configs": {title: {k: v for k, v in r.items()} for title, r in results.items()}}  # fmt: skip
    write_section(f"trunk_pass_{name}", "\n".join(lines), figures)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
