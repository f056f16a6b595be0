"""Batch-1 latency of exported files in their own runtimes, timed in the same run with interleaved rounds.

`mobiforge export` times each artifact when it writes it, so two rows of an export table can come from different
hours on a shared machine. This script times already-exported files side by side (`mobiforge profile FILE` per
file and thread count, round after round, so that a slow spell of the machine hits every file alike) and reports
the median over rounds of each file's median latency, and its change against the first file of the same runtime
(list the fp32 file of each runtime first to compare int8 against fp32).

    python -m benchmarks.artifact_latency runs/NAME/export/best-fp32.pte runs/NAME/export/best-ptq.pte \
        runs/NAME/export/best-qat.pte --threads 1 2 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.runtimes import profile_artifact, runtime_of


def interleaved_medians(paths: list[Path], threads: list[int], rounds: int, seconds: float) -> dict:
    """``{(path, threads): [median ms of each round]}``; every round times every file at every thread count."""
    medians: dict[tuple[Path, int], list[float]] = {(path, n): [] for path in paths for n in threads}
    for round_index in range(rounds):
        for n in threads:
            for path in paths:
                report = profile_artifact(path, threads=n, min_seconds=seconds)
                medians[path, n].append(report.latency.median_ms)
        print(f"round {round_index + 1}/{rounds} done", flush=True)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path, nargs="+", help=".pte / .tflite / .onnx files")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per file, thread count and round")
    parser.add_argument("--section", default="artifact_latency")
    parser.add_argument("--title", default="Exported files timed side by side")
    args = parser.parse_args()
    medians = interleaved_medians(args.artifacts, args.threads, args.rounds, args.seconds)
    runtimes = {path: runtime_of(path) for path in args.artifacts}
    reference = {}  # the first file of each runtime
    for path in args.artifacts:
        reference.setdefault(runtimes[path], path)
    header = " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in args.threads)
    lines = [
        f"## {args.title}",
        "",
        f"Batch 1, median over {args.rounds} interleaved rounds of each file's median latency (per file, thread "
        f"count and round: `mobiforge profile FILE --threads N`, 10 warm-up runs, then at least 30 runs and "
        f"{args.seconds:g} s, at most 500 runs). In brackets: the change against the first file of the same runtime.",
        "",
        f"| file | runtime | size | {header} |",
        "|---|---|---:|" + "---:|" * len(args.threads),
    ]
    for path in args.artifacts:
        cells = []
        for n in args.threads:
            value, base = statistics.median(medians[path, n]), statistics.median(medians[reference[runtimes[path]], n])
            cells.append(f"{value:.3f} ms ({100 * (value / base - 1):+.1f}%)")
        size = path.stat().st_size / 1e6
        lines.append(f"| `{path.name}` | {runtimes[path]} | {size:.2f} MB | {' | '.join(cells)} |")
    lines += ["", f"Files: `{args.artifacts[0].parent}`."]
    body = "\n".join(lines)
    print(body)
    write_section(args.section, body)


if __name__ == "__main__":
    main()
