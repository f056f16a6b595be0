"""Ship's time plan: how long an epoch will take, how the remaining budget is shared, and the two train callbacks
that keep a training run inside its share (``replan_early``, ``stop_by``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from mobiforge import engine
from mobiforge.callbacks import Callback, RunView
from mobiforge.config import ShipConfig
from mobiforge.data import DataConfig
from mobiforge.models import is_model, model_traits
from mobiforge.ship.policy import (
    CALIBRATION_IMAGES,
    DEADLINE_MARGIN,
    EPOCH_FIXED_SECONDS,
    EXPORT_RESERVE_FACTOR,
    EXPORT_RESERVE_SECONDS,
    FIRST_OF_TWO_SHARE,
    FORWARD_SPEEDUP,
    LARGE_BATCH,
    LARGE_INPUT_SIZES,
    LARGE_MIN_SCALE,
    LATE_REPLAN_LIMIT,
    LATE_REPLAN_SHARE,
    MARGIN,
    MAX_EPOCHS,
    MIN_EPOCHS,
    NORM_BIAS_LR_SCALE,
    PACE_EPOCHS,
    REFERENCE_IMAGES,
    REPLAN_AFTER,
    SCRATCH_EPOCHS,
    SCRATCH_SGD,
    SCRATCH_SGD_BATCH,
    SCRATCH_SGD_MIN_STEPS,
    SCRATCH_SHORT,
    SIMULATED_COST,
    SMALL_BATCH,
    SMALL_IMAGE_SIDE,
    SMALL_MIN_SCALE,
    TEACHER_SPEED_RATIO,
    UNMEASURED_EXPORT_SECONDS,
    UNMEASURED_LATENCY_MS,
    UNMEASURED_SPEED,
    UNPROBED_PLAN_SPEED,
)
from mobiforge.ship.state import Candidate, Survey, TrainRecord


def batch_size(config: ShipConfig, img_size: int) -> int:
    return config.batch_size or (SMALL_BATCH if img_size <= SMALL_IMAGE_SIDE else LARGE_BATCH)


def data_config(config: ShipConfig, img_size: int | None, data: str | None = None) -> DataConfig:
    """The training data settings of a candidate (``img_size`` None: the teacher's own input size; ``data``: a
    subset's table in place of the user's data)."""
    size = img_size or LARGE_INPUT_SIZES[0]
    return DataConfig(
        data=data or config.data,
        img_size=img_size,
        batch_size=batch_size(config, size),
        workers=config.workers,
        skip_bad_images=config.skip_bad_images,
        min_scale=LARGE_MIN_SCALE if size > SMALL_IMAGE_SIDE else SMALL_MIN_SCALE,
    )


def identity_start(model: str | None) -> bool:
    """Plain conv stacks (``Traits.identity_start``) start from airbench's identity init with fast BN biases;
    residual and depthwise networks keep a random start."""
    return bool(model) and is_model(model) and model_traits(model).identity_start


def scratch_recipe(small: bool, steps: int, batch: int, model: str | None = None) -> engine.OptimConfig:
    """The CIFAR-10 recipe measured in RESULTS.md#scratch_recipe_convpool_whiten (SGD with Nesterov momentum,
    one-cycle; for the conv-pool family, BN biases at 64x the rate) when the run is long enough for its warm-up;
    short runs (few images or epochs) diverged with it and get AdamW with cosine decay instead."""
    if small and steps >= SCRATCH_SGD_MIN_STEPS:
        return dataclasses.replace(
            SCRATCH_SGD,
            lr=SCRATCH_SGD.lr * batch / SCRATCH_SGD_BATCH,
            norm_bias_lr_scale=NORM_BIAS_LR_SCALE if identity_start(model) else 1.0,
        )
    return SCRATCH_SHORT


def scratch_whiten_stem(optim: engine.OptimConfig) -> bool:
    """Whether a from-scratch run starts from a whitened, frozen stem: with the small-image SGD recipe, with which
    it was measured (RESULTS.md#scratch_recipe_convpool); the AdamW fallback starts from a random one."""
    return optim.optimizer == "sgd"


def scratch_identity_init(model: str, optim: engine.OptimConfig) -> bool:
    """Whether a from-scratch run starts its convs as partial identities: the conv-pool family with the SGD recipe,
    with which it was measured (RESULTS.md#scratch_recipe_airbench_init)."""
    return identity_start(model) and optim.optimizer == "sgd"


def epoch_seconds(images_per_s: float, info: Survey, teacher_speed: float | None) -> float:
    """One epoch's wall time: training (+ the teacher's forward passes) and evaluation, with a margin for loading."""
    seconds = info.train_images / images_per_s + info.val_images / (FORWARD_SPEEDUP * images_per_s)
    if teacher_speed:
        seconds += info.train_images / (FORWARD_SPEEDUP * teacher_speed)
    return MARGIN * seconds + EPOCH_FIXED_SECONDS


def export_reserve(candidate: Candidate, info: Survey) -> float:
    """Seconds set aside for a trained candidate's PTQ export and gate: ``export_estimate`` with half again and
    15 s to spare."""
    return EXPORT_RESERVE_FACTOR * export_estimate(candidate, info) + EXPORT_RESERVE_SECONDS


def export_estimate(candidate: Candidate, info: Survey) -> float:
    """Seconds a trained candidate's PTQ export and gate are expected to take: the search's own export time
    (lowering a graph calibrated on 8 random images), plus calibrating on real images, the fp32 and runtime passes
    over the val images and the reference check (forward passes estimated at 3x the measured training speed)."""
    forward = FORWARD_SPEEDUP * (candidate.train_images_per_s or UNMEASURED_SPEED)
    passes = SIMULATED_COST * (CALIBRATION_IMAGES + REFERENCE_IMAGES) + info.val_images
    runtime = info.val_images * (candidate.latency_ms or UNMEASURED_LATENCY_MS) / 1000
    return (candidate.export_seconds or UNMEASURED_EXPORT_SECONDS) + passes / forward + runtime


def plan_epochs(candidate: Candidate, info: Survey, teacher: TrainRecord | None, seconds: float) -> tuple[int, float]:
    speed = candidate.train_images_per_s or UNPROBED_PLAN_SPEED
    teacher_speed = speed * TEACHER_SPEED_RATIO if teacher else None  # a larger net, forward only
    epoch_s = epoch_seconds(speed, info, teacher_speed)
    return int(min(MAX_EPOCHS, max(0.0, seconds) // epoch_s)), epoch_s  # no time left: 0 epochs, never fewer


def needed_epochs(candidate: Candidate) -> int:
    """Epochs a candidate must get for a second one to share the time: SCRATCH_EPOCHS where the search ranked it by
    the epochs the budget buys (small images, from scratch), else MIN_EPOCHS."""
    return SCRATCH_EPOCHS if candidate.budget_epochs is not None else MIN_EPOCHS


def next_training(
    queue: list[Candidate], info: Survey, teacher: TrainRecord | None, left: float
) -> tuple[int, float, float]:
    """Epochs for ``queue[0]``, their estimated length, and its share of the time: the first of two gets
    FIRST_OF_TWO_SHARE of the time left after the exports; the queue loses its last candidate while that would leave
    any with fewer than its ``needed_epochs``; the last one trains at least 1 epoch."""
    while True:
        usable = left - sum(export_reserve(c, info) for c in queue)
        share = 1.0 if len(queue) == 1 else FIRST_OF_TWO_SHARE
        epochs, epoch_s = plan_epochs(queue[0], info, teacher, usable * share)
        later = [plan_epochs(c, info, teacher, usable * (1 - share) / (len(queue) - 1))[0] for c in queue[1:]]
        if len(queue) == 1 or all(e >= needed_epochs(c) for c, e in zip(queue, [epochs, *later], strict=True)):
            return max(1, epochs), epoch_s, usable * share
        queue.pop()


def fit_epochs(end: float, cap: int) -> Callable[[int, float], int]:
    """The re-plan once the first epoch is timed: the epochs done plus as many more of that length as end by
    ``end`` (with the deadline margin). The plan before it comes from a few probe steps on random data, which read
    up to 1.5x slower than the epochs of the cached loader: without it, a third of the budget went unused on
    CIFAR-10."""

    def epochs(done: int, epoch_seconds: float) -> int:
        return min(cap, done + max(0, int((end - time.time()) / (DEADLINE_MARGIN * epoch_seconds))))

    return epochs


def replan_early(plan: Callable[[int, float], int]) -> Callback:
    """A train callback: after the first whole epoch that trains the full network, again after the third, and once
    more a fifth of the way through the run where that comes later, ``plan(epochs_done, epoch_seconds)`` sets the
    run's epoch count; the schedule is stretched or shortened to it, so that a time-budgeted run planned from an
    estimate still ends its learning-rate schedule instead of being cut mid-way or ending early. The later plans time
    the epochs after the first only: the first ran 10% slower than the rest on CIFAR-10 (caches and kernels warming
    up), which cost 3 of 31 epochs of a 30-minute run; epochs 2-3 of a 60-minute ship run ran 10% slower than the
    ones after them, which left 8 of its minutes unused (RESULTS.md#ship_cifar10). All plans fall within one-cycle's
    warm-up, where a longer or shorter run barely changes the rate."""
    seconds: list[float] = []
    finished = False

    def on_epoch_end(trainer: RunView) -> None:
        nonlocal finished
        if finished or not trainer.whole_epoch or trainer.frozen:
            return
        seconds.append(trainer.epoch_seconds)
        planned = trainer.config.epochs or 0
        late = len(seconds) > max(REPLAN_AFTER) and trainer.epoch >= LATE_REPLAN_SHARE * planned
        if len(seconds) in REPLAN_AFTER or (late and trainer.epoch <= LATE_REPLAN_LIMIT * planned):
            steady = seconds[1:] or seconds
            trainer.set_epochs(plan(trainer.epoch, sum(steady) / len(steady)))
        finished = late

    return on_epoch_end


def stop_by(deadline: float) -> Callback:
    """A train callback that keeps a run inside ``deadline`` (a ``time.time()`` value). While the epochs left in its
    plan would end after it at the pace of the last few full-network epochs (the first one excepted, as for
    ``replan_early``), the plan is shortened to as many as fit with the deadline margin, so that the learning-rate
    schedule ends instead of being cut at a rate well above its last; epochs that slow down after the plans were
    set would otherwise do that. The run ends after the last epoch expected to finish before the deadline, judged
    by the length of the epoch just done; it stays resumable with more time."""
    seconds: list[float] = []

    def on_epoch_end(trainer: RunView) -> None:
        if trainer.whole_epoch and not trainer.frozen:
            seconds.append(trainer.epoch_seconds)
            if len(seconds) > 1:
                _shorten_to_fit(trainer, seconds[1:][-PACE_EPOCHS:], deadline)
        epochs = trainer.config.epochs or 0
        if trainer.epoch < epochs and time.time() + DEADLINE_MARGIN * trainer.epoch_seconds > deadline:
            trainer.stop(f"time budget reached after epoch {trainer.epoch} of {epochs}")

    return on_epoch_end


def _shorten_to_fit(trainer: RunView, recent: list[float], deadline: float) -> None:
    """Cut the plan to the epochs that fit by ``deadline`` (with the margin) at the mean pace of ``recent`` epochs,
    where the rest of it would not fit (without the margin) and at least one more epoch does."""
    pace, left = sum(recent) / len(recent), deadline - time.time()
    fit = trainer.epoch + int(left / (DEADLINE_MARGIN * pace))
    if ((trainer.config.epochs or 0) - trainer.epoch) * pace > left and fit > trainer.epoch:
        trainer.set_epochs(fit)
