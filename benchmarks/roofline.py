"""Roofline: how close each zoo family's training step comes to this CPU's measured arithmetic peak (issue 26).

The peak is a large matmul (fp32, and bf16 where the CPU has it natively). For every family at a ship resolution,
the training step (SGD, channels_last, random data, after a warm-up) gives images/s, in fp32 and, where native,
under bf16 autocast; 6 x MACs x images/s is the achieved rate (forward 2 x MACs FLOPs, backward twice that), shown
as a fraction of the peak. Batch-1 inference is timed beside it: eager fp32, and the int8 file ship would write in
each runtime, timed there with one thread (the search's own measurement). Training rounds are interleaved across
models and the median is kept, so that a noisy neighbour slows every model alike.

    python -m benchmarks.roofline [--rounds 3] [--runtimes executorch,tflite,onnx]
        [--models convpool_s,resnet20 --section roofline_small]  (some rows, with their own peak, in their own section)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results import write_section
from mobiforge import create_model
from mobiforge.config import ShipConfig
from mobiforge.engine import cpu_has_native_bf16
from mobiforge.errors import MobiforgeError
from mobiforge.profile import count_macs, count_params, measure_latency
from mobiforge.ship.probes import step_speed
from mobiforge.ship.search import measure_candidate
from mobiforge.ship.state import Candidate

# (model, kwargs, input side, training batch): the small-image grid at 32 px, and the photo-sized ship candidates
ZOO = [
    ("convpool_s", {"small_input": True}, 32, 128),
    ("convpool_m", {"small_input": True}, 32, 128),
    ("resnet20", {"small_input": True}, 32, 128),
    ("resnet32", {"small_input": True}, 32, 128),
    ("resnet56", {"small_input": True}, 32, 128),
    ("resnet20", {"small_input": True, "width_mult": 2.0}, 32, 128),
    ("mobilenet_seed", {"small_input": True}, 32, 128),
    ("mobilenet_v2", {"small_input": True, "width_mult": 0.5}, 32, 128),
    ("mobilenet_v1", {"small_input": True, "width_mult": 0.5}, 32, 128),
    ("mobilenet_v3_small", {"small_input": True}, 32, 128),
    ("shufflenet_v2_x0_5", {"small_input": True}, 32, 128),
    ("efficientnet_lite0", {}, 224, 32),
    ("mobilenet_v3_large", {"width_mult": 0.75}, 224, 32),
    ("mobilenet_v2", {"width_mult": 0.5}, 224, 32),
    ("mobilenet_v1", {"width_mult": 0.5}, 224, 32),
]
RUNTIMES = ("executorch", "tflite", "onnx")


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of repeated size x size matmuls."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def label(name: str, kwargs: dict) -> str:
    width = kwargs.get("width_mult")
    return f"{name}" + (f" x{width:g}" if width else "")


def runtime_latency(model: torch.nn.Module, name: str, side: int, runtime: str, folder: Path) -> str:
    """Median batch-1 ms of the int8 file ship would write for ``runtime``, timed there with one thread."""
    candidate = Candidate(name, name, None, side, "scratch", train_images_per_s=1.0)  # speed known: no probe
    try:
        measure_candidate(model, candidate, ShipConfig(data="-", runtime=runtime, threads=1), folder)
    except (MobiforgeError, RuntimeError) as error:
        print(f"{name} in {runtime}: {error}", flush=True)
        return "failed"
    return f"{candidate.latency_ms:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated; '' for none")
    parser.add_argument("--models", default="", help="comma-separated zoo names (every row of those models); '': all")
    parser.add_argument("--section", default="roofline", help="RESULTS.md section")
    args = parser.parse_args()
    chosen = [name for name in args.models.split(",") if name]
    runtimes = [name for name in args.runtimes.split(",") if name]
    torch.manual_seed(0)
    fp32 = matmul_peak(torch.float32)
    bf16 = matmul_peak(torch.bfloat16) if cpu_has_native_bf16() else None
    models = []
    for name, kwargs, side, batch in ZOO:
        if chosen and name not in chosen:
            continue
        model = create_model(name, num_classes=10, **kwargs).train().to(memory_format=torch.channels_last)
        images = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
        macs = count_macs(create_model(name, num_classes=10, **kwargs).eval(), (1, 3, side, side))
        models.append((name, kwargs, side, model, images, macs))
    dtypes = [None, torch.bfloat16] if bf16 else [None]
    speeds: dict[tuple[int, object], list[float]] = {(i, d): [] for i in range(len(models)) for d in dtypes}
    for _ in range(args.rounds):  # interleaved: every model once per round
        for index, (_, _, _, model, images, _) in enumerate(models):
            for dtype in dtypes:
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
                speeds[(index, dtype)].append(step_speed(model, images, optimizer, steps=3, amp=dtype))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, kwargs, side, model, _, macs) in enumerate(models):
            speed = statistics.median(speeds[(index, None)])
            achieved = 6 * macs * speed / 1e9
            cells = [f"{speed:.0f}", f"{achieved:.1f}", f"{100 * achieved / fp32:.0f}%"]
            if bf16:
                fast = statistics.median(speeds[(index, torch.bfloat16)])
                cells += [f"{fast:.0f}", f"{100 * 6 * macs * fast / 1e9 / bf16:.0f}%"]
            eager = model.eval()
            example = torch.randn(1, 3, side, side).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                latency = measure_latency(lambda eager=eager, example=example: eager(example), min_seconds=0.5)
            cells.append(f"{latency.median_ms:.2f}")
            fresh = create_model(name, num_classes=10, **kwargs)  # contiguous weights, as ship exports them
            cells += [runtime_latency(fresh, label(name, kwargs), side, rt, Path(folder)) for rt in runtimes]
            head = f"| {label(name, kwargs)} | {side} | {count_params(model) / 1e6:.2f}M | {macs / 1e6:.1f}M | "
            rows.append(head + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    peak = f"fp32 matmul peak {fp32:.0f} GFLOP/s" + (f", bf16 {bf16:.0f} GFLOP/s" if bf16 else ", no native bf16")
    header = ["model", "px", "params", "MACs", "train img/s fp32", "achieved GFLOP/s", "of fp32 peak"]
    header += ["train img/s bf16", "of bf16 peak"] if bf16 else []
    header += ["eager fp32 batch-1 ms", *(f"{rt} int8 ms" for rt in runtimes)]
    rows_named = f": {', '.join(chosen)}" if chosen else ""
    body = "\n".join([
        f"## Roofline: training step against the CPU's arithmetic peak (issue 26){rows_named}",
        "",
        f"{peak} (2048x2048 matmuls, {torch.get_num_threads()} threads). Training: SGD steps on random data, "
        f"batch 128 at 32 px and 32 at 224 px, channels_last, median of {args.rounds} interleaved rounds of 3 "
        "steps; achieved = 6 x MACs x img/s. Inference: batch 1; the runtime columns time the int8 file ship "
        "writes for that runtime (PT2E / its quantizer, uint8 pixels in for LiteRT) with 1 thread.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *rows,
    ])  # fmt: skip
    print(body)
    write_section(args.section, body)


if __name__ == "__main__":
    main()
