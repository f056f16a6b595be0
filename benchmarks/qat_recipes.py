"""QAT recipes compared on one checkpoint: how close each fine-tuned int8 graph stays to the fp32 model.

Each recipe runs `mobiforge export`'s own QAT (`prepare_qat_pt2e`, the train loop, BN statistics frozen, same seed,
same images) and is scored by its PT2E reference model (simulated int8, what the runtimes then execute) on the val
split: top-1, top-1 agreement with fp32 and the mean squared logit difference to fp32. On a val split of a few
hundred images top-1 moves in steps of one image; agreement and logit error show the drift that decides them.

    python -m benchmarks.qat_recipes --checkpoint runs/NAME/best.pt --epochs 2 --recipes 0:1e-3 0.5:1e-3 1:1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from benchmarks.results import write_section
from mobiforge.backends.executorch import xnnpack_quantizer
from mobiforge.checkpoint import Checkpoint
from mobiforge.export import QAT_TEMPERATURE, ExportConfig, load_export_data, qat_model
from mobiforge.quantize import top1_percent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--qat-images", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--recipes", nargs="+", default=["0:1e-3", "0.5:1e-3"], help="DISTILL_ALPHA:LR ...")
    parser.add_argument("--section", default="qat_recipes")
    args = parser.parse_args()

    checkpoint = Checkpoint.load(args.checkpoint)
    model = checkpoint.model()
    base = ExportConfig(
        args.checkpoint, "executorch", "qat", qat_epochs=args.epochs, qat_images=args.qat_images,
        val_images=args.val_images,
    )  # fmt: skip
    torch.manual_seed(base.seed)
    data = load_export_data(checkpoint, base)
    with torch.no_grad():
        fp32 = torch.cat([model(chunk) for chunk in data.val_images.split(64)])
    rows = []
    for recipe in args.recipes:
        alpha, lr = (float(part) for part in recipe.split(":"))
        config = dataclasses.replace(base, qat_distill=alpha, qat_lr=lr)
        torch.manual_seed(config.seed)
        started = time.time()
        reference = qat_model(model, xnnpack_quantizer(qat=True), data, config, fold=True)
        with torch.no_grad():
            logits = torch.cat([reference(chunk) for chunk in data.val_images.split(64)])
        agreement = 100.0 * (logits.argmax(1) == fp32.argmax(1)).float().mean().item()
        mse = (logits - fp32).pow(2).mean().item()
        top1 = top1_percent(logits, data.val_labels)
        row = f"| {alpha:g} | {lr:g} | {top1:.2f}% | {agreement:.2f}% | {mse:.4f} | {time.time() - started:.0f} s |"
        print(row, flush=True)
        rows.append(row)
    name = Path(args.checkpoint).parent.name
    lines = [
        f"## QAT recipes on `{checkpoint['spec']['name']}` ({name}): simulated int8 against fp32",
        "",
        f"Val images: {len(data.val_labels)}; fp32 top-1 {top1_percent(fp32, data.val_labels):.2f}%. QAT: "
        f"{args.epochs} epoch(s) on {args.qat_images or 'all'} training images, SGD cosine, BN statistics frozen, "
        f"label smoothing 0.1, seed {base.seed}; distillation from the fp32 model at temperature {QAT_TEMPERATURE:g} "
        "with weight alpha (0: labels only). Scored by each PT2E reference model (the int8 graph the runtimes run).",
        "",
        "| distill alpha | lr | int8 top-1 | agreement with fp32 | logit MSE vs fp32 | QAT time |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
