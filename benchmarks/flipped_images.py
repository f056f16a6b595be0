"""Which val images exported files classify differently from the fp32 checkpoint, with both sets of logits.

A gate of 0.5 points on a few hundred val images passes or fails on single images. This lists them: for each file,
every val image whose top-1 through the file's runtime differs from PyTorch fp32's, with the label, both logit
vectors and their top-1 margins, so a lost image can be seen as a near tie or as a real error. The val images are
the ones `mobiforge export` verifies on (same subset for the same `--val-images`).

    python -m benchmarks.flipped_images --checkpoint runs/NAME/best.pt runs/NAME/export/best-qat.pte ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.results import write_section
from mobiforge.backend_api import backend_for
from mobiforge.checkpoint import Checkpoint
from mobiforge.export import ExportConfig, load_export_data, run_all
from mobiforge.runtimes import load_runner


def margin(logits: torch.Tensor) -> float:
    """Top-1 logit minus the runner-up: how far the image is from a tie."""
    top = logits.topk(2).values
    return (top[0] - top[1]).item()


def logits_text(logits: torch.Tensor) -> str:
    return "[" + ", ".join(f"{value:.3f}" for value in logits.tolist()) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("files", nargs="+", help="exported .pte / .tflite / .onnx files of that checkpoint")
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--section", default=None, help="also write the table to this RESULTS.md section")
    args = parser.parse_args()

    checkpoint = Checkpoint.load(args.checkpoint)
    model = checkpoint.model()
    data = load_export_data(checkpoint, ExportConfig(args.checkpoint, "onnx", val_images=args.val_images))
    classes = checkpoint.named_classes()
    with torch.no_grad():
        fp32 = torch.cat([model(chunk) for chunk in data.val_images.split(64)])

    rows = []
    for file in args.files:
        batched = backend_for(file).batched  # the others are exported for batch 1, as export runs them
        logits = run_all(load_runner(Path(file), threads=2), data.val_images, batched)
        flipped = torch.nonzero(logits.argmax(1) != fp32.argmax(1)).flatten().tolist()
        for index in flipped:
            image = Path(data.val_samples[index][0]).name
            label = classes[data.val_labels[index].item()]
            rows.append(
                f"| `{Path(file).name}` | {index} `{image}` | {label} | {logits_text(fp32[index])} "
                f"({margin(fp32[index]):.3f}) | {logits_text(logits[index])} ({margin(logits[index]):.3f}) |"
            )
        if not flipped:
            rows.append(f"| `{Path(file).name}` | none | | | |")

    body = "\n".join(
        [
            f"## Val images classified differently from fp32 ({Path(args.checkpoint).parent.name})",
            "",
            f"Val images: {len(data.val_labels)}; classes: {', '.join(classes)}. In brackets: the top-1 margin "
            "(top logit minus the runner-up).",
            "",
            "| file | val image | label | fp32 logits (margin) | file's logits in its runtime (margin) |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(body)
    if args.section:
        write_section(args.section, body)


if __name__ == "__main__":
    main()
