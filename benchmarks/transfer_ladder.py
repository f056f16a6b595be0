"""The first rungs of the transfer ladder on a photo folder (default: hymenoptera), with EfficientNet-Lite0's
ImageNet weights: a linear probe and a tail fine-tune on cached trunk outputs (``train --trainable-blocks``), each
timed end to end (feature cache included) with its val top-1, and the tail rung again from its cache memory-mapped
(as a cache larger than memory is read), for its tail-step throughput; the training throughput of the cached tail step
against full fine-tuning of the same model at the same resolution, and the cache pass on each trunk engine (eager
fp32, eager bf16, ONNX Runtime fp32), each side by side in interleaved rounds.

    python -m benchmarks.transfer_ladder [--data ../shared/datasets/hymenoptera] [--runs-dir runs/ladder]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from benchmarks.results import write_section
from mobiforge import create_model
from mobiforge.data import DataConfig
from mobiforge.engine import OptimConfig, cpu_has_native_bf16
from mobiforge.progress import SilentReporter
from mobiforge.train import TrainConfig, train
from mobiforge.transfer import Tail, TrunkModule, cut_index, trunk_output
from mobiforge.trunk import eager_pass, onnxruntime_pass

MODEL = "efficientnet_lite0"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


class Log(SilentReporter):
    def message(self, text: str) -> None:
        print(text, flush=True)


def rung(
    data: str, runs_dir: str, name: str, blocks: int, views: int, epochs: int, lr: float, mapped: bool = False
) -> dict:
    """One rung end to end. Tail rungs share a cache folder: the memory-mapped run reads the in-memory one's trunk
    passes back."""
    config = TrainConfig(
        model=MODEL,
        pretrained=True,
        trainable_blocks=blocks,
        views=views,
        data=DataConfig(data=data, batch_size=64),
        optim=OptimConfig(optimizer="adamw", lr=lr, scheduler="cosine", weight_decay=1e-4, label_smoothing=0.1),
        epochs=epochs,
        runs_dir=runs_dir,
        name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tensorboard=False,
        cache_dir=f"{runs_dir}/cache-{blocks}-blocks",
    )
    started = time.time()
    # a memory budget of one byte: every cache is larger, so its chunks are memory-mapped, not read in
    with mock.patch("mobiforge.transfer.memory_budget", lambda: 1) if mapped else nullcontext():
        result = train(config, Log())
    trainable = sum(p.numel() for p in Tail(create_model(MODEL, num_classes=2), cut_index(
        create_model(MODEL, num_classes=2), blocks)).parameters())  # fmt: skip
    print(f"{name}: val top-1 {result.history[-1]['val_top1']:.2f}% in {time.time() - started:.0f} s", flush=True)
    return {
        "rung": name,
        "trainable": trainable,
        "seconds": time.time() - started,
        "top1": result.history[-1]["val_top1"],
        "best": result.best_top1,
        "tail_speed": statistics.median(row["images_per_second"] for row in result.history),
    }


def throughput(blocks: int, batch: int, rounds: int) -> dict[str, float]:
    """Training images per second: a step of the tail on cached outputs vs a step of the whole network."""
    model = create_model(MODEL, num_classes=2).to(memory_format=torch.channels_last)
    cut = cut_index(model, blocks)
    images = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    targets = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():  # a normal tensor: the tail's backward may save it
        cached = trunk_output(model.eval(), cut, images)
    full, tail_model = copy.deepcopy(model).train(), copy.deepcopy(model)
    tail = Tail(tail_model, cut).train()
    steps = {
        "full fine-tuning": (full, images, False),
        f"cached tail (last {blocks} blocks)": (tail, cached.float(), False),
    }
    if cpu_has_native_bf16():  # the tail trains in fp32: this column says whether bf16 autocast would pay
        steps[f"cached tail (last {blocks} blocks), bf16 autocast"] = (copy.deepcopy(tail), cached.float(), True)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, (m, _, _) in steps.items()}
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds + 1):
        for name, (module, inputs, bf16) in steps.items():
            started = time.perf_counter()
            optimizers[name].zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(module(inputs), targets)
            loss.backward()
            optimizers[name].step()
            if round_index:  # the first round warms up
                samples[name].append(batch / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in samples.items()}


def trunk_pass(batch: int, rounds: int) -> dict[str, float]:
    """Images per second of the frozen trunk's cache pass (the whole network's pooled features) on each engine of
    ``mobiforge.trunk``: eager fp32 and bf16 autocast (inference mode, channels_last) and the trunk exported to ONNX
    Runtime (fp32), interleaved; with the largest difference of each from eager fp32's features."""
    model = create_model(MODEL, pretrained=True, num_classes=2).eval().to(memory_format=torch.channels_last)
    trunk = TrunkModule(model, None).eval()
    passes = {"eager fp32": eager_pass(trunk, None), "eager bf16": eager_pass(trunk, torch.bfloat16)}
    passes["onnxruntime fp32"] = onnxruntime_pass(trunk, 224)
    images = torch.randn(batch, 3, 224, 224)
    samples: dict[str, list[float]] = {name: [] for name in passes}
    outputs: dict[str, torch.Tensor] = {}
    for round_index in range(rounds + 1):  # round 0 warms up (and exports the ONNX trunk)
        for name, engine in passes.items():
            started = time.perf_counter()
            outputs[name] = engine.run(images)
            if round_index:
                samples[name].append(batch / (time.perf_counter() - started))
    speeds = {name: statistics.median(values) for name, values in samples.items()}
    for name in ("eager bf16", "onnxruntime fp32"):
        speeds[f"{name} max_abs_diff"] = float((outputs["eager fp32"] - outputs[name]).abs().max())
    speeds["mean_abs"] = float(outputs["eager fp32"].abs().mean())
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--runs-dir", default="runs/ladder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--section", default="transfer_ladder_hymenoptera")
    args = parser.parse_args()

    rungs = [
        rung(args.data, args.runs_dir, "linear probe", 0, views=2, epochs=30, lr=3e-3),
        rung(args.data, args.runs_dir, "tail: last 3 blocks", 3, views=4, epochs=15, lr=1e-3),
        rung(args.data, args.runs_dir, "tail: last 3 blocks (mmap)", 3, views=4, epochs=15, lr=1e-3, mapped=True),
    ]
    speed = throughput(blocks=3, batch=32, rounds=args.rounds)
    trunk = trunk_pass(batch=32, rounds=args.rounds)
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16 (emulated)"
    names = list(speed)
    lines = [
        f"## Transfer ladder: cached frozen trunk, EfficientNet-Lite0 ImageNet weights ({Path(args.data).name})",
        "",
        "Each rung is `train --pretrained --trainable-blocks N` end to end: the feature cache (the frozen trunk run",
        "once per image and view) and the tail's epochs. Val top-1 of the last epoch and of the best; the tail's",
        "training img/s (median epoch). The memory-mapped row is the row above again, its cache read from the chunk",
        "files memory-mapped (what a cache larger than the memory budget gets), its trunk passes read back; the",
        "files sit in the page cache here, so it measures the batch gathers, not the disk.",
        "",
        "| rung | trainable params | time (s) | val top-1 (last) | val top-1 (best) | tail img/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['rung']} | {r['trainable'] / 1e6:.3f}M | {r['seconds']:.0f} | {r['top1']:.2f}% | {r['best']:.2f}% "
        f"| {r['tail_speed']:.0f} |"
        for r in rungs
    ]
    lines += [
        "",
        f"Training throughput at 224 px, batch 32, median of {args.rounds} interleaved steps: "
        + ", ".join(f"{name} {speed[name]:.0f} img/s" for name in names)
        + f"; the cached tail step is {speed[names[1]] / speed[names[0]]:.1f}x faster.",
        "",
        f"The cache pass on each trunk engine (the whole trunk, batch 32, median of {args.rounds} interleaved rounds; "
        f"this CPU: {native}): "
        + ", ".join(f"{name} {trunk[name]:.0f} img/s" for name in ("eager fp32", "eager bf16", "onnxruntime fp32"))
        + f" ({trunk['onnxruntime fp32'] / max(trunk['eager fp32'], trunk['eager bf16']):.2f}x the faster eager "
        f"pass). Pooled features differ from eager fp32's by at most {trunk['eager bf16 max_abs_diff']:.3f} in bf16 "
        f"and {trunk['onnxruntime fp32 max_abs_diff']:.5f} in ONNX Runtime (mean magnitude {trunk['mean_abs']:.3f}) "
        "on random inputs. `--trunk-engine auto` times the engines itself before a long cache pass; eager runs "
        "bf16 only where the CPU has it natively.",
    ]
    print("\n".join(lines))
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
