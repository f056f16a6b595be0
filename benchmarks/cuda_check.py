"""Check `mobiforge train` on a CUDA GPU: bf16 and fp16 autocast (GradScaler), channels_last, resume, speed.

Runs on the built-in digits data (no download) and writes its section of benchmarks/RESULTS.md.

    python -m benchmarks.cuda_check [--epochs 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results import write_section
from mobiforge.checkpoint import load_checkpoint
from mobiforge.data import DataConfig
from mobiforge.engine import OptimConfig
from mobiforge.train import TrainConfig, train


def run(amp: str, epochs: int, runs: Path, name: str, resume: str | None = None) -> tuple[dict, float]:
    config = TrainConfig(
        model="mobilenet_v2",
        data=DataConfig(data="digits", batch_size=64, workers=4),
        optim=OptimConfig(optimizer="sgd", lr=0.05, scheduler="cosine", warmup_epochs=1),
        epochs=epochs,
        amp=amp,
        device="cuda",
        runs_dir=str(runs),
        name=name,
        resume=resume,
        tensorboard=False,
    )
    start = time.time()
    result = train(config)
    return result.last | {"best_top1": result.best_top1}, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    runs = Path(tempfile.mkdtemp())
    lines = [
        "## CUDA check (`mobiforge train --device cuda`, digits, mobilenet_v2 small-input, 32 px, batch 64)",
        "",
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}.",
        "",
        "| amp | epochs | best val top-1 | last epoch train img/s | wall (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for amp in ("none", "bf16", "fp16"):
        last, seconds = run(amp, args.epochs, runs, f"digits-{amp}")
        line = f"| {amp} | {args.epochs} | {last['best_top1']:.2f}% | {last['images_per_second']:.0f} | {seconds:.0f} |"
        lines.append(line)
        print(line, flush=True)
    # Resume: extend the fp16 run by two epochs from its last checkpoint (GradScaler state included).
    last_pt = runs / "digits-fp16" / "last.pt"
    scaler_state = load_checkpoint(last_pt).get("scaler")
    resumed, _ = run("fp16", args.epochs + 2, runs, "digits-fp16", resume=str(last_pt))
    lines += [
        "",
        f"Resumed the fp16 run from `last.pt` (GradScaler state saved: {scaler_state is not None}) for 2 more epochs: "
        f"epoch {resumed['epoch']}, val top-1 {resumed['val_top1']:.2f}%.",
    ]
    print(lines[-1], flush=True)
    write_section("cuda_check", "\n".join(lines))


if __name__ == "__main__":
    main()
