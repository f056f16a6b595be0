"""From-scratch accuracy per epoch of the small-image candidates (issue 26): which family learns most per epoch.

Each model trains the same number of epochs with ship's small-image recipe (the one ``benchmarks/scratch_recipe.py``
ablates) on the same CIFAR-10 subset, one after another on this machine; the table gives the final test top-1, the
wall time and the training speed measured the way ship's search probes it. Ship's ranking puts the families that
reach more in the same epochs first among the candidates its budget gives enough epochs (``search.rank``).

    python -m benchmarks.small_image_families [--cifar ../shared/datasets/cifar10] [--epochs 8]
        [--models resnet20,convpool_s,convpool_m]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results import write_section
from benchmarks.scratch_recipe import BATCH, ship_recipe_config, subset_table
from mobiforge import create_model
from mobiforge.engine import cpu_has_native_bf16
from mobiforge.profile import count_macs, count_params
from mobiforge.progress import SilentReporter
from mobiforge.ship.probes import step_speed
from mobiforge.train import train


def probed_speed(model_name: str, amp: str) -> tuple[int, int, float]:
    """Parameters, MACs at 32 px and training img/s (ship's probe: batch 128, channels_last, best of 2)."""
    model = create_model(model_name, num_classes=10, small_input=True).to(memory_format=torch.channels_last)
    images = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if amp == "bf16" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    speed = max(step_speed(model.train(), images, optimizer, 6, dtype) for _ in range(2))
    return count_params(model), count_macs(model, (1, 3, 32, 32)), speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"))
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--models", default="resnet20,resnet56,convpool_s,convpool_m")
    parser.add_argument("--section", default="small_image_families", help="RESULTS.md section to write")
    args = parser.parse_args()

    amp = "bf16" if cpu_has_native_bf16() else "none"
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        table = subset_table(Path(args.cifar), Path(folder), args.train_per_class, args.test_per_class)
        base = ship_recipe_config("resnet20", table, Path(folder), args.epochs)  # the model is set per row
        for model in args.models.split(","):
            params, macs, speed = probed_speed(model, amp)
            started = time.time()
            result = train(dataclasses.replace(base, model=model, name=model), SilentReporter())
            minutes = (time.time() - started) / 60
            final = result.history[-1]["val_top1"]
            rows.append((model, params, macs, speed, final, minutes))
            print(f"{model}: {speed:.0f} img/s probed, final {final:.2f}%, {minutes:.1f} min", flush=True)

    lines = [
        f"## Small-image families from scratch ({args.epochs} epochs, CIFAR-10 subset)",
        "",
        f"Subset: the first {args.train_per_class} train images of each class ({10 * args.train_per_class:,}), "
        f"judged on the first {args.test_per_class} test images of each class ({10 * args.test_per_class:,}); "
        f"ship's small-image recipe (see the ablations), {'bf16 autocast' if amp == 'bf16' else 'fp32'}. Train "
        "img/s is ship's probe (model alone, batch 128); the wall time includes loading, augmentation and evaluation. "
        "One seed each: differences under ~0.5 points are noise.",
        "",
        "| model | params | MACs (32 px) | train img/s (probe) | final test top-1 | wall (min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model, params, macs, speed, final, minutes in rows:
        lines.append(
            f"| {model} | {params / 1e6:.2f}M | {macs / 1e6:.0f}M | {speed:.0f} | {final:.2f}% | {minutes:.1f} |"
        )
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
