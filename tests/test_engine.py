"""Engine functions on known inputs: optimizers, schedules, evaluation counts, divergence."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from mobiforge import create_model
from mobiforge.engine import (
    DivergedError,
    OptimConfig,
    build_ema,
    build_optimizer,
    build_scheduler,
    cross_entropy_loss,
    evaluate,
    rescheduled,
    resolve_amp,
    train_one_epoch,
)
from mobiforge.errors import MobiforgeError


def test_article_defaults() -> None:
    config = OptimConfig()
    assert (config.optimizer, config.lr, config.momentum, config.scheduler, config.step_size, config.gamma) == (
        "sgd",
        0.01,
        0.9,
        "step",
        10,
        0.1,
    )


def test_weight_decay_skips_norm_and_bias() -> None:
    model = create_model("mobilenet_v3_small", num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=1e-4))
    plain, decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert len(build_optimizer(model, OptimConfig(weight_decay=1e-4, decay_norm_and_bias=True)).param_groups) == 1


def test_norm_biases_get_their_own_faster_group() -> None:
    model = create_model("convpool_s", num_classes=3, small_input=True)
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=1e-4, norm_bias_lr_scale=64.0))
    biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    fast = [group for group in optimizer.param_groups if group["lr"] == pytest.approx(6.4)]
    assert len(fast) == 1 and {id(p) for p in fast[0]["params"]} == biases and fast[0]["weight_decay"] == 0.0
    others = [p for group in optimizer.param_groups if group is not fast[0] for p in group["params"]]
    assert len(others) == len(list(model.parameters())) - len(biases)
    assert all(group["lr"] == pytest.approx(0.1) for group in optimizer.param_groups if group is not fast[0])


@pytest.mark.parametrize("name", ["sgd", "adamw", "rmsprop"])
def test_optimizers(name: str) -> None:
    assert build_optimizer(nn.Linear(2, 2), OptimConfig(optimizer=name)).param_groups[0]["lr"] == 0.01


def _lrs(config: OptimConfig, epochs: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=config.lr)
    scheduler = build_scheduler(optimizer, config, epochs, steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_schedule_matches_steplr_per_epoch() -> None:
    lrs = _lrs(OptimConfig(lr=0.01, step_size=2, gamma=0.1), epochs=5, steps=3)
    per_epoch = lrs[::3]
    assert per_epoch == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001])


def test_cosine_with_warmup() -> None:
    lrs = _lrs(OptimConfig(lr=0.1, scheduler="cosine", warmup_epochs=1), epochs=4, steps=10)
    assert lrs[0] < 0.001 and lrs[9] < lrs[10]  # ramps up during the first epoch
    assert max(lrs) == pytest.approx(0.1, rel=1e-3) and lrs[-1] < 0.001


def test_onecycle_and_unknown() -> None:
    lrs = _lrs(OptimConfig(lr=0.1, scheduler="onecycle"), epochs=2, steps=10)
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[0] < 0.01
    with pytest.raises(MobiforgeError, match="--scheduler"):
        _lrs(OptimConfig(scheduler="linear"), 1, 1)


@pytest.mark.parametrize(
    "config",
    [
        OptimConfig(lr=0.1, scheduler="onecycle"),
        OptimConfig(lr=0.1, scheduler="cosine", warmup_epochs=1),
        OptimConfig(lr=0.1, step_size=2, gamma=0.1),
    ],
    ids=["onecycle", "cosine+warmup", "step"],
)
@pytest.mark.parametrize("epochs", [2, 6])
def test_a_re_planned_schedule_continues_on_the_new_curve(config: OptimConfig, epochs: int) -> None:
    """Planned for 4 epochs of 10 steps, re-planned after the first to ``epochs``: from step 10 on, the rate is the
    one a run planned for ``epochs`` from the start would have, in every parameter group."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    optimizer = build_optimizer(model, dataclasses.replace(config, weight_decay=1e-4))  # two groups
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    scheduler = build_scheduler(optimizer, config, 4, 10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    scheduler = rescheduled(optimizer, config, base_lrs, epochs, 10, steps_done=10)
    lrs = []
    for _ in range(10, epochs * 10):
        lrs.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(_lrs(config, epochs, 10)[10:])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[1]["lr"])


class FixedLogits(nn.Module):
    """Returns the logits stored for each input index (the input is the index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.logits[index.long().view(-1)]


def test_evaluate_counts_top1_top5_and_confusion() -> None:
    logits = torch.tensor(
        [
            [5.0, 1, 0, 0, 0, 0],  # true 0, predicted 0
            [0.0, 5, 4, 0, 0, 0],  # true 2, predicted 1 (top-2 hit)
            [0.0, 0, 5, 0, 0, 0],  # true 2, predicted 2
            [5.0, 4, 3, 2, 1, 0],  # true 5: last in ranking, not in top-5
        ]
    )
    targets = torch.tensor([0, 2, 2, 5])
    loader = [(torch.arange(4).float(), targets)]
    result = evaluate(FixedLogits(logits), loader, num_classes=6)
    assert result.top1 == 50.0 and result.top5 == 75.0 and result.images == 4
    assert result.confusion[2].tolist() == [0, 1, 1, 0, 0, 0]
    assert result.per_class[0] == 100.0 and result.per_class[2] == 50.0
    assert result.loss == pytest.approx(nn.functional.cross_entropy(logits, targets).item())


def test_divergence_stops_before_the_weights_change() -> None:
    model = nn.Linear(4, 2)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.full((2, 4), float("nan")), torch.tensor([0, 1]))]
    with pytest.raises(DivergedError, match="loss became nan at epoch 1, step 1"):
        train_one_epoch(model, loader, optimizer, None, cross_entropy_loss())
    assert torch.equal(model.weight, before)


def test_train_one_epoch_learns_and_updates_ema() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = build_ema(model, 0.9)
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    seen = []
    for epoch in range(5):
        stats = train_one_epoch(
            model, loader, optimizer, None, cross_entropy_loss(), epoch=epoch, ema=ema, progress=seen.append
        )
    assert stats.steps == 4 and stats.images == 64 and len(seen) == 20
    assert evaluate(model, [(x, y)], 2).top1 > 90
    assert not torch.equal(ema.module.weight, model.weight)


def test_start_step_skips_batches_and_should_stop_interrupts() -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(4, 2), torch.randint(0, 2, (4,))) for _ in range(5)]
    stats = train_one_epoch(model, loader, optimizer, None, cross_entropy_loss(), start_step=3)
    assert stats.steps == 5 and stats.images == 8
    stats = train_one_epoch(model, loader, optimizer, None, cross_entropy_loss(), should_stop=lambda: True)
    assert stats.steps == 1


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobiforge import engine

    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None  # never bf16 by default on CPU
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="--amp bf16: this CPU has no native bf16"):
        assert resolve_amp("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_amp("bf16", cpu) == torch.bfloat16
