"""The trunk's cache pass under torchrun: img/s with 1, 2 and 4 processes (gloo) on one machine, from files, and the
per-process throughput extrapolated on paper to N machines (issue 47).

    python -m benchmarks.torchrun_trunk [--data ../shared/datasets/cifar10] [--images 2000] [--engine onnxruntime-int8]
        [--processes 1,2,4] [--scratch /tmp/torchrun-trunk]

Each configuration starts ``torchrun --nproc-per-node P`` on a fresh cache folder; every rank computes its share of
the chunks of the pooled features of EfficientNet-Lite0 (one eval crop per photo, the pass ship's linear probe
caches), then reads the others' back, as a train run under torchrun does. The engine's preparation (export, int8
calibration) is timed apart from the pass. Each rank gets ``cores // P`` threads (at least 1): the processes share
this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import machine, write_section

CHUNK_BYTES_PER_IMAGE = 1280 * 2  # the pooled features, fp16: what a rank writes per image to the shared folder


def worker(args: argparse.Namespace) -> None:
    """One rank: the engine's preparation (rank 0's choice, then each rank's export and int8 calibration), then the
    cache pass over ``--images`` train photos, each timed between barriers."""
    import torch
    import torch.distributed as dist

    from mobiforge.config import DataConfig
    from mobiforge.data import discover
    from mobiforge.data.transforms import preprocess_for
    from mobiforge.doctor.features import PRETRAINED_TRUNK
    from mobiforge.models import create_model
    from mobiforge.models.weights import get_weights
    from mobiforge.progress import SilentReporter
    from mobiforge.transfer import cached_activations, cut_index, plan_cache, trunk_pass_for

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    weights = get_weights(PRETRAINED_TRUNK).preprocess
    data = DataConfig(data=args.data).resolved(weights)
    preprocess = preprocess_for(data, weights)
    model = create_model(PRETRAINED_TRUNK, pretrained=True).eval()
    cut, cache = cut_index(model, 0), Path(args.cache)
    splits = discover(data)
    train = splits.train[:: max(1, len(splits.train) // args.images)][: args.images]
    dist.barrier()
    started = time.perf_counter()
    trunk_pass, digest = trunk_pass_for(model, cut, preprocess, args.engine, "auto", len(train), cache, train)
    trunk_pass.run(torch.zeros(1, 3, preprocess.img_size, preprocess.img_size))  # built on its first call
    dist.barrier()
    prepared = time.perf_counter()
    plan = plan_cache(model, cut, preprocess, data, 1, 0, train, cache, 0, trunk_pass.dtype, digest)
    cached_activations(model, cut, train, plan, cache, "train", 0, SilentReporter(), trunk_pass)
    dist.barrier()
    passed = time.perf_counter()
    if rank == 0:
        result = {"prepare": prepared - started, "seconds": passed - prepared, "images": len(train), "processes": world}
        Path(args.result).write_text(json.dumps(result))
    dist.destroy_process_group()


def run(args: argparse.Namespace, processes: int) -> dict[str, float]:
    """``torchrun`` with ``processes`` ranks on a fresh cache; its wall time from launch as well as the pass's."""
    folder = Path(args.scratch) / f"p{processes}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is not installed beside this Python"
    command = [torchrun, "--standalone", "--nproc-per-node", str(processes), "-m", "benchmarks.torchrun_trunk",
               "--worker", "--data", args.data, "--images", str(args.images), "--engine", args.engine,
               "--cache", str(folder / "cache"), "--result", str(folder / "result.json")]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    result = json.loads((folder / "result.json").read_text())
    result["wall"] = wall
    result["img_s"] = result["images"] / result["seconds"]
    print(f"torchrun trunk: {processes} processes: {result['img_s']:.0f} img/s", flush=True)
    return result


def body(args: argparse.Namespace, results: list[dict[str, float]]) -> str:
    cores = machine().get("cores") or os.cpu_count()
    single = results[0]["img_s"]
    lines = [
        "## The trunk's cache pass under torchrun: 1, 2 and 4 processes on one machine",
        "",
        f"EfficientNet-Lite0's pooled features of {args.images:,} photos of `{Path(args.data).name}` (one eval crop "
        f"each, decode included, `--trunk-engine {args.engine}`) into a fresh cache shared by the ranks, gloo, "
        f"{cores} cores: each rank gets cores / processes threads (at least 1).",
        "",
        "| processes | threads each | engine ready | pass | img/s | per process | vs 1 process | launch to exit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        processes = int(result["processes"])
        lines.append(
            f"| {processes} | {max(1, int(cores) // processes)} | {result['prepare']:.1f} s | "
            f"{result['seconds']:.1f} s | {result['img_s']:.0f} | "
            f"{result['img_s'] / processes:.0f} | {result['img_s'] / single:.2f}x | {result['wall']:.1f} s |"
        )
    lines += [
        "",
        f"On paper, N machines like this one, each running the pass on all its cores: N x {single:.0f} img/s, as "
        f"long as the shared folder takes N x {single * CHUNK_BYTES_PER_IMAGE / 1e6:.1f} MB/s of chunk writes "
        f"(pooled features, {CHUNK_BYTES_PER_IMAGE} bytes per image in fp16; a cached tail's activations are larger) "
        "and every rank reads the photos at its own speed. What stays serial: rank 0's engine choice (and an int8 "
        "trunk's calibration) before the pass, each rank's own export and calibration (engine ready: it grows with "
        "the processes sharing the cores), and reading every chunk back after it.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--engine", default="onnxruntime-int8", help="the trunk engine (--trunk-engine)")
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--scratch", default="/tmp/torchrun-trunk")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = [run(args, int(p)) for p in args.processes.split(",")]
    write_section(f"torchrun_trunk_{Path(args.data).name}", body(args, results), {"runs": results})


if __name__ == "__main__":
    main()
