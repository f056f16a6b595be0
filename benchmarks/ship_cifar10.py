"""`mobiforge ship` on CIFAR-10 (50,000 train / 10,000 test images, 32 px) with a 60-minute budget.

Target (issue 7): an int8 artifact under 1 MB and 100 ms (batch 1, one thread, ExecuTorch on this machine) with at
least 90% test top-1 within 60 minutes. Accuracy here is bound by training time on 2 CPU cores; ship's own defaults
decide how many candidates share it (issue 26: one, when a second would leave either short of its epochs). Report
and model card: benchmarks/reports/ship_cifar10/.

    python -m benchmarks.ship_cifar10 [--data ../shared/datasets/cifar10] [--budget 60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.ship_run import run_and_record
from mobiforge.ship import ShipConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"))
    parser.add_argument("--budget", type=float, default=60.0, help="minutes")
    parser.add_argument("--runtime", default="executorch")
    parser.add_argument("--max-trained", type=int, default=None, help="default: ship's")
    parser.add_argument("--out", default="/tmp/runs-bench/ship-cifar10")
    args = parser.parse_args()
    config = ShipConfig(
        data=args.data,
        runtime=args.runtime,
        time_budget_s=args.budget * 60,
        out=args.out,
        threads=1,
    )
    if args.max_trained:
        config.max_trained = args.max_trained
    run_and_record(
        "ship_cifar10",
        f"`mobiforge ship` on CIFAR-10 ({args.budget:g}-minute budget, {args.runtime})",
        config,
        "under 1 MB and 100 ms with at least 90% test top-1, within 60 minutes",
    )


if __name__ == "__main__":
    main()
