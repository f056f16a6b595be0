"""Plots of a training run (curves, confusion matrix), rendered headless with matplotlib.

Kept apart from the ship report so that the trainer, which draws them at the end of every run, does not depend
on the reporting layer above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mobiforge.data import load_rgb


def pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss (train and val) and val accuracy (top-1, top-5) per epoch."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], label="val")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axis.legend()
    acc_axis.plot(epochs, [row["val_top1"] for row in history], label="val top-1")
    acc_axis.plot(epochs, [row["val_top5"] for row in history], label="val top-5")
    acc_axis.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    acc_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion(
    confusion: torch.Tensor | list[list[int]], classes: list[str], path: Path, title: str = "confusion"
) -> Path:
    """Confusion matrix, rows = true class, columns = predicted, each row normalised to 1."""
    plt = pyplot()
    counts = torch.as_tensor(confusion, dtype=torch.float64)
    normalised = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 8 else 0)
    axis.set_yticks(range(len(classes)), classes)
    axis.set(xlabel="predicted", ylabel="true", title=f"{title} (row-normalised)")
    if len(classes) <= 20:
        for true in range(len(classes)):
            for predicted in range(len(classes)):
                value = int(counts[true, predicted])
                if value:
                    colour = "white" if normalised[true, predicted] > 0.5 else "black"
                    axis.text(predicted, true, str(value), ha="center", va="center", color=colour, fontsize=8)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_mistakes(mistakes: list[dict[str, Any]], path: Path, root: Path, columns: int = 5) -> Path | None:
    """Thumbnails of misclassified images (``image`` under the data's ``root``, or an older report's absolute
    ``path``; ``label``, ``predicted``, ``confidence`` each), titled "true -> predicted (confidence)"; None when
    there are none or none can be read."""
    shown = []
    for mistake in mistakes:
        try:
            shown.append((load_rgb(str(root / (mistake.get("image") or mistake["path"])), draft_size=128), mistake))
        except (OSError, ValueError, KeyError):  # the val image was moved since the export: leave it out
            continue
    if not shown:
        return None
    plt = pyplot()
    rows = (len(shown) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, mistake) in zip(axes.flat, shown, strict=False):
        image.thumbnail((160, 160))
        axis.imshow(image)
        axis.set_title(
            f"{mistake['label']} -> {mistake['predicted']}\n({100 * mistake['confidence']:.0f}%)", fontsize=8
        )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
