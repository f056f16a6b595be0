"""Distillation, measured: the same student trained with and without a teacher (same epochs, data, seed).

For each seed the student is trained twice with `mobiforge.train` / `mobiforge.distill`: once on the labels alone,
once with Hinton KD from the teacher (a checkpoint, or a pretrained model name, which is first fine-tuned on the
data). Best val top-1 of both and their difference go to benchmarks/RESULTS.md under --section.

    python -m benchmarks.distill_compare --data ../shared/datasets/hymenoptera --teacher efficientnet_lite0 \
        --student mobilenet_v2 --width-mult 0.5 --epochs 30 --section hymenoptera_distill
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge import create_model
from mobiforge.data import DataConfig
from mobiforge.distill import DistillConfig, adapt_teacher
from mobiforge.engine import OptimConfig
from mobiforge.profile import int8_weight_bytes
from mobiforge.progress import SilentReporter
from mobiforge.train import TrainConfig, train


class Log(SilentReporter):
    def __init__(self, label: str) -> None:
        self.label = label

    def epoch(self, row: dict) -> None:
        print(f"{self.label} epoch {row['epoch']}: val top-1 {row['val_top1']:.2f}%", flush=True)

    def message(self, text: str) -> None:
        print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--teacher", required=True, help="checkpoint, or a pretrained model name")
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student", default="mobilenet_v2")
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--min-scale", type=float, default=0.25)
    parser.add_argument("--section", default="distill")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = TrainConfig(
        model=args.student,
        width_mult=args.width_mult,
        data=DataConfig(data=args.data, img_size=args.img_size, batch_size=args.batch_size, min_scale=args.min_scale),
        optim=OptimConfig(lr=args.lr, momentum=0.9, scheduler="cosine", weight_decay=5e-4, label_smoothing=0.1),
        epochs=args.epochs,
        runs_dir=args.runs_dir,
        tensorboard=False,
    )
    start = time.time()
    teacher_config = dataclasses.replace(base, name=f"{args.section}-{stamp}")
    kd = DistillConfig(args.teacher, args.alpha, args.temperature, teacher_epochs=args.teacher_epochs)
    teacher = adapt_teacher(teacher_config, kd, Log("teacher"))
    kd = dataclasses.replace(kd, teacher=teacher)
    teacher_minutes = (time.time() - start) / 60
    results: dict[str, list[float]] = {"alone": [], "distilled": []}
    minutes: dict[str, list[float]] = {"alone": [], "distilled": []}
    for seed in args.seeds:
        for label, distill in (("alone", None), ("distilled", kd)):
            began = time.time()
            config = dataclasses.replace(
                base, seed=seed, distill=distill, name=f"{args.section}-{stamp}-{label}-{seed}"
            )
            results[label].append(train(config, Log(f"{label} seed {seed}")).best_top1)
            minutes[label].append((time.time() - began) / 60)

    from mobiforge.checkpoint import load_checkpoint

    teacher_ckpt = load_checkpoint(teacher)
    teacher_top1 = teacher_ckpt.get("metrics", {}).get("best_top1")
    student = create_model(args.student, num_classes=len(teacher_ckpt["classes"]), width_mult=args.width_mult)
    gain = [d - a for d, a in zip(results["distilled"], results["alone"], strict=True)]
    lines = [
        f"## Distillation on {Path(args.data).name} (`mobiforge distill`)",
        "",
        f"Student `{args.student}` width {args.width_mult} ({int8_weight_bytes(student) / 1e6:.2f} MB of int8 "
        f"weights), trained from scratch for {args.epochs} epochs, with and without the teacher (same data, "
        f"recipe and seed). Teacher: `{teacher_ckpt['spec']['name']}`"
        + (f", val top-1 {teacher_top1:.2f}%" if teacher_top1 is not None else "")
        + (f" (adapted from ImageNet weights in {teacher_minutes:.1f} min)" if not Path(args.teacher).is_file() else "")
        + f". KD: alpha {args.alpha}, T {args.temperature}; SGD lr {args.lr} cosine, batch {args.batch_size}.",
        "",
        "| seed | alone: best val top-1 | distilled: best val top-1 | difference | minutes (alone / distilled) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for index, seed in enumerate(args.seeds):
        lines.append(
            f"| {seed} | {results['alone'][index]:.2f}% | {results['distilled'][index]:.2f}% "
            f"| {gain[index]:+.2f} | {minutes['alone'][index]:.1f} / {minutes['distilled'][index]:.1f} |"
        )
    lines += ["", f"Mean difference: **{statistics.mean(gain):+.2f} points** over {len(gain)} seed(s)."]
    write_section(args.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
