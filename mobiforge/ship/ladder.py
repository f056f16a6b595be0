"""The transfer ladder: ways of using a pretrained network, each much cheaper than the next, and the planner that
climbs it with speeds measured on this machine.

1. **linear probe**: the network frozen, its pooled features computed once per image and view, the classifier
   alone trained on them (seconds once the features exist);
2. **tail**: the last k blocks trained on the cached input of block -k (k as large as the time allows);
3. **full fine-tune**: every layer, from the best rung's weights, end to end (an epoch costs a forward and a
   backward pass of the whole network over the data).

Between the probe and the rungs above it, the probe is tried again at lower input sizes (160, then 128 px: about
2x and 3x cheaper per image); the rungs above, and the students, train at the smallest size whose probe held.

The planner (``teacher_ladder``, ``tail_rung``) is a pure function of the measured speeds and the seconds given,
so it is tested under made-up clocks; ``measure`` times the real passes on a few batches. It times the trunk in
eager PyTorch: where a rung's long cache pass then runs faster on ONNX Runtime (``mobiforge.trunk``, chosen by the
rung's own run), the rung ends early and the stages after it get the time, as they plan from the clock. A student's
plan counts the teacher's passes for its logits at the speed the teacher's own engine trial recorded.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mobiforge.config import ShipConfig
from mobiforge.models.base import StackedNet
from mobiforge.ship.plan import epoch_seconds
from mobiforge.ship.policy import (
    CACHE_PASS_FIXED_SECONDS,
    CACHED_EPOCH_FIXED_SECONDS,
    CHEAP_VIEWS_SHARE,
    FORWARD_SPEEDUP,
    FULL_MAX_EPOCHS,
    FULL_MIN_EPOCHS,
    MARGIN,
    MIN_TAIL_EPOCHS,
    PROBE_EPOCHS,
    PROBE_MIN_EPOCHS,
    SIZE_TOLERANCE,
    SUBSET_PROBE_SHARE,
    TAIL_EPOCHS,
    TEACHER_TAILS,
    TEACHER_VIEWS,
    VIEWS,
)
from mobiforge.ship.probes import inference_speed, step_speed, training_speed
from mobiforge.ship.state import Survey
from mobiforge.ship.subsets import floor_images, most_images
from mobiforge.transfer import Tail, trunk_output
from mobiforge.trunk import trunk_dtype


@dataclass(frozen=True)
class LadderSpeeds:
    """Images per second of one network's passes, measured here: the whole forward pass (the probe's trunk), the
    trunk before the last k blocks, the cached training step of those k blocks (k=0: the classifier), and a full
    fine-tuning step (None: not measured)."""

    forward: float
    prefix: dict[int, float]
    tail: dict[int, float]
    full: float | None = None


@dataclass(frozen=True)
class RungPlan:
    name: str
    trainable_blocks: int | None  # None: every layer (full fine-tune)
    epochs: int
    seconds: float  # estimated, end to end
    views: int = 2
    img_size: int | None = None  # None: the network's own input size
    images: int | None = None  # train photos (a stratified subset where fewer than the folder's); None: all


def views_for(
    speeds: LadderSpeeds,
    info: Survey,
    seconds: float,
    teacher_seconds: Callable[[int], float] = lambda views: 0.0,
    choices: tuple[int, ...] = VIEWS,
) -> int:
    """The most views per training image of ``choices`` whose trunk passes, and the teacher's passes for its logits
    (``teacher_seconds(views)``), take a small share of ``seconds``; else the fewest."""
    for views in choices:
        passes = (info.train_images * views + info.val_images) / speeds.forward + teacher_seconds(views)
        if passes <= CHEAP_VIEWS_SHARE * seconds:
            return views
    return choices[-1]


def _cached_epoch(images: int, val_images: int, speed: float) -> float:
    return MARGIN * (images / speed + val_images / (FORWARD_SPEEDUP * speed)) + CACHED_EPOCH_FIXED_SECONDS


def probe_rung(speeds: LadderSpeeds, info: Survey, views: int, seconds: float) -> RungPlan | None:
    """The linear probe with the most epochs (PROBE_EPOCHS down to PROBE_MIN_EPOCHS) that fit in ``seconds``."""
    passes = info.train_images * views + info.val_images
    cache = MARGIN * passes / speeds.forward + CACHE_PASS_FIXED_SECONDS
    epoch = _cached_epoch(info.train_images * views, info.val_images, speeds.tail[0])
    epochs = min(PROBE_EPOCHS, int((seconds - cache) / epoch))
    if epochs < PROBE_MIN_EPOCHS:
        return None
    return RungPlan("linear probe", 0, epochs, cache + epochs * epoch, views, images=info.train_images)


def tail_rung(
    speeds: LadderSpeeds,
    info: Survey,
    views: int,
    seconds: float,
    tails: tuple[int, ...],
    max_epochs: int = TAIL_EPOCHS,
) -> RungPlan | None:
    """The most trainable blocks of ``tails`` whose cache pass and at least MIN_TAIL_EPOCHS epochs fit (up to
    ``max_epochs``)."""
    passes = info.train_images * views + info.val_images
    for blocks in tails:
        if blocks not in speeds.tail or blocks not in speeds.prefix:
            continue
        cache = MARGIN * passes / speeds.prefix[blocks] + CACHE_PASS_FIXED_SECONDS
        epoch = _cached_epoch(info.train_images * views, info.val_images, speeds.tail[blocks])
        epochs = min(max_epochs, int((seconds - cache) // epoch))
        if epochs >= MIN_TAIL_EPOCHS:
            return RungPlan(
                f"last {blocks} blocks", blocks, epochs, cache + epochs * epoch, views, images=info.train_images
            )
    return None


def full_rung(speeds: LadderSpeeds, info: Survey, seconds: float) -> RungPlan | None:
    if not speeds.full:
        return None
    epoch = epoch_seconds(speeds.full, info, teacher_speed=None)
    epochs = int(min(FULL_MAX_EPOCHS, seconds // epoch))
    if epochs < FULL_MIN_EPOCHS:
        return None
    return RungPlan("full fine-tune", None, epochs, epochs * epoch, images=info.train_images)


def with_images(info: Survey, images: int) -> Survey:
    """``info`` as a plan over ``images`` of its training photos."""
    return dataclasses.replace(info, train_images=images)


def ladder_images(speeds: LadderSpeeds, info: Survey, seconds: float) -> int:
    """The training photos the teacher's probe rungs take: all of them where the probe over all, with the fewest
    views, fits in ``seconds``; else a subset, the most whose probe fits in SUBSET_PROBE_SHARE of them (the rungs
    above it take more photos as the time left allows), at least ``floor_images``; 0: not even those fit."""
    views = TEACHER_VIEWS[-1]
    if probe_rung(speeds, info, views, seconds) is not None:
        return info.train_images
    low = floor_images(len(info.classes), info.train_images)

    def fits(images: int) -> bool:
        return probe_rung(speeds, with_images(info, images), views, SUBSET_PROBE_SHARE * seconds) is not None

    return most_images(fits, low, info.train_images - 1) if low < info.train_images else 0


def upper_images(speeds: LadderSpeeds, info: Survey, views: int, seconds: float, probed: int, more: bool) -> int:
    """The training photos of the rungs above a probe on ``probed`` of them: where more photos pay (``more``, the
    probe's learning curve), the most for which as many rungs fit in ``seconds`` as with ``probed``; else
    ``probed``, its time spent on epochs."""
    rungs = len(upper_rungs(speeds, with_images(info, probed), views, seconds))
    if not more or probed >= info.train_images or rungs == 0:
        return probed

    def fits(images: int) -> bool:
        return len(upper_rungs(speeds, with_images(info, images), views, seconds)) >= rungs

    return most_images(fits, probed, info.train_images) or probed


def teacher_ladder(speeds: LadderSpeeds, info: Survey, seconds: float) -> list[RungPlan]:
    """The rungs to climb in ``seconds``: the probe first (nothing is cheaper), then the tail, then full fine-tuning,
    each only if it fits in what the ones below it leave."""
    views = views_for(speeds, info, seconds, choices=TEACHER_VIEWS)
    probe = probe_rung(speeds, info, views, seconds)
    if probe is None:
        return []  # no probe: nothing above it fits either
    return [probe, *upper_rungs(speeds, info, views, seconds - probe.seconds)]


def upper_rungs(speeds: LadderSpeeds, info: Survey, views: int, seconds: float) -> list[RungPlan]:
    """The tail and full fine-tuning rungs that fit in ``seconds``, in that order."""
    rungs: list[RungPlan] = []
    for plan in (
        lambda left: tail_rung(speeds, info, views, left, TEACHER_TAILS),
        lambda left: full_rung(speeds, info, left),
    ):
        rung = plan(seconds - sum(r.seconds for r in rungs))
        rungs += [rung] if rung is not None else []
    return rungs


def at_size(speeds: LadderSpeeds, size: int, measured_at: int) -> LadderSpeeds:
    """``speeds`` at another input size: a conv's cost scales with the pixel count (the classifier's step on pooled
    features does not)."""
    factor = (measured_at / size) ** 2
    return LadderSpeeds(
        forward=speeds.forward * factor,
        prefix={k: v * factor for k, v in speeds.prefix.items()},
        tail={k: v if k == 0 else v * factor for k, v in speeds.tail.items()},
        full=speeds.full * factor if speeds.full else None,
    )


def size_probe(
    speeds: LadderSpeeds, info: Survey, views: int, seconds: float, size: int, measured_at: int
) -> RungPlan | None:
    """The probe at a lower input ``size``, when it fits in ``seconds`` and still leaves every rung above the probe
    that fits at the full size (trying it must never cost the teacher a rung)."""
    probe = probe_rung(at_size(speeds, size, measured_at), info, views, seconds)
    if probe is None:
        return None
    kept = upper_rungs(speeds, info, views, seconds - probe.seconds)
    if len(kept) < len(upper_rungs(speeds, info, views, seconds)):
        return None
    return dataclasses.replace(probe, name=f"linear probe {size} px", img_size=size)


def held(full_size_top1: float, lower_top1: float) -> bool:
    """Whether a lower input size's probe held the full size's accuracy (within SIZE_TOLERANCE points)."""
    return lower_top1 >= full_size_top1 - SIZE_TOLERANCE


def sized(rung: RungPlan, size: int, own_size: int) -> RungPlan:
    """``rung`` at input ``size`` (its name says so when it is not the network's own)."""
    if size == own_size:
        return rung
    return dataclasses.replace(rung, name=f"{rung.name} {size} px", img_size=size)


# ------------------------------------------------------------------------------------------------ measurement


def measure(
    model: StackedNet, img_size: int, tails: tuple[int, ...], config: ShipConfig, full: bool = False
) -> LadderSpeeds:
    """The speeds the planner needs, timed on random data in the precision the cache will use."""
    tails = tuple(k for k in tails if 0 < k < len(model.features))
    forward = forward_speed(model, img_size)
    dtype = trunk_dtype("auto")
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        prefix = {k: _prefix_speed(model, len(model.features) - k, img_size) for k in tails}
    tail = {k: _tail_speed(model, k, img_size) for k in (0, *tails)}
    return LadderSpeeds(forward, prefix, tail, training_speed(model, img_size, config) if full else None)


def with_cache_engine(speeds: LadderSpeeds, engine_speed: float | None) -> LadderSpeeds:
    """``speeds`` with the cache pass's own engine: where its trial (``trunk.choose_trunk_pass``) timed the whole
    trunk faster than eager, the forward pass at that speed and every prefix, run by the same kind of engine, sped
    up alike."""
    if not engine_speed or engine_speed <= speeds.forward:
        return speeds
    factor = engine_speed / speeds.forward
    return dataclasses.replace(speeds, forward=engine_speed, prefix={k: v * factor for k, v in speeds.prefix.items()})


def forward_speed(model: StackedNet, img_size: int) -> float:
    """Images per second of the whole network's forward pass in the precision the cache will use: a second's
    measure of whether one pass over the data can fit, before the slower probes of ``measure``."""
    dtype = trunk_dtype("auto")
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return inference_speed(model, img_size)


def _prefix_speed(model: StackedNet, cut: int, img_size: int) -> float:
    return inference_speed(model.features[:cut], img_size)


def _tail_speed(model: StackedNet, blocks: int, img_size: int, batch: int = 64, steps: int = 3) -> float:
    """Training images per second of the last ``blocks`` (0: the classifier) on cached-input-shaped data."""
    model = copy.deepcopy(model).eval()
    cut = len(model.features) - blocks if blocks else None
    with torch.inference_mode():
        shape = trunk_output(model, cut, torch.zeros(1, 3, img_size, img_size)).shape[1:]
    tail = Tail(model, cut).train()
    return step_speed(tail, torch.randn(batch, *shape), torch.optim.AdamW(tail.parameters(), lr=1e-4), steps)
