"""CIFAR-10 time to accuracy: the best test top-1 that `mobiforge train` reaches in a wall-clock budget.

The model must fit the article's mobile budget (int8 weights under 1 MB). The script measures training speed on
this machine first, picks the number of epochs that fits the budget (evaluation included), re-plans them once the
first epoch is timed (as ship does), trains with a one-cycle schedule and records the recipe, the per-epoch curve and
the wall time in benchmarks/RESULTS.md.

    python -m benchmarks.cifar10_time_to_accuracy --data ../shared/datasets/cifar10 [--budget-min 30]
        [--model resnet20 --width-mult 0 --amp bf16 --precise-bn 1024 --ema 0.999]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from benchmarks.results import write_section
from mobiforge import create_model
from mobiforge.data import DataConfig
from mobiforge.engine import cpu_has_native_bf16
from mobiforge.profile import int8_weight_bytes
from mobiforge.progress import SilentReporter
from mobiforge.ship.plan import fit_epochs, replan_early, scratch_identity_init, scratch_recipe, stop_by
from mobiforge.ship.probes import step_speed
from mobiforge.train import EPOCH_END, TrainConfig, train


class LogReporter(SilentReporter):
    def __init__(self, start: float) -> None:
        self.start_time = start
        self.rows: list[dict] = []

    def epoch(self, row: dict) -> None:
        row = {**row, "wall_min": (time.time() - self.start_time) / 60}
        self.rows.append(row)
        print(
            f"epoch {row['epoch']}/{row['epochs']}: train loss {row['train_loss']:.3f} "
            f"test top-1 {row['val_top1']:.2f}% "
            f"({row['images_per_second']:.0f} img/s, wall {row['wall_min']:.1f} min)",
            flush=True,
        )

    def message(self, text: str) -> None:
        print(text, flush=True)


def measure_speed(config: TrainConfig, steps: int = 25) -> float:
    """Training images/s of the model alone (channels_last, this batch size): the basis for the epoch count."""
    model = create_model(config.model, **model_kwargs(config.width_mult)).to(memory_format=torch.channels_last)
    images = torch.randn(config.data.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.train().parameters(), lr=0.01, momentum=0.9)
    return step_speed(model, images, optimizer, steps, torch.bfloat16 if config.amp == "bf16" else None)


def model_kwargs(width_mult: float | None) -> dict:
    return {"num_classes": 10, "small_input": True, **({"width_mult": width_mult} if width_mult else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"))
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--width-mult", type=float, default=0.5, help="0: the model's own default")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="one-cycle peak (default: ship's, 0.2 at batch 128)")
    parser.add_argument(
        "--whiten-stem", action=argparse.BooleanOptionalAction, default=True, help="whitened frozen stem (ship's)"
    )
    parser.add_argument(
        "--identity-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="convs started as partial identities (default: ship's choice for the model)",
    )
    parser.add_argument(
        "--norm-bias-lr-scale", type=float, default=None, help="BN biases' lr multiple (default: ship's for the model)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: as many as fit the budget")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast (native bf16 CPUs)")
    parser.add_argument("--precise-bn", type=int, default=0, help="training images for precise BN before each eval")
    parser.add_argument("--ema", type=float, default=None, help="EMA decay of the weights (evaluated and saved)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--random-erasing", type=float, default=0.0, help="RandomErasing probability (0: off)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument(
        "--section", default="cifar10_time_to_accuracy", help="RESULTS.md section (another budget: another section)"
    )
    args = parser.parse_args()

    if args.amp == "bf16" and not cpu_has_native_bf16():
        raise SystemExit("--amp bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); use --amp none")
    start = time.time()
    width = args.width_mult or None
    recipe = scratch_recipe(small=True, steps=10**6, batch=args.batch_size, model=args.model)  # ship's long-run one
    optim = dataclasses.replace(
        recipe,
        lr=args.lr or recipe.lr,
        label_smoothing=args.label_smoothing,
        ema_decay=args.ema,
        norm_bias_lr_scale=args.norm_bias_lr_scale or recipe.norm_bias_lr_scale,
    )
    identity = scratch_identity_init(args.model, optim) if args.identity_init is None else args.identity_init
    config = TrainConfig(
        model=args.model,
        width_mult=width,
        small_input=True,
        data=DataConfig(data=args.data, img_size=32, batch_size=args.batch_size, random_erasing=args.random_erasing),
        optim=optim,
        whiten_stem=args.whiten_stem,
        identity_init=identity,
        epochs=1,
        amp=args.amp,
        precise_bn=args.precise_bn,
        runs_dir=args.runs_dir,
        name=f"cifar10-{args.model}-w{width or 1}-{time.strftime('%Y%m%d-%H%M%S')}",
        tensorboard=False,
    )
    int8_bytes = int8_weight_bytes(create_model(args.model, **model_kwargs(width)))
    if int8_bytes > 1_000_000:
        raise SystemExit(f"{args.model} x{width or 1} has {int8_bytes / 1e6:.2f} MB of int8 weights: over 1 MB")
    speed = measure_speed(config)
    # 50k train images per epoch at the measured model speed, plus evaluating 10k test images at about 4x training
    # speed: the first plan; after the first epoch it is re-planned from that epoch's measured length.
    epoch_seconds = 50_000 / speed + 10_000 / (4 * speed)
    deadline = start + args.budget_min * 60
    config.epochs = args.epochs or max(1, int((deadline - time.time()) // epoch_seconds))
    print(f"model speed {speed:.0f} img/s -> {config.epochs} epochs in {args.budget_min:.0f} min", flush=True)
    chosen = (
        "set by --epochs"
        if args.epochs
        else "as many as fit the budget, re-planned after the first and third epochs and a fifth of the way through"
    )
    reporter = LogReporter(start)
    callbacks = {} if args.epochs else {EPOCH_END: [replan_early(fit_epochs(deadline, 200)), stop_by(deadline)]}
    result = train(config, reporter, callbacks)
    wall = (time.time() - start) / 60

    scale = optim.norm_bias_lr_scale
    bias_note = f"BN biases at {scale:g}x lr with BN scales at 1, " if scale != 1 else ""
    lines = [
        f"## CIFAR-10 time to accuracy, {args.budget_min:.0f}-minute budget (`mobiforge train`, 2-core CPU)",
        "",
        f"Best test top-1 **{result.best_top1:.2f}%** in **{wall:.1f} min** wall time "
        f"(budget {args.budget_min:.0f} min, data checks, training and per-epoch evaluation of the 10,000 test "
        "images included).",
        "",
        f"Recipe: `{args.model}` width {width or 1}, CIFAR-style stem (`small_input`), "
        f"int8 weights {int8_bytes / 1e6:.2f} MB"
        f"{', first conv whitened (PCA of 3x3 patches) and frozen' if args.whiten_stem else ''}"
        f"{', convs started as partial identities' if identity else ''}; 32 px, pad-and-crop + flip"
        f"{f' + random erasing (p {args.random_erasing:g})' if args.random_erasing else ''}; "
        f"batch {args.batch_size}, SGD {'Nesterov ' if optim.nesterov else ''}momentum "
        f"{optim.momentum}, one-cycle lr {optim.lr:g}, weight decay {optim.weight_decay:g} (not on BN/bias), "
        f"{bias_note}"
        f"label smoothing {args.label_smoothing}, "
        f"{'EMA ' + str(args.ema) if args.ema else 'no EMA'}, "
        f"{'precise BN on ' + str(args.precise_bn) + ' images' if args.precise_bn else 'no precise BN'}, "
        f"channels_last {'bf16 autocast' if args.amp == 'bf16' else 'fp32'}, "
        f"{len(result.history)} epochs ({chosen}; model-only speed {speed:.0f} img/s).",
        "",
        "| epoch | train loss | test top-1 | train img/s | wall (min) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in reporter.rows:
        lines.append(
            f"| {row['epoch']} | {row['train_loss']:.3f} | {row['val_top1']:.2f}% | {row['images_per_second']:.0f} "
            f"| {row['wall_min']:.1f} |"
        )
    lines.append("")
    lines.append(f"Run directory: `{result.run_dir}` (its `best.pt` is a baseline for `benchmarks/cifar10_prune.py`).")
    write_section(args.section, "\n".join(lines))
    print(f"best test top-1 {result.best_top1:.2f}% in {wall:.1f} min", flush=True)


if __name__ == "__main__":
    main()
