"""Cached small-image augmentation: torchvision's per-sample v2 steps against ``PadCropBatch`` on whole batches.

The recipe is pad-and-crop (reflect, 4 px), flip and normalise on 32 px uint8 images, as ``train`` runs it on cached
CIFAR-sized data; the figure is microseconds per image on one thread, best of 5 rounds.

    python -m benchmarks.batch_augment [--batch 128]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from benchmarks.results import write_section
from mobiforge.data import DataConfig, batch_augment, train_stages


def best_us_per_image(run, images: int, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times) / images * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = DataConfig(data="cifar", img_size=32)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
    per_sample = v2.Compose(train_stages(config, cached=True)[1])
    batched = batch_augment(config)
    generator = torch.Generator().manual_seed(0)
    sample_us = best_us_per_image(lambda: [per_sample(tv_tensors.Image(image)) for image in images], args.batch)
    batch_us = best_us_per_image(lambda: batched(images, generator), args.batch)
    lines = [
        "## Cached small-image augmentation: per sample against per batch (issue 26)",
        "",
        f"Pad-and-crop (reflect, 4 px), flip, normalise; 32 px uint8 images, batch {args.batch}, 1 thread, best of 5.",
        "",
        "| path | us per image |",
        "|---|---:|",
        f"| torchvision v2, per sample | {sample_us:.0f} |",
        f"| `PadCropBatch`, per batch | {batch_us:.0f} |",
    ]
    print("\n".join(lines))
    write_section("batch_augment", "\n".join(lines))


if __name__ == "__main__":
    main()
