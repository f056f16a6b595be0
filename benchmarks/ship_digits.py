"""`mobiforge ship` on the built-in digits (the demo's data: 1,433 train / 364 val images of 8x8 px) with the demo's
4-minute budget, in any runtime: with ``--runtime tflite`` the report shows MediaPipe's top-1 both on the gate's
pixels and as an app runs it, resizing the images itself (issue 42).

    python -m benchmarks.ship_digits [--budget 4] [--runtime tflite]
"""

from __future__ import annotations

import argparse

from benchmarks.ship_run import run_and_record
from mobiforge.ship import ShipConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=4.0, help="minutes")
    parser.add_argument("--runtime", default="executorch")
    parser.add_argument("--out", default="/tmp/runs-bench/ship-digits")
    parser.add_argument("--section", help="the RESULTS.md section (default: ship_digits_<budget>m[_<runtime>])")
    args = parser.parse_args()
    config = ShipConfig(data="digits", runtime=args.runtime, time_budget_s=args.budget * 60, out=args.out, threads=1)
    default = f"ship_digits_{args.budget:g}m" + ("" if args.runtime == "executorch" else f"_{args.runtime}")
    section = args.section or default
    run_and_record(
        section,
        f"`mobiforge ship` on digits ({args.budget:g}-minute budget, {args.runtime})",
        config,
        "under 1 MB and 100 ms, within the budget; val top-1 through the runtime at least 99% (issue 43)",
    )


if __name__ == "__main__":
    main()
