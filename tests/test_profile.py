"""Profiler: counts and sizes are exact, latency statistics are consistent, budgets give verdicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobiforge import create_model
from mobiforge.errors import MobiforgeError
from mobiforge.profile import (
    count_macs,
    int8_weight_bytes,
    measure_latency,
    peak_memory_bytes,
    profile_model,
)
from mobiforge.units import counted, parse_count, parse_duration, parse_size


def test_parse_size_and_duration() -> None:
    assert parse_size("1MB") == 1_000_000
    assert parse_size("1.5 MiB") == int(1.5 * 1024**2)
    assert parse_size("800kb") == 800_000
    assert parse_duration("100ms", "ms", to="ms") == 100.0
    assert parse_duration("0.1s", "ms", to="ms") == 100.0
    assert parse_duration("25", "ms", to="ms") == 25.0
    with pytest.raises(MobiforgeError, match="like 1MB"):
        parse_size("one megabyte")
    with pytest.raises(MobiforgeError, match="like 100ms"):
        parse_duration("100 parsecs", "ms")
    assert parse_duration("45", "m") == 2700 and parse_count("1.5M", "--target-params") == 1_500_000
    with pytest.raises(MobiforgeError, match="--target-macs '150X': write a count like 150M"):
        parse_count("150X", "--target-macs")
    assert [counted(1, "file is", "files are"), counted(1200, "photo")] == ["1 file is", "1,200 photos"]


def test_macs_of_known_layers() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 8 outputs x 3*3*3 MACs x 10*10 positions
    assert count_macs(conv, (1, 3, 10, 10)) == 8 * 27 * 100
    assert count_macs(nn.Linear(16, 4), (2, 16)) == 2 * 16 * 4


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_lite0", "resnet20"])
def test_macs_match_torch_flop_counter(name: str) -> None:
    """The hooks count what torch's FlopCounterMode counts (2 FLOPs per multiply-add), grouped convs included."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(name, num_classes=10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 64, 64))
    assert count_macs(model, (1, 3, 64, 64)) == counter.get_total_flops() // 2


def test_int8_size_folds_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    # conv: 216 int8 weights + 8 channels x (scale + bias); linear: 16 + 2 x 8; BN folds away.
    assert int8_weight_bytes(model) == 216 + 64 + 16 + 16


def test_latency_stats_are_ordered() -> None:
    stats = measure_latency(lambda: sum(range(1000)), warmup=2, min_runs=20, min_seconds=0.0)
    assert stats.runs >= 20
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms


def test_peak_memory_counts_weights_and_activations() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 3, 32, 32)
    weights_and_input = sum(p.numel() * 4 for p in model.parameters()) + x.numel() * 4
    activation = 16 * 32 * 32 * 4  # ReLU is in-place-free here but returns a new tensor of the same size
    peak = peak_memory_bytes(model, x)
    assert weights_and_input + activation <= peak <= weights_and_input + 2 * activation


def test_profile_report_and_budgets() -> None:
    model = create_model("mobilenet_v3_small", num_classes=10, small_input=True)
    report = profile_model(model, threads=1, max_size_bytes=10_000_000, max_latency_ms=0.001)
    assert report.img_size == 32  # the model's own input size
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.fp32_weight_bytes == 4 * report.params
    assert report.int8_weight_bytes < report.fp32_weight_bytes / 3
    assert report.serialized_bytes > report.fp32_weight_bytes
    assert report.threads == 1 and report.layout in {"contiguous", "channels_last"}
    size_check, latency_check = report.budgets
    assert size_check.passed and not latency_check.passed
    assert not report.passed
    data = report.to_dict()
    assert data["passed"] is False and data["budgets"][1]["passed"] is False
    assert data["latency"]["median_ms"] > 0


def test_profile_rejects_nonsense_sizes() -> None:
    with pytest.raises(MobiforgeError, match="--img-size"):
        profile_model(create_model("mobilenet_v3_small"), img_size=2)
