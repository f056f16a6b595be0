"""`mobiforge ship` on hymenoptera (245 train / 153 val photos of ants and bees) with a 30-minute budget.

Target (issue 7): an int8 artifact under 1 MB and 100 ms (batch 1, one thread, ExecuTorch on this machine);
report the val top-1 reached, aiming for 90%. The report and model card land in benchmarks/reports/ship_hymenoptera/.

    python -m benchmarks.ship_hymenoptera [--data ../shared/datasets/hymenoptera] [--budget 30]

A budget other than 30 minutes records its own section (``ship_hymenoptera_10m``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.ship_run import run_and_record
from mobiforge.ship import ShipConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/hymenoptera"))
    parser.add_argument("--budget", type=float, default=30.0, help="minutes")
    parser.add_argument("--runtime", default="executorch")
    parser.add_argument("--out", default="/tmp/runs-bench/ship-hymenoptera")
    args = parser.parse_args()
    config = ShipConfig(data=args.data, runtime=args.runtime, time_budget_s=args.budget * 60, out=args.out, threads=1)
    section = "ship_hymenoptera" if args.budget == 30 else f"ship_hymenoptera_{args.budget:g}m"
    section += "" if args.runtime == "executorch" else f"_{args.runtime}"
    run_and_record(
        section,
        f"`mobiforge ship` on hymenoptera ({args.budget:g}-minute budget, {args.runtime})",
        config,
        f"under 1 MB and 100 ms, within {args.budget:g} minutes; val top-1 through the runtime at least "
        f"{93 if args.budget >= 30 else 90}% (issue 23)",
    )


if __name__ == "__main__":
    main()
