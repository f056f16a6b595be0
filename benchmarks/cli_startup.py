"""How fast the ``mobiforge`` command answers ``--help`` and ``--version``, next to importing the model zoo (torch
included), which is what ``mobiforge --help`` paid before the package init became lazy (2026-12-01).

Each command runs in a fresh Python process, in interleaved rounds; the figure is the median wall time.

    python -m benchmarks.cli_startup [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from benchmarks.results import write_section

COMMANDS = {
    "mobiforge --help": [sys.executable, "-m", "mobiforge", "--help"],
    "mobiforge --version": [sys.executable, "-m", "mobiforge", "--version"],
    "mobiforge train --help": [sys.executable, "-m", "mobiforge", "train", "--help"],
    "python -c 'import mobiforge.models' (torch + the zoo)": [sys.executable, "-c", "import mobiforge.models"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            samples[name].append(time.perf_counter() - started)
    lines = [
        "## Command-line start-up",
        "",
        f"Wall time of each command in a fresh process, median of {args.rounds} interleaved rounds.",
        "",
        "| command | median (s) | min (s) |",
        "|---|---:|---:|",
    ]
    for name, values in samples.items():
        lines.append(f"| `{name}` | {statistics.median(values):.3f} | {min(values):.3f} |")
    print("\n".join(lines))
    write_section("cli_startup", "\n".join(lines))


if __name__ == "__main__":
    main()
