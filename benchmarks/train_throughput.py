"""Training throughput: `mobiforge train` against a plain loop in the style of torchvision's reference script.

Both train the same architecture on the same images with the same batch size and thread count for two epochs
(the plain loop with --workers loader processes, mobiforge with its defaults); the figure is the images/s of the
second epoch (the first pays for loader start-up). The plain loop is what most users write: ImageFolder,
RandomResizedCrop + flip + ToTensor + Normalize, NCHW fp32, SGD, CE.
mobiforge adds channels_last, its loader (images decoded once into memory, no worker processes competing with the
training threads) and per-iteration scheduling. The `--amp bf16` and `--compile` columns are mobiforge with that
option added (torch.compile compiles during epoch 1, so epoch 2 is its steady state). The "model only" columns time
the bare model on one random batch, without data loading, in each memory format: the ceiling of each loop on this CPU.

    python -m benchmarks.train_throughput [--cifar ../shared/datasets/cifar10] [--photos ../shared/datasets/hymenoptera]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from benchmarks.results import write_section
from mobiforge import create_model
from mobiforge.data import DataConfig
from mobiforge.engine import cpu_has_native_bf16
from mobiforge.train import TrainConfig, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def subset_folder(source: Path, per_class_train: int, per_class_val: int) -> Path:
    """A temporary train/val ImageFolder of symlinks to the first images of each class of ``source``."""
    root = Path(tempfile.mkdtemp(prefix="mobiforge-throughput-"))
    val_source = source / "val" if (source / "val").is_dir() else source / "test"
    for split, folder, count in (("train", source / "train", per_class_train), ("val", val_source, per_class_val)):
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
            for image in images[:count]:
                os.symlink(image, target / image.name)
    return root


def plain_loop(data: Path, img_size: int, small_input: bool, batch_size: int, workers: int, epochs: int) -> float:
    transform = T.Compose(
        [
            T.RandomResizedCrop(img_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    dataset = datasets.ImageFolder(str(data / "train"), transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    model = create_model("mobilenet_v2", num_classes=len(dataset.classes), small_input=small_input).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    speed = 0.0
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for inputs, targets in loader:
            loss = criterion(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += inputs.shape[0]
        speed = images / (time.perf_counter() - start)
    return speed


def model_only(img_size: int, small_input: bool, batch_size: int, channels_last: bool, steps: int = 6) -> float:
    """Training images/s of the bare model on one random batch (no data loading): the ceiling either loop can reach
    with this memory format."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, small_input=small_input).train()
    inputs, targets = torch.randn(batch_size, 3, img_size, img_size), torch.randint(0, 10, (batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: oneDNN picks its kernels on the first calls
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def mobiforge_train(
    data: Path,
    img_size: int,
    small_input: bool,
    batch_size: int,
    epochs: int,
    amp: str = "auto",
    torch_compile: bool = False,
) -> float:
    config = TrainConfig(
        model="mobilenet_v2",
        amp=amp,
        compile=torch_compile,
        small_input=small_input,
        data=DataConfig(data=str(data), img_size=img_size, batch_size=batch_size),
        epochs=epochs,
        runs_dir=tempfile.mkdtemp(),
        name="throughput",
        tensorboard=False,
    )
    return train(config).history[-1]["images_per_second"]


def _speed(images_per_second: float | None, plain: float) -> str:
    if images_per_second is None:
        return "not run (no native bf16 on this CPU) | "
    return f"{images_per_second:.1f} | {images_per_second / plain:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--photos", type=Path, default=SHARED / "hymenoptera")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cases = [
        ("224 px, hymenoptera photos (245 train images)", args.photos, 224, False, 32, None),
        ("32 px CIFAR-style, CIFAR-10 subset (2,000 train images)", args.cifar, 32, True, 64, (200, 20)),
    ]
    lines = [
        "## Training throughput: `mobiforge train` vs a plain torchvision-reference-style loop",
        "",
        f"mobilenet_v2, {torch.get_num_threads()} threads; the plain loop with {args.workers} loader workers, "
        "mobiforge with its defaults (images cached in memory, no loader workers on CPU); images/s of epoch "
        f"{args.epochs} of {args.epochs} (data loading included). The epochs are short: on a shared 2-core VM, "
        "reruns of this script have differed by about 20%.",
        "",
        "| case | batch | plain loop (img/s) | mobiforge train (img/s) | speed-up | with --amp bf16 (img/s) "
        "| speed-up | with --compile (img/s) | speed-up | model only, NCHW (img/s) "
        "| model only, channels_last (img/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, source, size, small, batch, subset in cases:
        if not source.is_dir():
            print(f"skipping {label}: {source} not found")
            continue
        data = subset_folder(source, *subset) if subset else source
        plain = plain_loop(data, size, small, batch, args.workers, args.epochs)
        ours = mobiforge_train(data, size, small, batch, args.epochs)
        # Without native bf16 (AVX2 CPUs) oneDNN emulates it: 0.16x measured, minutes per case for nothing.
        bf16 = mobiforge_train(data, size, small, batch, args.epochs, amp="bf16") if cpu_has_native_bf16() else None
        compiled = mobiforge_train(data, size, small, batch, args.epochs, torch_compile=True)
        nchw, channels_last = (model_only(size, small, batch, cl) for cl in (False, True))
        line = (
            f"| {label} | {batch} | {plain:.1f} | {ours:.1f} | {ours / plain:.2f}x | {_speed(bf16, plain)} "
            f"| {compiled:.1f} | {compiled / plain:.2f}x | {nchw:.1f} | {channels_last:.1f} |"
        )
        lines.append(line)
        print(line, flush=True)
    write_section("train_throughput", "\n".join(lines))


if __name__ == "__main__":
    main()
