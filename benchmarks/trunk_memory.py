"""The memory of the cache's trunk pass, from files: resident memory while ``transfer.cached_activations`` runs ONNX
Runtime over a folder with each next batch decoded on a thread (``DECODE_AHEAD``): with glibc as it comes; with the
freed pages given back after each chunk (``transfer.release_freed_memory``, what the cache does); with a fixed mmap
threshold; with one malloc arena; and with the decode in line. Each configuration runs in a fresh process (glibc's
settings are process-wide).

    python -m benchmarks.trunk_memory --data /tmp/battery/data/cifar224-all --images 10000 --scratch /tmp/trunk-memory
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.doctor_speed import linked_folder
from benchmarks.results import write_section

CONFIGS = {  # name -> (decode ahead, how the heap is bounded: "" as glibc comes, "trim", "threshold", "one arena")
    "before: decode ahead, glibc as it comes": (True, ""),
    "after: decode ahead, freed pages given back after each chunk (malloc_trim)": (True, "trim"),
    "decode ahead, fixed mmap threshold": (True, "threshold"),
    "decode ahead, one malloc arena": (True, "one arena"),
    "decode in line": (False, "trim"),
}
M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 128 * 1024  # glibc's default, before its dynamic adjustment
TRAINABLE_BLOCKS = 9  # the cut of the battery's large-folder student: rows of 80 x 14 x 14 at 224 px
SAMPLE_SECONDS = 1.0


def resident_gb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1e6
    return 0.0


def child(data: Path, scratch: Path, name: str) -> dict[str, Any]:
    """One configuration's pass over ``data``'s train photos, one view, into a fresh cache."""
    import torch

    import mobiforge.transfer as transfer
    from mobiforge.config import PRETRAINED_TRUNK, DataConfig
    from mobiforge.data import discover
    from mobiforge.data.transforms import preprocess_for
    from mobiforge.models import create_model
    from mobiforge.models.weights import get_weights
    from mobiforge.progress import SilentReporter

    ahead, bound = CONFIGS[name]
    transfer.DECODE_AHEAD = ahead
    if bound != "trim":
        transfer.release_freed_memory = lambda: False  # type: ignore[assignment]
    if bound == "one arena":
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
    if bound == "threshold":
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    samples = discover(DataConfig(data=str(data))).train
    weights = get_weights(PRETRAINED_TRUNK).preprocess
    config = DataConfig(data=str(data)).resolved(weights)
    preprocess = preprocess_for(config, weights)
    model = create_model(PRETRAINED_TRUNK, pretrained=True).eval()
    cut = transfer.cut_index(model, TRAINABLE_BLOCKS)
    folder = scratch / "cache"
    shutil.rmtree(folder, ignore_errors=True)
    trunk_pass, digest = transfer.trunk_pass_for(model, cut, preprocess, "onnxruntime", "auto", len(samples), folder,
                                                 samples)  # fmt: skip
    plan = transfer.plan_cache(model, cut, preprocess, config, 1, 0, samples, folder, 0, trunk_pass.dtype, digest)
    plan.mapped = True  # the rows on disk: what remains in memory is the pass's own
    trunk_pass.run(torch.zeros(2, 3, preprocess.img_size, preprocess.img_size))  # export: not timed
    samples_gb: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(SAMPLE_SECONDS):
            samples_gb.append(resident_gb())

    start_gb = resident_gb()
    threading.Thread(target=watch, daemon=True).start()
    started = time.perf_counter()
    transfer.cached_activations(model, cut, samples, plan, folder, "bench", 0, SilentReporter(), trunk_pass)
    seconds = time.perf_counter() - started
    done.set()
    end_gb = resident_gb()
    return {
        "images": len(samples), "seconds": seconds, "images_per_second": len(samples) / seconds,
        "start_gb": start_gb, "peak_gb": max([end_gb, *samples_gb]), "end_gb": end_gb,
        "growth_kb_per_image": 1e6 * (end_gb - start_gb) / len(samples), "trunk": trunk_pass.label,
        "row_kb": plan.bytes / plan.images / 1e3 if plan.images else 0.0,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a split folder (train/ and val/)")
    parser.add_argument("--images", type=int, default=10_000, help="link this many of its files")
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scratch = Path(args.scratch)
    if args.child:
        print(json.dumps(child(scratch / "data", scratch, args.child)))
        return
    shutil.rmtree(scratch, ignore_errors=True)
    linked_folder(Path(args.data), args.images, scratch / "data")
    results = {}
    for name in CONFIGS:
        command = [sys.executable, "-m", "benchmarks.trunk_memory", "--data", args.data, "--scratch", str(scratch),
                   "--child", name]  # fmt: skip
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    first = next(iter(results.values()))
    lines = [
        "## Trunk pass memory: the decode thread and glibc's heap",
        "",
        f"`transfer.cached_activations` over {first['images']} train photos of {Path(args.data).name} (linked), one "
        f"eval crop each, through EfficientNet-Lite0 up to its last {TRAINABLE_BLOCKS} blocks (the cut of the "
        f"battery's large-folder student, rows of {first['row_kb']:.0f} KB) by {first['trunk']}, the rows "
        "memory-mapped from disk: resident memory before the pass, at its peak (sampled each second) and after it. "
        "Each configuration runs in a fresh process.",
        "",
        "| configuration | img/s, decode included | resident before | peak | after | growth per image |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {r['images_per_second']:.0f} | {r['start_gb']:.2f} GB | {r['peak_gb']:.2f} GB | "
            f"{r['end_gb']:.2f} GB | {r['growth_kb_per_image']:.0f} KB |"
            for name, r in results.items()
        ),
    ]
    write_section("trunk_pass_memory", "\n".join(lines), {"results": results})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
