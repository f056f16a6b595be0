"""Transfer learning on hymenoptera (ants vs bees, 245 train / 153 val photos) from ImageNet weights.

Fine-tunes the pretrained EfficientNet-Lite0 with `mobiforge train --pretrained` and records the recipe, the val
top-1 per epoch and the wall time in benchmarks/RESULTS.md. Target: at least 93% val top-1 within 10 epochs and
15 minutes on the 2-core reference machine (PyTorch's ResNet-18 tutorial reaches about 94-95%).

    python -m benchmarks.hymenoptera_finetune [--data ../shared/datasets/hymenoptera]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.data import DataConfig
from mobiforge.engine import OptimConfig
from mobiforge.progress import SilentReporter
from mobiforge.train import TrainConfig, train


class Log(SilentReporter):
    def __init__(self) -> None:
        self.t0, self.rows = time.time(), []

    def epoch(self, row: dict) -> None:
        self.rows.append({**row, "wall_s": time.time() - self.t0})
        print(f"epoch {row['epoch']}: train loss {row['train_loss']:.3f}, val top-1 {row['val_top1']:.2f}%", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/hymenoptera"))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--freeze-epochs", type=int, default=1)
    parser.add_argument("--backbone-lr-scale", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()

    config = TrainConfig(
        model=args.model,
        pretrained=True,
        data=DataConfig(data=args.data, batch_size=args.batch_size, workers=2, min_scale=0.25),
        optim=OptimConfig(lr=args.lr, momentum=0.9, scheduler="cosine", weight_decay=1e-4, label_smoothing=0.1),
        epochs=args.epochs,
        freeze_epochs=args.freeze_epochs,
        backbone_lr_scale=args.backbone_lr_scale,
        runs_dir=args.runs_dir,
        name=f"hymenoptera-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}",
        tensorboard=False,
    )
    log = Log()
    result = train(config, log)
    wall = time.time() - log.t0
    lines = [
        "## hymenoptera fine-tuning from ImageNet weights (`mobiforge train --pretrained`)",
        "",
        f"Best val top-1 **{result.best_top1:.2f}%** (153 val images), final {result.last['val_top1']:.2f}%, in "
        f"{args.epochs} epochs and **{wall / 60:.1f} min** wall time.",
        "",
        f"Recipe: `{args.model}` with its ImageNet weights (TF SAME padding, [-1, 1] inputs, bicubic), new 2-class "
        f"head; 224 px, RandomResizedCrop(scale 0.25-1) + flip; batch {args.batch_size}; SGD lr {args.lr} momentum "
        f"0.9, cosine; head only for {args.freeze_epochs} epoch(s) (backbone and BN frozen), then the backbone at "
        f"{args.backbone_lr_scale}x the head's rate; weight decay 1e-4; label smoothing 0.1.",
        "",
        "| epoch | train loss | val top-1 | wall (s) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['epoch']} | {r['train_loss']:.3f} | {r['val_top1']:.2f}% | {r['wall_s']:.0f} |" for r in log.rows]
    write_section("hymenoptera_finetune", "\n".join(lines))
    print(f"best val top-1 {result.best_top1:.2f}% in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
