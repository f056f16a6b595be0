"""`ship` under torchrun beside `ship` in one process: the same folder and budget, side by side (issue 47).

    python -m benchmarks.torchrun_ship [--data ../shared/datasets/hymenoptera] [--budget 10m] [--processes 2]
        [--scratch /tmp/torchrun-ship]

Runs ``torchrun --standalone --nproc-per-node P -m mobiforge ship`` (gloo; each rank gets cores / P threads for the
passes it shares, rank 0 every core while it works alone), then the same command in one process, each into a fresh
folder. Records what each shipped, their time, the trunk passes each rank computed, and compares the feature caches:
every chunk both runs wrote under the same key (the same trunk, crops, photos and view) must hold the same rows and
the same features.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.results import machine, write_section
from benchmarks.ship_run import card_figures

RANK_PASSES = re.compile(r"(\d+) trunk passes computed \([^;)]*; (\d+) on this rank of (\d+)\)")


def ship_command(args: argparse.Namespace, out: Path) -> list[str]:
    return ["-m", "mobiforge", "ship", "--data", args.data, "--out", str(out), "--time-budget", args.budget]


def run(args: argparse.Namespace, name: str, launcher: list[str]) -> dict:
    """One ship run into ``scratch/name``: its card's figures, wall time and the passes rank 0 computed."""
    out = Path(args.scratch) / name
    shutil.rmtree(out, ignore_errors=True)
    log = Path(args.scratch) / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as stream:
        code = subprocess.run([*launcher, *ship_command(args, out)], stdout=stream, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    text = log.read_text()
    shared = [(int(total), int(mine)) for total, mine, _ in RANK_PASSES.findall(re.sub(r"\s*\n", " ", text))]
    card_path = out / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else None
    result = {"name": name, "exit": code, "wall_s": wall, **card_figures(card)}
    if shared:
        result["passes_total"] = sum(total for total, _ in shared)
        result["passes_rank0"] = sum(mine for _, mine in shared)
    print(f"torchrun ship: {name}: exit {code}, {wall:.0f} s, {result.get('top1_runtime')}", flush=True)
    return result


def compare_caches(ranks: Path, alone: Path) -> dict:
    """The chunks both runs wrote under one name (one key): are their rows and features the same?"""
    shared = {path.name for path in ranks.glob("*.pt")}
    single = {path.name for path in alone.glob("*.pt")}
    both = sorted(shared & single)
    rows_equal, worst, identical = True, 0.0, 0
    for name in both:
        one = torch.load(alone / name, weights_only=True)
        two = torch.load(ranks / name, weights_only=True)
        rows_equal &= torch.equal(one["rows"], two["rows"])
        difference = (one["features"].float() - two["features"].float()).abs().max().item()
        worst, identical = max(worst, difference), identical + (difference == 0)
    return {"chunks_ranks": len(shared), "chunks_alone": len(single), "chunks_both": len(both),
            "rows_equal": rows_equal, "max_abs_difference": worst, "identical_chunks": identical}  # fmt: skip


def body(args: argparse.Namespace, runs: list[dict], caches: dict) -> str:
    cores = machine().get("cores") or os.cpu_count()
    lines = [
        f"## `ship` under torchrun ({args.processes} processes, gloo) beside one process: `{Path(args.data).name}`",
        "",
        f"The same folder and `--time-budget {args.budget}`, one run after the other on this machine ({cores} cores; "
        f"each rank gets cores / {args.processes} threads for the passes it shares, rank 0 every core while it works "
        "alone).",
        "",
        "| run | exit | shipped | top-1 in runtime | size | latency | time used | wall | trunk passes (rank 0's) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in runs:
        shipped = result.get("candidate", "-") if result.get("shipped") else "nothing"
        top1 = f"{result['top1_runtime']:.2f}%" if result.get("top1_runtime") is not None else "-"
        size = f"{result['bytes'] / 1e6:.2f} MB" if result.get("bytes") else "-"
        latency = f"{result['latency_ms']:.2f} ms" if result.get("latency_ms") else "-"
        used = f"{result['time_used_s']:.0f} s" if result.get("time_used_s") else "-"
        passes = f"{result['passes_total']:,} ({result['passes_rank0']:,})" if "passes_total" in result else "-"
        lines.append(
            f"| {result['name']} | {result['exit']} | {shipped} | {top1} | {size} | {latency} | {used} | "
            f"{result['wall_s']:.0f} s | {passes} |"
        )
    lines += [
        "",
        f"Feature caches: {caches['chunks_both']} chunks were written under the same key by both runs (of "
        f"{caches['chunks_ranks']} under torchrun and {caches['chunks_alone']} in one process); rows "
        f"{'equal' if caches['rows_equal'] else 'DIFFERENT'} in all, features identical in "
        f"{caches['identical_chunks']}, largest difference {caches['max_abs_difference']:.2g}."
        + (
            " Chunks under other keys come from plans that differ between the runs (the rungs, views and students "
            "each run's clock chose)."
            if caches["chunks_both"] < max(caches["chunks_ranks"], caches["chunks_alone"])
            else ""
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/hymenoptera"))
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--scratch", default="/tmp/torchrun-ship")
    args = parser.parse_args()
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is not installed beside this Python"
    runs = [
        run(args, "torchrun", [torchrun, "--standalone", "--nproc-per-node", str(args.processes)]),
        run(args, "single", [sys.executable]),
    ]
    scratch = Path(args.scratch)
    caches = compare_caches(scratch / "torchrun" / "cache", scratch / "single" / "cache")
    write_section(f"torchrun_ship_{Path(args.data).name}", body(args, runs, caches), {"runs": runs, "caches": caches})


if __name__ == "__main__":
    main()
