"""How big and how fast is a model: counts, sizes, measured latency, peak memory and budget verdicts.

Everything here is measured on the machine it runs on, never estimated from FLOPs, except the int8 weight size,
which is computed from the parameter shapes (the size of the file an int8 export writes is measured by
``mobiforge export``). Latency uses the faster of the two eager memory layouts (contiguous, channels_last), which
the report states together with the thread count. An exported file (.pte, .tflite, .onnx) is timed in its own
runtime instead (``mobiforge.runtimes.profile_artifact``).
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mobiforge.errors import MobiforgeError


def count_params(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass, counting convolutions and linear layers: each layer's output
    elements times the inputs each one reads, from forward hooks (the same totals as torch's FlopCounterMode, 10x
    faster: ship's search counts about 30 networks before it measures one)."""
    total = 0

    def conv(module: nn.Conv2d, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    def linear(module: nn.Linear, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    hooks = [
        module.register_forward_hook(conv if isinstance(module, nn.Conv2d) else linear)
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def fp32_weight_bytes(model: nn.Module) -> int:
    return sum(param.numel() * 4 for param in model.parameters())


def int8_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights after int8 quantization as mobile runtimes store them.

    Conv/linear weights become one byte each plus a float32 scale and an int32 bias per output channel
    (per-channel symmetric quantization); BatchNorm folds into the preceding conv and costs nothing; any other
    parameter stays float32.
    """
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            total += module.weight.numel() + 8 * module.weight.shape[0]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        else:
            total += sum(param.numel() * 4 for param in module.parameters(recurse=False))
    return total


def serialized_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())``: what a PyTorch checkpoint of the weights takes on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the previous value afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int


def measure_latency(
    fn: Callable[[], Any], warmup: int = 10, min_runs: int = 30, min_seconds: float = 1.0, max_runs: int = 500
) -> LatencyStats:
    """Time ``fn()`` after ``warmup`` calls, for at least ``min_runs`` calls and ``min_seconds``.

    The median is the figure to compare; p90 shows the tail a user feels. Any runtime can be timed this way
    (eager PyTorch here, exported runtimes later), which keeps latency figures comparable across them.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1000.0)
    ordered = sorted(times)
    return LatencyStats(
        median_ms=statistics.median(ordered),
        p90_ms=ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0],
        runs=len(ordered),
    )


def fastest_layout(model: nn.Module, example: torch.Tensor, trial_runs: int = 10) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``, whichever runs this model faster here."""
    best, best_ms = torch.contiguous_format, float("inf")
    for layout in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=layout)
        x = example.contiguous(memory_format=layout)
        with torch.no_grad():
            stats = measure_latency(lambda x=x: model(x), warmup=3, min_runs=trial_runs, min_seconds=0.0)
        if stats.median_ms < best_ms:
            best, best_ms = layout, stats.median_ms
    model.to(memory_format=torch.contiguous_format)
    return best


class _PeakTensorMemory(TorchDispatchMode):
    """Tracks the bytes of tensor storages alive during a forward pass (CPU has no allocator statistics).

    Each op's outputs are counted once per storage and released when their last tensor is freed, so views and
    in-place ops are not double-counted.
    """

    def __init__(self, baseline: int) -> None:
        super().__init__()
        self.current = self.peak = baseline
        self._live: dict[int, list[int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor) and item.device.type != "meta":
                self._track(item)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._live:
            self._live[key][1] += 1
        else:
            self._live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]


def peak_memory_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Peak bytes of live tensors (weights, input and activations) during one inference forward pass."""
    baseline = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers(), example])
    tracker = _PeakTensorMemory(baseline)
    with torch.no_grad(), tracker:
        model(example)
    return tracker.peak


@dataclass
class BudgetCheck:
    name: str
    limit: float
    value: float
    unit: str

    @property
    def passed(self) -> bool:
        return self.value <= self.limit


class Verdicts:
    """``passed`` and ``to_dict`` of a report dataclass with a ``budgets`` list."""

    budgets: list[BudgetCheck]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.budgets)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["budgets"] = [{**asdict(check), "passed": check.passed} for check in self.budgets]
        data["passed"] = self.passed
        return data


@dataclass
class ProfileReport(Verdicts):
    model: str
    img_size: int
    batch_size: int
    threads: int
    layout: str
    params: int
    macs: int
    fp32_weight_bytes: int
    int8_weight_bytes: int
    serialized_bytes: int
    peak_memory_bytes: int
    latency: LatencyStats
    budgets: list[BudgetCheck] = field(default_factory=list)


def budget_checks(
    size_name: str, size: int, max_size: int | None, latency: LatencyStats, max_latency_ms: float | None
) -> list[BudgetCheck]:
    checks = [] if max_size is None else [BudgetCheck(size_name, max_size, size, "bytes")]
    if max_latency_ms is not None:
        checks.append(BudgetCheck("median latency", max_latency_ms, latency.median_ms, "ms"))
    return checks


def profile_model(
    model: nn.Module,
    img_size: int | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    max_size_bytes: int | None = None,
    max_latency_ms: float | None = None,
    name: str | None = None,
    min_seconds: float = 1.0,
) -> ProfileReport:
    """Profile ``model`` at ``img_size`` (default: the model's own input size) on ``threads`` CPU threads.

    ``max_size_bytes`` is checked against the int8 weight size (what ships to a phone), ``max_latency_ms``
    against the median latency at ``batch_size``. Latency is timed for at least ``min_seconds`` (and 30 runs).
    """
    if img_size is None:
        preprocess = getattr(model, "preprocess", None)
        img_size = preprocess.img_size if preprocess is not None else 224
    if img_size < 8 or batch_size < 1:
        raise MobiforgeError(f"--img-size must be >= 8 and --batch-size >= 1, got {img_size} and {batch_size}")
    model = model.eval()
    shape = (batch_size, 3, img_size, img_size)
    example = torch.randn(shape)
    with num_threads(threads):
        used_threads = torch.get_num_threads()
        layout = fastest_layout(model, example)
        model.to(memory_format=layout)
        x = example.contiguous(memory_format=layout)
        with torch.no_grad():
            latency = measure_latency(lambda: model(x), min_seconds=min_seconds)
        model.to(memory_format=torch.contiguous_format)
    return ProfileReport(
        model=name or (model.spec["name"] if getattr(model, "spec", None) else type(model).__name__),
        img_size=img_size,
        batch_size=batch_size,
        threads=used_threads,
        layout="channels_last" if layout == torch.channels_last else "contiguous",
        params=count_params(model),
        macs=count_macs(model, shape),
        fp32_weight_bytes=fp32_weight_bytes(model),
        int8_weight_bytes=int8_weight_bytes(model),
        serialized_bytes=serialized_bytes(model),
        peak_memory_bytes=peak_memory_bytes(model, example),
        latency=latency,
        budgets=budget_checks("int8 weight size", int8_weight_bytes(model), max_size_bytes, latency, max_latency_ms),
    )
