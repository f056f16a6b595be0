"""`mobiforge ship` on a photo-sized proxy of a medium dataset: CIFAR-10 with 500 train images per class and 1,000
test images (100 per class), upscaled from 32 to 224 px. It is a proxy: real photos of that size carry more detail
than upscaled 32 px images. It exists to exercise what a user with a few thousand photos meets: a teacher that
cannot be fully fine-tuned in the budget, and students trained at 224 px.

    python -m benchmarks.ship_proxy [--cifar ../shared/datasets/cifar10] [--budget 30] [--folder runs/proxy-cifar224]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from benchmarks.ship_run import run_and_record
from mobiforge.ship import ShipConfig

SIZE = 224


def build_proxy(cifar: Path, folder: Path, train_per_class: int, test_per_class: int) -> Path:
    """``folder/{train,test}/<class>/*.jpg``, the first images of each class, upscaled (written once)."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted((cifar / split).iterdir()):
            target = folder / split / class_dir.name
            if target.is_dir() and len(list(target.iterdir())) == count:
                continue
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted(class_dir.iterdir())[:count]:
                with Image.open(source) as image:
                    image.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC).save(target / source.name, quality=92)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"))
    parser.add_argument("--folder", default="runs/proxy-cifar224")
    parser.add_argument("--budget", type=float, default=30.0, help="minutes")
    parser.add_argument("--runtime", default="executorch")
    parser.add_argument("--out", default="/tmp/runs-bench/ship-proxy")
    args = parser.parse_args()
    data = build_proxy(Path(args.cifar), Path(args.folder), 500, 100)
    config = ShipConfig(data=str(data), runtime=args.runtime, time_budget_s=args.budget * 60, out=args.out, threads=1)
    run_and_record(
        "ship_proxy",
        f"`mobiforge ship` on the CIFAR-10 proxy at 224 px, 5,000 train / 1,000 test ({args.budget:g}-minute budget, "
        f"{args.runtime}; a proxy, not real photos)",
        config,
        "pretrained rungs used, never skipped; int8 at most 1 MB within 3 points of the best teacher rung",
    )


if __name__ == "__main__":
    main()
