"""What decoding the images once into memory (`--cache auto`) costs and saves, on the real datasets.

For each dataset: the time of the pre-training check of every file alone (`--cache none`) and with the images kept
(`--cache auto`), the memory they take, and the time to prepare 10,000 samples of each split per epoch: read from
files by two loader processes (the uncached default) against cached tensors in the training process.

    python -m benchmarks.data_cache [--cifar ../shared/datasets/cifar10] [--photos ../shared/datasets/hymenoptera]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torch.utils.data import DataLoader
from torchvision.transforms import v2

from benchmarks.results import write_section
from mobiforge.data import (
    DataConfig,
    ImageSamples,
    cache_specs,
    check_images,
    discover,
    eval_stages,
    eval_transform,
    preprocess_for,
    train_stages,
    train_transform,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def seconds_per_10k(dataset: ImageSamples, workers: int) -> float:
    count = min(len(dataset), 10_000)
    dataset.samples = dataset.samples[:count]
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=64, num_workers=workers):
        pass
    return (time.perf_counter() - start) * 10_000 / count


def measure(root: Path, img_size: int) -> dict[str, float]:
    config = DataConfig(data=str(root), img_size=img_size).resolved()
    preprocess = preprocess_for(config)
    start = time.perf_counter()
    check_images(discover(config), skip_bad=False)
    scan = time.perf_counter() - start
    start = time.perf_counter()
    splits = check_images(discover(config), skip_bad=False, cache=cache_specs(config, preprocess), budget=2**40)
    cached = time.perf_counter() - start
    assert splits.images is not None
    augment, normalise = v2.Compose(train_stages(config, cached=True)[1]), v2.Compose(eval_stages(preprocess)[1])
    draft = 2 * img_size
    return {
        "images": len(splits.train) + len(splits.val),
        "scan": scan,
        "cached": cached,
        "mib": sum(image.numel() for image in splits.images.values()) / 2**20,
        "train_files": seconds_per_10k(ImageSamples(splits.train, train_transform(config), draft_size=draft), 2),
        "train_cached": seconds_per_10k(ImageSamples(splits.train, augment, images=splits.images), 0),
        "val_files": seconds_per_10k(
            ImageSamples(splits.val, eval_transform(preprocess), draft_size=preprocess.resize_size), 2
        ),
        "val_cached": seconds_per_10k(ImageSamples(splits.val, normalise, images=splits.images), 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--photos", type=Path, default=SHARED / "hymenoptera")
    args = parser.parse_args()
    lines = [
        "## Images decoded once into memory (`--cache auto`)",
        "",
        "Check of every file before training, alone and keeping the decoded images; preparing samples per epoch "
        "from files (2 loader processes) or from memory (the training process alone), in seconds per 10,000 samples.",
        "",
        "| data | images | check only | check + keep | memory | train: files | train: memory | val: files "
        "| val: memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, root, size in (("CIFAR-10, 32 px", args.cifar, 32), ("hymenoptera, 224 px", args.photos, 224)):
        if not root.is_dir():
            print(f"skipping {label}: {root} not found")
            continue
        r = measure(root, size)
        line = (
            f"| {label} | {r['images']:,} | {r['scan']:.1f} s | {r['cached']:.1f} s | {r['mib']:.0f} MiB "
            f"| {r['train_files']:.1f} s | {r['train_cached']:.1f} s | {r['val_files']:.1f} s "
            f"| {r['val_cached']:.1f} s |"
        )
        lines.append(line)
        print(line, flush=True)
    write_section("data_cache", "\n".join(lines))


if __name__ == "__main__":
    main()
