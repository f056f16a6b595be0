"""Roofline: how close each zoo family's training step comes to this CPU's measured arithmetic peak (issue 26).

The peak is a large matmul (fp32, and bf16 where the CPU has it natively). For every family at a ship resolution,
the training step (SGD, channels_last, random data, after a warm-up) gives images/s, and 6 x MACs x images/s is the
achieved rate (forward 2 x MACs FLOPs, backward twice that), shown as a fraction of the fp32 peak. Batch-1 eager
inference is timed beside it. Rounds are interleaved across models and the median is kept, so that a noisy
neighbour slows every model alike.

    python -m benchmarks.roofline [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.results import write_section
from mobiforge import create_model
from mobiforge.engine import cpu_has_native_bf16
from mobiforge.profile import count_macs, count_params, measure_latency
from mobiforge.ship.search import step_speed

# (model, kwargs, input side, training batch): the small-image grid at 32 px, and the photo-sized ship candidates
ZOO = [
    ("resnet20", {"small_input": True}, 32, 128),
    ("resnet20", {"small_input": True, "width_mult": 2.0}, 32, 128),
    ("resnet56", {"small_input": True}, 32, 128),
    ("mobilenet_v2", {"small_input": True, "width_mult": 0.5}, 32, 128),
    ("mobilenet_v1", {"small_input": True, "width_mult": 0.5}, 32, 128),
    ("mobilenet_v3_small", {"small_input": True}, 32, 128),
    ("shufflenet_v2_x0_5", {"small_input": True}, 32, 128),
    ("efficientnet_lite0", {}, 224, 32),
    ("mobilenet_v2", {"width_mult": 0.5}, 224, 32),
    ("mobilenet_v1", {"width_mult": 0.5}, 224, 32),
]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    fp32 = matmul_peak(torch.float32)
    bf16 = matmul_peak(torch.bfloat16) if cpu_has_native_bf16() else None
    models = []
    for name, kwargs, side, batch in ZOO:
        model = create_model(name, num_classes=10, **kwargs).train().to(memory_format=torch.channels_last)
        images = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
        macs = count_macs(create_model(name, num_classes=10, **kwargs).eval(), (1, 3, side, side))
        models.append((name, kwargs, side, model, images, macs))
    speeds: dict[int, list[float]] = {index: [] for index in range(len(models))}
    for _ in range(args.rounds):  # interleaved: every model once per round
        for index, (_, _, _, model, images, _) in enumerate(models):
            speeds[index].append(step_speed(model, images, torch.optim.SGD(model.parameters(), lr=1e-3), steps=3))
    rows = []
    for index, (name, kwargs, side, model, _, macs) in enumerate(models):
        speed = statistics.median(speeds[index])
        achieved = 6 * macs * speed / 1e9
        eager = model.eval()
        example = torch.randn(1, 3, side, side).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            latency = measure_latency(lambda eager=eager, example=example: eager(example), min_seconds=0.5)
        rows.append(
            f"| {label(name, kwargs)} | {side} | {count_params(model) / 1e6:.2f}M | {macs / 1e6:.1f}M | "
            f"{speed:.0f} | {achieved:.1f} | {100 * achieved / fp32:.0f}% | {latency.median_ms:.2f} |"
        )
    peak = f"fp32 matmul peak {fp32:.0f} GFLOP/s" + (f", bf16 {bf16:.0f} GFLOP/s" if bf16 else ", no native bf16")
    body = "\n".join([
        "## Roofline: training step against the CPU's arithmetic peak (issue 26)",
        "",
        f"{peak} (2048x2048 matmuls, {torch.get_num_threads()} threads). Training: SGD steps on random data, "
        f"channels_last, median of {args.rounds} interleaved rounds of 3 steps; achieved = 6 x MACs x img/s.",
        "",
        "| model | px | params | MACs | train img/s | achieved GFLOP/s | of fp32 peak | eager batch-1 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Batch-1 inference in each runtime (ExecuTorch, LiteRT, ONNX Runtime) is not in this table yet.",
    ])  # fmt: skip
    print(body)
    write_section("roofline", body)


if __name__ == "__main__":
    main()
