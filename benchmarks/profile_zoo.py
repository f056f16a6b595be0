"""Profile every mobiforge model at 224 px, batch 1, on 1 and 2 CPU threads, next to torchvision's models.

Timing uses the library's own pieces (``fastest_layout``, ``measure_latency``). To keep a noisy, shared 2-core
machine from favouring whichever model ran first, all models are timed in interleaved rounds and each figure is
the median over rounds of the per-round median (and p90). torchvision's MobileNetV2/V3 and ShuffleNetV2 run in
the same rounds, so the two are directly comparable. The table is printed and written to benchmarks/RESULTS.md.

    python -m benchmarks.profile_zoo [--threads 1 2] [--rounds 3] [--min-seconds 1]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torchvision

from benchmarks.results import write_section
from mobiforge import create_model, list_models
from mobiforge.models.torchvision_compat import TORCHVISION_EQUIVALENTS
from mobiforge.profile import count_macs, count_params, fastest_layout, int8_weight_bytes, measure_latency


def time_all(models: dict[str, torch.nn.Module], threads: int, rounds: int, min_seconds: float) -> dict:
    torch.set_num_threads(threads)
    example = torch.randn(1, 3, 224, 224)
    layouts = {name: fastest_layout(model, example, trial_runs=20) for name, model in models.items()}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            model.to(memory_format=layouts[name])
            x = example.contiguous(memory_format=layouts[name])
            with torch.no_grad():
                stats = measure_latency(lambda m=model, x=x: m(x), min_seconds=min_seconds)
            samples[name].append((stats.median_ms, stats.p90_ms))
    return {
        name: (
            statistics.median(s[0] for s in runs),
            statistics.median(s[1] for s in runs),
            "channels_last" if layouts[name] == torch.channels_last else "contiguous",
        )
        for name, runs in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per model per round")
    args = parser.parse_args()

    models = {f"mobiforge {name}": create_model(name).eval() for name in list_models()}
    for name in sorted(set(TORCHVISION_EQUIVALENTS.values())):
        models[f"torchvision {name}"] = torchvision.models.get_model(name, weights=None).eval()
    timings = {threads: time_all(models, threads, args.rounds, args.min_seconds) for threads in args.threads}

    latency_cols = " | ".join(f"{t} thread{'s' if t > 1 else ''}: median / p90 (ms)" for t in args.threads)
    lines = [
        "## Model zoo profile (224 px, batch 1, CPU, eager PyTorch)",
        "",
        "MACs count convolutions and linear layers. int8 weights: per-channel int8 conv/linear weights with a "
        "float scale and int32 bias per channel, BN folded (computed, not exported). Latency: faster of the "
        f"contiguous/channels_last layouts (shown, from the first thread count), median over {args.rounds} "
        "interleaved rounds of each round's median and p90. mobiforge and torchvision models of the same name are "
        "the same architecture, timed in the same rounds.",
        "",
        f"| model | params | MACs | int8 weights | {latency_cols} | layout |",
        "|---|---:|---:|---:|" + "---:|" * len(args.threads) + "---|",
    ]
    for name, model in models.items():
        cells = " | ".join(f"{timings[t][name][0]:.1f} / {timings[t][name][1]:.1f}" for t in args.threads)
        params, macs = count_params(model), count_macs(model, (1, 3, 224, 224))
        line = (
            f"| {name} | {params / 1e6:.2f}M | {macs / 1e6:.0f}M | {int8_weight_bytes(model) / 1e6:.2f} MB | "
            f"{cells} | {timings[args.threads[0]][name][2]} |"
        )
        lines.append(line)
        print(line, flush=True)
    write_section("profile_zoo", "\n".join(lines))


if __name__ == "__main__":
    main()
