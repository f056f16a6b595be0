"""Speed probes: how fast a network trains and infers on this machine, timed on random data in a few steps, and
the precision each scratch candidate trains in. The search and the ladder plan from these; scratch candidates'
speeds are kept in the machine's speed cache (``ship.speeds``) for the next run."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from mobiforge.config import ShipConfig
from mobiforge.engine import autocast, cpu_has_native_bf16
from mobiforge.ship import speeds
from mobiforge.ship.plan import batch_size
from mobiforge.ship.policy import BF16_GAIN
from mobiforge.ship.state import Candidate


def probe_training(model: nn.Module, candidate: Candidate, config: ShipConfig, until: float | None = None) -> None:
    """The candidate's training speed, and bf16 autocast for it where the CPU runs bf16 natively and the probe
    measures it BF16_GAIN faster (from scratch only: 2x for ResNet-20 at 32 px on an AVX512-BF16 EPYC, no gain for
    MobileNetV2 on a Xeon with AMX; ``engine.resolve_amp``). Pretrained candidates keep fp32 weights' precision.
    A scratch candidate's speeds are kept in the machine's speed cache (``speeds``) for the next search. Probes
    that must end by ``until`` take fewer steps; when the time left would not hold another probe as long as fp32's,
    bf16's is skipped and the speeds are not cached (they may be the slower warm-up step's alone)."""
    started = time.time()
    fp32 = training_speed(model, candidate.img_size, config, until=until)
    whole = until is None or 2 * time.time() - started <= until  # time for another probe as long: none was cut
    bf16 = 0.0
    if candidate.source == "scratch" and cpu_has_native_bf16() and whole:
        bf16 = training_speed(model, candidate.img_size, config, torch.bfloat16, until=until)
    if candidate.source == "scratch" and whole:
        speeds.record(_speed_key(candidate, config), fp32, bf16)
    train_at(candidate, fp32, bf16)


def train_at(candidate: Candidate, fp32: float, bf16: float) -> None:
    """The precision a candidate trains in (bf16 where it is BF16_GAIN faster) and the speed it will train at."""
    candidate.train_amp = "bf16" if bf16 >= BF16_GAIN * fp32 else "none"
    candidate.train_images_per_s = bf16 if candidate.train_amp == "bf16" else fp32


def cached_speeds(candidate: Candidate, config: ShipConfig) -> dict[str, float] | None:
    """A scratch candidate's speeds measured earlier on this machine (None: not yet, or not a scratch one)."""
    return speeds.lookup(_speed_key(candidate, config)) if candidate.source == "scratch" else None


def _speed_key(candidate: Candidate, config: ShipConfig) -> str:
    return speeds.speed_key(
        candidate.model, candidate.width_mult, candidate.img_size, batch_size(config, candidate.img_size)
    )


def inference_speed(model: nn.Module, img_size: int, batch: int = 16, steps: int = 2) -> float:
    """Images per second of ``model``'s forward pass in inference mode (channels_last, after one warm-up)."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(images)
        started = time.perf_counter()
        for _ in range(steps):
            model(images)
    return steps * batch / (time.perf_counter() - started)


def training_speed(
    model: nn.Module,
    img_size: int,
    config: ShipConfig,
    amp: torch.dtype | None = None,
    steps: int = 3,
    until: float | None = None,
) -> float:
    """Training images per second of ``model`` (SGD steps on random data, channels_last, after one warm-up)."""
    model = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    batch = batch_size(config, img_size)
    images = torch.randn(batch, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    return step_speed(model, images, torch.optim.SGD(model.parameters(), lr=1e-3), steps, amp, until)


def step_speed(
    module: nn.Module,
    inputs: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
    amp: torch.dtype | None = None,
    until: float | None = None,
) -> float:
    """Images per second of ``steps`` training steps of ``module`` on ``inputs`` (after one warm-up step), under
    autocast to ``amp`` when given. With ``until`` (a wall-clock time), only the steps that the warm-up's time says
    end by then are taken; with none, the warm-up step's own speed is returned (it is slower: allocation)."""
    targets = torch.zeros(inputs.shape[0], dtype=torch.long)

    def step() -> None:
        optimizer.zero_grad()
        with autocast(inputs.device, amp):
            loss = nn.functional.cross_entropy(module(inputs), targets)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    warm_up = time.perf_counter() - started
    if until is not None:
        steps = min(steps, int((until - time.time()) / warm_up))
    if steps <= 0:
        return inputs.shape[0] / warm_up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * inputs.shape[0] / (time.perf_counter() - started)
