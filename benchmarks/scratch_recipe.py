"""Ablations of ship's from-scratch recipe for small images (issue 26): each choice switched off (or swapped) alone.

A model (``--model``; convpool_s is what ship trains on CIFAR-10) trains for a fixed number of epochs on a CIFAR-10
subset (the first N train images of each class; the first M test images of each class judge it), once with ship's
recipe and once per variant, one after another on the same machine. The subset keeps the table to minutes; its
accuracies are lower than on the full set, and single runs differ by up to ~1.2 points from the seed alone, so
``--seeds N`` averages N runs of each variant.

    python -m benchmarks.scratch_recipe [--cifar ../shared/datasets/cifar10] [--model convpool_s] [--seeds 3]
        [--variants "ship's recipe,no whitened stem"] [--train-per-class 800] [--epochs 8]"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.data import DataConfig
from mobiforge.engine import OptimConfig, cpu_has_native_bf16
from mobiforge.progress import SilentReporter
from mobiforge.ship.plan import scratch_identity_init, scratch_recipe, scratch_whiten_stem
from mobiforge.ship.policy import PRECISE_BN_IMAGES
from mobiforge.train import TrainConfig, train

BATCH = 128
LONG_RUN_STEPS = 10**6


def subset_table(cifar: Path, folder: Path, train_per_class: int, test_per_class: int) -> Path:
    """A ``path,label,split`` CSV of the first images of each class (the images stay where they are)."""
    table = folder / "subset.csv"
    with open(table, "w", newline="") as stream:
        writer = csv.writer(stream)
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for class_dir in sorted((cifar / split).iterdir()):
                for path in sorted(class_dir.iterdir())[:count]:
                    writer.writerow([str(path.resolve()), class_dir.name, split])
    return table


def ship_recipe_config(model: str, table: Path, folder: Path, epochs: int) -> TrainConfig:
    """Ship's long-run small-image recipe (what CIFAR-10 gets) on the subset, though the subset is shorter than its
    switch to AdamW; bf16 autocast where native, as ship's probe would choose it for ResNet-20."""
    optim = scratch_recipe(small=True, steps=LONG_RUN_STEPS, batch=BATCH, model=model)
    return TrainConfig(
        model=model,
        small_input=True,
        data=DataConfig(data=str(table), img_size=32, batch_size=BATCH),
        optim=optim,
        whiten_stem=scratch_whiten_stem(optim),
        identity_init=scratch_identity_init(model, optim),
        precise_bn=PRECISE_BN_IMAGES,
        amp="bf16" if cpu_has_native_bf16() else "none",
        epochs=epochs,
        runs_dir=str(folder / "runs"),
        tensorboard=False,
    )


def variants(base: TrainConfig) -> dict[str, TrainConfig]:
    """Ship's recipe, then one change each."""
    optim, bf16 = base.optim, base.amp == "bf16"
    table = {
        "ship's recipe": base,
        "no whitened stem": dataclasses.replace(base, whiten_stem=False),
        "no Nesterov momentum": dataclasses.replace(base, optim=dataclasses.replace(optim, nesterov=False)),
        "neither (the recipe before)": dataclasses.replace(
            base, whiten_stem=False, optim=dataclasses.replace(optim, nesterov=False)
        ),
        "+ identity init (airbench's dirac)": dataclasses.replace(base, identity_init=True),
        "+ BN biases at 64x lr with BN scales at 1 (airbench's)": dataclasses.replace(
            base, optim=dataclasses.replace(optim, norm_bias_lr_scale=64.0)
        ),
        "+ both": dataclasses.replace(
            base, identity_init=True, optim=dataclasses.replace(optim, norm_bias_lr_scale=64.0)
        ),
        "no label smoothing": dataclasses.replace(base, optim=dataclasses.replace(optim, label_smoothing=0.0)),
        "label smoothing 0.2 (airbench's)": dataclasses.replace(
            base, optim=dataclasses.replace(optim, label_smoothing=0.2)
        ),
        "no precise BN": dataclasses.replace(base, precise_bn=0),
        "+ EMA 0.99": dataclasses.replace(base, optim=dataclasses.replace(optim, ema_decay=0.99)),
        "warm-up 1 epoch + cosine instead of one-cycle": dataclasses.replace(
            base, optim=dataclasses.replace(optim, scheduler="cosine", warmup_epochs=1.0)
        ),
        "weight decay 5e-5 instead of 5e-4": dataclasses.replace(
            base, optim=dataclasses.replace(optim, weight_decay=5e-5)
        ),
    }
    if bf16:
        table["fp32 instead of bf16 autocast"] = dataclasses.replace(base, amp="none")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"))
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--section", default="scratch_recipe")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant (seeds 0..N-1); the table averages")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        table = subset_table(Path(args.cifar), Path(folder), args.train_per_class, args.test_per_class)
        base = ship_recipe_config(args.model, table, Path(folder), args.epochs)
        chosen = variants(base)
        if args.variants:
            unknown = [name for name in args.variants.split(",") if name not in chosen]
            if unknown:
                parser.error(f"--variants: no variant {unknown[0]!r}; choose from {', '.join(map(repr, chosen))}")
            chosen = {name: chosen[name] for name in args.variants.split(",")}
        rows = []
        for index, (name, config) in enumerate(chosen.items()):
            finals, bests, started = [], [], time.time()
            for seed in range(args.seeds):
                result = train(dataclasses.replace(config, name=f"variant{index}-{seed}", seed=seed), SilentReporter())
                finals.append(result.history[-1]["val_top1"])
                bests.append(result.best_top1)
                print(f"{name} (seed {seed}): final {finals[-1]:.2f}%, best {bests[-1]:.2f}%", flush=True)
            minutes = (time.time() - started) / 60 / args.seeds
            rows.append((name, statistics.mean(finals), statistics.mean(bests), minutes, finals))

    reference = rows[0][1]
    recipe: OptimConfig = base.optim
    lines = [
        f"## From-scratch recipe ablations ({args.model}, CIFAR-10 subset, {args.epochs} epochs)",
        "",
        f"Subset: the first {args.train_per_class} train images of each class ({10 * args.train_per_class:,}), "
        f"judged on the first {args.test_per_class} test images of each class ({10 * args.test_per_class:,}). "
        f"Ship's recipe for small images: "
        f"{'first conv whitened (PCA of 3x3 patches) and frozen, ' if base.whiten_stem else ''}SGD "
        f"{'Nesterov ' if recipe.nesterov else ''}momentum {recipe.momentum}, one-cycle peak lr {recipe.lr:g}, weight "
        f"decay {recipe.weight_decay:g} (not on BN/bias), label smoothing {recipe.label_smoothing:g}, batch {BATCH}, "
        f"pad-and-crop + flip, precise BN on {PRECISE_BN_IMAGES} training images before each evaluation, "
        f"{'bf16 autocast' if base.amp == 'bf16' else 'fp32'}. Each row changes one thing and averages "
        f"{args.seeds} run(s), seeds 0-{args.seeds - 1}; single runs differ by up to ~1.2 points from the seed alone.",
        "",
        "| variant | final test top-1 (mean) | vs ship's recipe | best epoch's top-1 (mean) | each seed | wall (min) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, final, best, minutes, finals in rows:
        each = " / ".join(f"{value:.2f}" for value in finals)
        lines.append(f"| {name} | {final:.2f}% | {final - reference:+.2f} | {best:.2f}% | {each} | {minutes:.1f} |")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
