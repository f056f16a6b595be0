"""Ship's working stages: the teacher's fine-tuning, each candidate's training, and its int8 export through the
gate. Each returns the typed record that ``ShipState`` keeps."""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mobiforge.backend_api import get_backend
from mobiforge.backends.browser import camera_screenshot, chromium_path
from mobiforge.backends.web import runtime_package
from mobiforge.checkpoint import Checkpoint
from mobiforge.config import CARD_FIELDS, ShipConfig
from mobiforge.data import DataConfig, discover, loader_workers
from mobiforge.data.transforms import preprocess_for
from mobiforge.doctor.features import trunk_activations
from mobiforge.doctor.files import FileFacts
from mobiforge.engine import resolve_device
from mobiforge.errors import MobiforgeError
from mobiforge.export import ArtifactReport, ExportConfig, export_checkpoint
from mobiforge.models import build_from_spec, create_model
from mobiforge.models.base import StackedNet
from mobiforge.models.weights import get_weights
from mobiforge.progress import Reporter
from mobiforge.prune import prune_and_save, taylor_gradients
from mobiforge.quantize import layer_groups
from mobiforge.runs import TrainResult
from mobiforge.ship.budget import TimeBudget
from mobiforge.ship.config import CORE_ML, SHIPPED_WEB_FOLDER, WEB, ShipInterrupted
from mobiforge.ship.ladder import (
    LadderSpeeds,
    RungPlan,
    at_size,
    forward_speed,
    held,
    ladder_images,
    measure,
    size_probe,
    sized,
    tail_rung,
    teacher_ladder,
    upper_images,
    upper_rungs,
    views_for,
    with_cache_engine,
    with_images,
)
from mobiforge.ship.plan import (
    batch_size,
    data_config,
    export_reserve,
    fit_epochs,
    plan_epochs,
    replan_early,
    scratch_identity_init,
    scratch_recipe,
    scratch_whiten_stem,
    stop_by,
)
from mobiforge.ship.policy import (
    CACHED_PROBE_LR,
    CACHED_TAIL,
    CALIBRATION_IMAGES,
    CHANCE_P_VALUE,
    CORE_ML_IMAGES,
    CORE_ML_MIN_IMAGES,
    CORE_ML_SECONDS,
    DEADLINE_MARGIN,
    FILE_OVERHEAD,
    FIRST_LAYERS_IN_FLOAT,
    FULL_MAX_STUDENT_EPOCHS,
    FULL_MIN_EPOCHS,
    LOWER_SIZES,
    MARGIN,
    MAX_EPOCHS,
    MIN_TAIL_EPOCHS,
    PRECISE_BN_IMAGES,
    PRUNE_RECALIBRATION_IMAGES,
    PRUNING,
    QAT_EXPORTS,
    QAT_IMAGES,
    QAT_STEP_COST,
    REFERENCE_IMAGES,
    SMALL_IMAGE_SIDE,
    STUDENT_AFTER_TAIL,
    STUDENT_FROM_TEACHER,
    STUDENT_TAIL_EPOCHS,
    STUDENT_TAILS,
    TAYLOR_PASS_COST,
    TEACHER_BACKBONE_LR_SCALE,
    TEACHER_FULL,
    TEACHER_MODEL,
    TEACHER_SHARE,
    TEACHER_TAILS,
    TEACHER_VIEWS,
    UNMEASURED_SPEED,
    VIEWS,
    WEB_IMAGE_SIDE,
    WEB_IMAGES,
    WEB_MIN_IMAGES,
    WEB_SECONDS,
    WEB_SECONDS_PER_IMAGE,
    WEB_SMALLEST_SHARE,
    distilled_from,
)
from mobiforge.ship.probes import inference_speed
from mobiforge.ship.ranks import train_together
from mobiforge.ship.search import prune_into
from mobiforge.ship.state import Candidate, ExportRecord, Rung, ShipState, Survey, TeacherRecord, TrainRecord
from mobiforge.ship.subsets import floor_images, learning_curve, more_images_pay, most_images, subset_table
from mobiforge.train import EPOCH_END, TrainConfig
from mobiforge.transfer import Tail, cut_index, teacher_cut, trunk_digest, trunk_pass_for
from mobiforge.trunk import memo_path, recorded_speed


@dataclasses.dataclass(frozen=True)
class ShipRun:
    """What every stage works in: the settings, the run folder, the reporters, and the state (with its clock)."""

    config: ShipConfig
    run_dir: Path
    reporter: Reporter
    say: Callable[[str], None]
    state: ShipState
    # the doctor's cheap scan of the data, kept in memory for its feature checks (a resumed run scans again)
    file_facts: list[FileFacts] = dataclasses.field(default_factory=list)

    def budget(self) -> TimeBudget:
        """The run's whole time left."""
        return TimeBudget(time.time() + self.state.left())


def train_teacher(run: ShipRun) -> TeacherRecord:
    """Climb the transfer ladder with the pretrained teacher in at most TEACHER_SHARE of the time left (a given
    checkpoint is used as is); the teacher is the best rung."""
    config, state, say = run.config, run.state, run.say
    if config.teacher != "auto":
        path = Path(config.teacher).resolve()
        metrics = Checkpoint.load(path).metrics
        history = metrics.get("history", [])
        top1 = metrics.get("best_top1")
        return TeacherRecord(
            TrainRecord(str(path), str(path.parent), top1, top1, len(history), len(history), history, given=True)
        )
    model = create_model(TEACHER_MODEL, num_classes=len(state.survey.classes))
    size = get_weights(TEACHER_MODEL).preprocess.img_size
    fewest = floor_images(len(state.survey.classes), state.survey.train_images) + state.survey.val_images
    budget = run.budget().share(TEACHER_SHARE)
    engine_speed = cache_engine_speed(run) if budget.left() > 0 else None
    if budget.left() <= 0 or fewest / (engine_speed or forward_speed(model, size)) > budget.left():
        return TeacherRecord(skipped=f"no time for {TEACHER_MODEL}'s features (one pass over the data)")
    speeds = with_cache_engine(measure(model, size, TEACHER_TAILS, config, full=True), engine_speed)
    budget = run.budget().share(TEACHER_SHARE)  # counted from after the probes
    info = with_images(state.survey, ladder_images(speeds, state.survey, budget.left()))
    rungs = teacher_ladder(speeds, info, budget.left()) if info.train_images else []
    if not rungs:
        return TeacherRecord(skipped=f"no time for {TEACHER_MODEL}'s features (one pass over the data)")
    plan = " -> ".join(f"{rung.name} ({rung.epochs} epochs)" for rung in rungs)
    say(f"teacher: {TEACHER_MODEL} from ImageNet weights, ladder: {plan}, ~{sum(r.seconds for r in rungs):.0f} s")
    if info.train_images < state.survey.train_images:
        say(f"teacher: the probe rungs train on {_share(info.train_images, state.survey)} (stratified)")
    climbed = [_step(rungs[0], [], run)]
    chosen, views = size, rungs[0].views
    for lower in LOWER_SIZES:  # cheaper inputs, while the probe holds its accuracy at them
        probe = size_probe(speeds, info, views, budget.left(), lower, size)
        if probe is None:
            break
        climbed.append(_step(probe, climbed, run))
        if not held(climbed[0][1].top1, climbed[-1][1].top1):
            break
        chosen = lower
    if chosen != size:
        say(f"teacher: the probe held at {chosen} px: the rungs above it and the students train at {chosen} px")
    curve = probe_curve(run, info.train_images) if info.train_images < state.survey.train_images else []
    speeds_at = at_size(speeds, chosen, size)
    images = upper_images(speeds_at, state.survey, views, budget.left(), info.train_images, more_images_pay(curve))
    if curve:
        points = ", ".join(f"{top1:.2f}% on {photos:,}" for photos, top1 in curve)
        pays = "more photos pay" if more_images_pay(curve) else "more epochs pay, not more photos"
        say(f"teacher: the probe's learning curve: {points}: {pays}; the rungs above it take {images:,} photos")
    for rung in upper_rungs(speeds_at, with_images(state.survey, images), views, budget.left()):
        climbed.append(_step(sized(rung, chosen, size), climbed, run))
    best = max(climbed, key=lambda done: done[1].top1)
    return TeacherRecord(best[0], rungs=[rung for _, rung in climbed], learning_curve=[list(p) for p in curve])


def _share(images: int, survey: Survey) -> str:
    return f"{images:,} of the {survey.train_images:,} training photos ({images / survey.train_images:.0%})"


def run_data(run: ShipRun, images: int | None) -> str | None:
    """The data a rung or student of ``images`` training photos trains on: a stratified subset's table in the run
    folder (``subsets.subset_table``), or None (the user's data) for all of them."""
    survey = run.state.survey
    if images is None or images >= survey.train_images:
        return None
    return subset_table(run.run_dir, data_config(run.config, img_size=None), survey.classes, images)


def probe_curve(run: ShipRun, images: int) -> list[tuple[int, float]]:
    """The learning curve of a linear probe on the teacher probe's own cached features of its ``images`` photos
    (their eval crops, read back: no trunk pass), judged on the val split."""
    data = data_config(run.config, img_size=None, data=run_data(run, images))
    splits = discover(data)
    device = resolve_device(run.config.device)
    _, rows = trunk_activations(
        splits.train, splits.val, run.run_dir / "cache", run.reporter, data, run.config.seed, device=device
    )
    features = rows.float().numpy()
    labels = np.array([label for _, label in [*splits.train, *splits.val]], dtype=np.int64)
    train = len(splits.train)
    return learning_curve(features[:train], labels[:train], features[train:], labels[train:])


def cache_engine_speed(run: ShipRun) -> float | None:
    """The images per second of the engine the teacher's probe will cache with: chosen now, where its longest plan
    (the most views of every image) is long enough for a trial, and recorded in the run's cache, where the probe's
    pass reads the choice back. None where eager stays (no trial: the plan times eager itself). The plan timed eager
    PyTorch alone, while the pass may run ONNX Runtime int8, 2.3x the best pass before it
    (RESULTS.md#trunk_pass_cifar10): all 50,000 CIFAR-10 photos at 224 px shipped with no teacher
    (RESULTS.md#battery_large_folder)."""
    weights = get_weights(TEACHER_MODEL).preprocess
    data = data_config(run.config, img_size=None).resolved(weights)
    preprocess = preprocess_for(data, weights)
    model = create_model(TEACHER_MODEL, pretrained=True).eval()
    samples = discover(data).train
    defaults = TrainConfig()
    passes = len(samples) * max(TEACHER_VIEWS) + run.state.survey.val_images
    folder = run.run_dir / "cache"
    device = resolve_device(run.config.device)
    if device.type == "cuda":  # no CPU engine trial; the plan times eager on the CPU (GPU plans are not tuned)
        return None
    trunk_pass_for(model, None, preprocess, defaults.trunk_engine, defaults.amp, passes, folder, samples)
    return recorded_speed(memo_path(folder, trunk_digest(model, None), None, preprocess.img_size, defaults.amp))


def _step(rung: RungPlan, climbed: list[tuple[TrainRecord, Rung]], run: ShipRun) -> tuple[TrainRecord, Rung]:
    """Climb ``rung`` from the best of the rungs ``climbed`` so far."""
    start = max(climbed, key=lambda done: done[1].top1)[0] if climbed else None
    done = climb(rung, start, run)
    run.say(f"teacher: {rung.name}: val top-1 {done[1].top1:.2f}% in {done[1].seconds:.0f} s")
    return done


def climb(rung: RungPlan, start: TrainRecord | None, run: ShipRun) -> tuple[TrainRecord, Rung]:
    """One rung with the teacher: a cached run of its tail (the probe: of its classifier), or full fine-tuning from
    the best rung below. A rung already finished by a killed run is read back."""
    config, run_dir, reporter = run.config, run.run_dir, run.reporter
    name = "teacher-" + rung.name.replace(" ", "-")
    folder = run_dir / name
    started = time.time()
    if not _finished(folder, rung.epochs):
        if rung.trainable_blocks is not None:  # a cached rung cut short restarts; its cache is in run_dir/cache
            shutil.rmtree(folder, ignore_errors=True)
        base = TrainConfig(
            model=TEACHER_MODEL,
            data=data_config(config, img_size=rung.img_size, data=run_data(run, rung.images)),
            epochs=rung.epochs,
            seed=config.seed,
            device=config.device,
            runs_dir=str(run_dir),
            name=name,
            tensorboard=False,
        )
        if rung.trainable_blocks is not None:
            train_together(_cached(base, rung, run_dir, pretrained=True), reporter)
        else:
            assert start is not None
            full = dataclasses.replace(
                base,
                init_from=start.checkpoint,
                backbone_lr_scale=TEACHER_BACKBONE_LR_SCALE,
                optim=TEACHER_FULL,
            )
            train_resumable(full, reporter, run.state.deadline, fit_epochs(time.time() + rung.seconds, rung.epochs))
    checkpoint = Checkpoint.load(folder / "best.pt")
    history = checkpoint.metrics.get("history", [])
    top1 = float(checkpoint.metrics.get("best_top1", 0.0))
    blocks, model = rung.trainable_blocks, checkpoint.model()
    trained = Tail(model, cut_index(model, blocks)) if blocks is not None else model
    cached = checkpoint.extra.get("transfer") or {}
    # the photos it trained on, as its checkpoint says: a rung read back after a resume may have planned another count
    images = cached.get("images") or rung.images or run.state.survey.train_images
    views = cached.get("views") if blocks is not None else None
    record = TrainRecord(
        str(folder / "best.pt"), str(folder), top1, top1, rung.epochs, len(history), history, images=images, views=views
    )
    params = sum(p.numel() for p in trained.parameters())
    asked = cached.get("views_asked") if blocks is not None else None
    seconds = time.time() - started
    return record, Rung(rung.name, params, seconds, top1, images, views, cached.get("trunk_pass", ""), asked)


def _finished(folder: Path, epochs: int) -> bool:
    last = folder / "last.pt"
    return last.exists() and (folder / "best.pt").exists() and Checkpoint.load(last).epoch >= epochs


def _cached(base: TrainConfig, rung: RungPlan, run_dir: Path, **overrides: object) -> TrainConfig:
    """A cached tail run of the ladder: its trunk passes in the ship run's shared cache, AdamW with cosine decay
    (the classifier alone takes a larger rate)."""
    optim = dataclasses.replace(CACHED_TAIL, lr=CACHED_PROBE_LR) if rung.trainable_blocks == 0 else CACHED_TAIL
    return dataclasses.replace(
        base,
        trainable_blocks=rung.trainable_blocks,
        views=rung.views,
        cache_dir=str(run_dir / "cache"),
        optim=optim,
        **overrides,  # type: ignore[arg-type]
    )


def _record(result: TrainResult, checkpoint: Path, top1: float) -> TrainRecord:
    return TrainRecord(
        checkpoint=str(checkpoint),
        run_dir=str(result.run_dir),
        top1=top1,
        best_top1=result.best_top1,
        epochs_planned=planned_epochs(result.run_dir),
        epochs_run=len(result.history),
        history=result.history,
    )


def train_resumable(
    config: TrainConfig, reporter: Reporter, deadline: float, plan: Callable[[int, float], int]
) -> TrainResult:
    """Train (or continue the run's ``last.pt``) with ship's re-plan and deadline callbacks."""
    last = Path(config.runs_dir) / str(config.name) / "last.pt"
    if last.exists():
        config = TrainConfig(resume=str(last))
    result = train_together(config, reporter, callbacks={EPOCH_END: [replan_early(plan), stop_by(deadline)]})
    if result.interrupted:
        raise ShipInterrupted(
            "stopped; the finished stages and the training so far are saved: rerun the same command to resume"
        )
    if not result.history:
        raise MobiforgeError(f"training {config.name} ran no epoch; give ship more time (--time-budget)")
    return result


def planned_epochs(run_dir: Path) -> int:
    """The run's epoch count as finally planned (re-planned after its first epoch, kept across resumes)."""
    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"])


def train_candidate(
    candidate: Candidate, epochs: int, teacher: TrainRecord | None, run: ShipRun, budget: TimeBudget
) -> TrainRecord:
    """Train one candidate (from scratch, or from the teacher's pruned / truncated weights) until the budget's
    cutoff, its epochs re-planned after the first to end by the budget's end."""
    config, run_dir = run.config, run.run_dir
    distill = distilled_from(teacher.checkpoint) if teacher else None
    base = TrainConfig(
        seed=config.seed,
        device=config.device,
        epochs=epochs,
        distill=distill,
        runs_dir=str(run_dir / "candidates"),
        name=candidate.name,
        tensorboard=False,
    )
    if candidate.source in ("pruned", "truncated"):
        assert teacher is not None
        start = _teacher_start(candidate, teacher, config, run_dir / "candidates" / candidate.name)
        train_config = dataclasses.replace(
            base,
            model=candidate.model,
            init_from=str(start),
            data=data_config(config, img_size=None),  # the teacher's input size and normalisation
            optim=STUDENT_FROM_TEACHER,
        )
    else:
        batch = batch_size(config, candidate.img_size)
        steps = epochs * math.ceil(run.state.survey.train_images / batch)
        optim = scratch_recipe(candidate.img_size <= SMALL_IMAGE_SIDE, steps, batch, candidate.model)
        train_config = dataclasses.replace(
            base,
            model=candidate.model,
            width_mult=candidate.width_mult,
            data=data_config(config, img_size=candidate.img_size),
            optim=optim,
            whiten_stem=scratch_whiten_stem(optim),
            identity_init=scratch_identity_init(candidate.model, optim),
            precise_bn=PRECISE_BN_IMAGES,
            amp=candidate.train_amp,  # as the search measured it fastest here
        )
    started = time.time()
    result = train_resumable(train_config, run.reporter, budget.cutoff, fit_epochs(budget.end, MAX_EPOCHS))
    # The schedule's end point, not the val-selected best epoch: the same val images then judge the int8 file, and
    # on a small val set the best of many evaluations is partly luck that int8 rounding undoes (the hymenoptera
    # ship run in RESULTS.md#ship_hymenoptera shows it).
    record = _record(result, result.run_dir / "last.pt", result.history[-1]["val_top1"])
    return dataclasses.replace(
        record, epochs_estimated=epochs, seconds=time.time() - started, distilled=teacher is not None
    )


def cached_student(candidate: Candidate, teacher: TrainRecord | None) -> bool:
    """Whether ``candidate`` trains on the ladder's cache: a truncated or pruned teacher whose first blocks are the
    teacher's, with a teacher to distil from."""
    keeps_front = candidate.source == "truncated" or (candidate.source == "pruned" and bool(candidate.kept_blocks))
    return keeps_front and teacher is not None


def student_tails(candidate: Candidate, student: StackedNet) -> tuple[int, ...]:
    """The trainable tails a cached student may take: a truncated one's last few blocks (its head conv is new); a
    pruned one's every block after those left whole (all of them lost channels)."""
    if candidate.source == "pruned":
        return (len(student.features) - (candidate.kept_blocks or 0),)
    return STUDENT_TAILS


def train_cached_student(
    candidate: Candidate, teacher: TrainRecord, run: ShipRun, budget: TimeBudget, required: bool = True
) -> TrainRecord | None:
    """A truncated student (the teacher's first blocks, a new head conv) or a pruned one (the teacher's first blocks
    whole, the rest narrowed) climbs the ladder: first its last blocks on their cached inputs, distilled from the
    teacher's cached logits, as many blocks and epochs as the budget allows (``student_tails``; its first blocks
    keep the teacher's ImageNet weights); then, when at least FULL_MIN_EPOCHS of end-to-end training still fit in
    it, every layer from there, with the teacher in the loop. The better of the two (last epochs) goes on. The
    budget's spare time, that of the candidates after this one, is taken too when they could not buy the shortest
    tail rung of a student like it (on the proxy, 8 minutes went unused that way)."""
    config, run_dir = run.config, run.run_dir
    folder = run_dir / "candidates" / candidate.name
    tail = _tail_done(folder) or _train_student_tail(candidate, teacher, run, budget, required)
    if tail is None:
        return None
    end = budget.end
    epochs, _ = plan_epochs(candidate, run.state.survey, teacher, budget.left())
    if epochs < FULL_MIN_EPOCHS:
        return tail
    full = TrainConfig(
        model=candidate.model,
        init_from=tail.checkpoint,
        distill=distilled_from(teacher.checkpoint),
        data=data_config(config, img_size=None),
        optim=STUDENT_AFTER_TAIL,
        epochs=epochs,
        seed=config.seed,
        device=config.device,
        runs_dir=str(run_dir / "candidates"),
        name=f"{candidate.name}-full",
        tensorboard=False,
    )
    started = time.time()
    result = train_resumable(full, run.reporter, end, fit_epochs(end, FULL_MAX_STUDENT_EPOCHS))
    record = _record(result, result.run_dir / "last.pt", result.history[-1]["val_top1"])
    if (record.top1 or 0.0) < (tail.top1 or 0.0):
        return dataclasses.replace(tail, rung=f"{tail.rung} (then full fine-tune: {record.top1:.2f}%, not kept)")
    return dataclasses.replace(
        record,
        epochs_estimated=epochs,
        seconds=(tail.seconds or 0.0) + time.time() - started,
        distilled=True,
        rung=f"{tail.rung}, then full fine-tune ({len(result.history)} epochs)",
        trainable_params=sum(p.numel() for p in Checkpoint.load(tail.checkpoint).model().parameters()),
    )


def _tail_done(folder: Path) -> TrainRecord | None:
    """The student's cached tail run when a killed ship finished it (its record is rebuilt from the run)."""
    last = folder / "last.pt"
    if not (last.exists() and (folder / "config.yaml").exists()):
        return None
    checkpoint = Checkpoint.load(last)
    if checkpoint.epoch < planned_epochs(folder):
        return None
    history = checkpoint.metrics.get("history", [])
    blocks = (checkpoint.extra.get("transfer") or {}).get("trainable_blocks")
    model = checkpoint.model()
    return TrainRecord(
        str(last), str(folder), history[-1]["val_top1"], checkpoint.metrics.get("best_top1"), len(history),
        len(history), history, distilled=True, rung=f"last {blocks} blocks",
        trainable_params=sum(p.numel() for p in Tail(model, cut_index(model, blocks)).parameters()),
    )  # fmt: skip


def _train_student_tail(
    candidate: Candidate, teacher: TrainRecord, run: ShipRun, budget: TimeBudget, required: bool
) -> TrainRecord | None:
    """The student's tail rung (see ``train_cached_student``); when none fits in its budget, the shortest if
    ``required``, else None. It stops after the last epoch expected to end by the budget's end."""
    config, run_dir, state = run.config, run.run_dir, run.state
    folder = run_dir / "candidates" / candidate.name
    start = _teacher_start(candidate, teacher, config, folder)
    student = Checkpoint.load(start).model()
    tails = student_tails(candidate, student)
    passes = _teacher_pass_seconds(Checkpoint.load(teacher.checkpoint), teacher.images, run_dir / "cache")
    speeds = measure(student, Checkpoint.load(start).preprocess.img_size, tails, config)  # the teacher's size
    # planned on the time left after the pruning and the speed probes above, which the budget's clock counted
    info = with_images(state.survey, _student_images(speeds, state.survey, tails, passes, budget))
    teacher_seconds = functools.partial(passes, info.train_images)
    views = views_for(speeds, info, budget.left(), teacher_seconds)
    shortest = tail_rung(speeds, info, views, 1e9, tails, MIN_TAIL_EPOCHS)  # any time: its cost
    cost = shortest.seconds + teacher_seconds(views) if shortest else math.inf
    if budget.spare and budget.spare < cost:
        budget.take_spare()  # the candidates after it could not train: this one takes their time
    elif budget.spare and budget.left() < cost:
        budget.take_spare(cost - budget.left())  # its own share cannot buy its shortest rung: what it lacks
    seconds = budget.left() - teacher_seconds(views)
    rung = tail_rung(speeds, info, views, seconds, tails, STUDENT_TAIL_EPOCHS)
    if rung is None and not required:
        return None
    end = budget.end
    if rung is None:  # required (nothing shipped yet): the shortest rung, with the time it needs up to the run's end
        rung = shortest or RungPlan(
            f"last {tails[-1]} blocks", tails[-1], MIN_TAIL_EPOCHS, 0.0, VIEWS[-1], images=info.train_images
        )
        end = min(max(end, time.time() + cost), budget.latest)
    for name in ("last.pt", "best.pt"):  # a run cut short restarts: its trunk passes are cached
        (folder / name).unlink(missing_ok=True)
    base = TrainConfig(
        model=candidate.model,
        init_from=str(start),
        distill=distilled_from(teacher.checkpoint),
        data=data_config(config, img_size=None, data=run_data(run, rung.images)),
        epochs=rung.epochs,
        seed=config.seed,
        device=config.device,
        runs_dir=str(run_dir / "candidates"),
        name=candidate.name,
        tensorboard=False,
    )
    started = time.time()
    _, full_epoch_s = plan_epochs(candidate, info, teacher, 0.0)
    replan = replan_early(tail_epochs(rung, end, full_epoch_s))
    result = train_together(_cached(base, rung, run_dir), run.reporter, callbacks={EPOCH_END: [replan, stop_by(end)]})
    record = _record(result, result.run_dir / "last.pt", result.history[-1]["val_top1"])
    trainable = sum(p.numel() for p in Tail(student, cut_index(student, rung.trainable_blocks)).parameters())
    cached = Checkpoint.load(result.run_dir / "last.pt").extra.get("transfer") or {}
    return dataclasses.replace(
        record,
        epochs_estimated=rung.epochs,
        seconds=time.time() - started,
        distilled=True,
        rung=rung.name,
        trainable_params=trainable,
        images=cached.get("images") or info.train_images,
        views=cached.get("views"),
    )


def tail_epochs(rung: RungPlan, end: float, full_epoch_s: float) -> Callable[[int, float], int]:
    """A student tail's epoch count from its timed epochs (``replan_early``): what fits by ``end``; at most the
    planned count when a full fine-tune (FULL_MIN_EPOCHS epochs of ``full_epoch_s``) still fits after it, else up to
    STUDENT_TAIL_EPOCHS, so that the time the plan's estimates left over is not lost (11 of the proxy's 30 minutes
    once were)."""

    def plan(done: int, epoch_s: float) -> int:
        left = end - time.time()
        fit = done + int(left // (DEADLINE_MARGIN * epoch_s))
        after_planned = left - (rung.epochs - done) * epoch_s
        cap = rung.epochs if after_planned >= FULL_MIN_EPOCHS * full_epoch_s else STUDENT_TAIL_EPOCHS
        return max(done, min(cap, fit))

    return plan


def _teacher_pass_seconds(teacher: Checkpoint, teacher_images: int | None, cache: Path) -> Callable[[int, int], float]:
    """Seconds of the teacher's passes for its logits on ``views`` views of ``images`` training photos: none for the
    views of the ``teacher_images`` photos a cached teacher (a tail run, such as the linear probe; None: all) has
    already computed, one pass of its trunk for each other, at the speed its engine trial recorded in ``cache``
    (ONNX Runtime ran the proxy's 2.7x faster than the eager fp32 timing this falls back to)."""
    cached = int((teacher.extra.get("transfer") or {}).get("views") or 0)
    model = teacher.model().eval()
    cut = teacher_cut(teacher, model)
    memo = memo_path(cache, trunk_digest(model, cut), cut, teacher.preprocess.img_size, TrainConfig().amp)
    speed = recorded_speed(memo) or inference_speed(model, teacher.preprocess.img_size)

    def seconds(images: int, views: int) -> float:
        done = min(images, teacher_images or images) * min(views, cached)
        return MARGIN * max(0, images * views - done) / speed

    return seconds


def _student_images(
    speeds: LadderSpeeds,
    survey: Survey,
    tails: tuple[int, ...],
    passes: Callable[[int, int], float],
    budget: TimeBudget,
) -> int:
    """The training photos a cached student takes: all of them where its shortest tail rung on the fewest views
    (with the teacher's passes for its logits) fits in the time its budget may take; else the most that do (a
    stratified subset, at least ``floor_images``); all of them where not even those fit (the rung then asks for the
    time it needs). Photos come before views (RESULTS.md#cost_growth: more photos paid at every size), and at a
    fixed count of views the cost only grows with the photos, which the search needs."""
    room, views = budget.left() + budget.spare, VIEWS[-1]

    def fits(images: int) -> bool:
        shortest = tail_rung(speeds, with_images(survey, images), views, 1e9, tails, MIN_TAIL_EPOCHS)
        return shortest is not None and shortest.seconds + passes(images, views) <= room

    low = floor_images(len(survey.classes), survey.train_images)
    return most_images(fits, low, survey.train_images) or survey.train_images


def _teacher_start(candidate: Candidate, teacher: TrainRecord, config: ShipConfig, folder: Path) -> Path:
    if candidate.source == "pruned":
        target = candidate.prune_target_bytes or int(config.max_size / FILE_OVERHEAD)
        return prune_teacher(teacher.checkpoint, target, candidate.kept_blocks or 0, config, folder)
    return truncate_teacher(teacher.checkpoint, candidate, folder)


def truncate_teacher(teacher_checkpoint: str, candidate: Candidate, folder: Path) -> Path:
    """The candidate's prefix network with the fine-tuned teacher's weights in every layer they share."""
    path = folder / "truncated.pt"
    if path.exists():
        return path
    teacher = Checkpoint.load(teacher_checkpoint)
    model = build_from_spec(candidate.spec or {})
    state = model.state_dict()
    shared = {
        key: value
        for key, value in teacher.state_dict.items()
        if key in state and value.shape == state[key].shape and not key.startswith("classifier")
    }
    model.load_state_dict(shared, strict=False)
    truncated = Checkpoint.of(
        model,
        classes=teacher.named_classes(),
        preprocess=teacher.preprocess,
        epoch=0,
        config=teacher.config,
        truncation={"source": teacher_checkpoint, "shared_tensors": len(shared)},
    )
    return truncated.save(path)


def start_seconds(candidate: Candidate, teacher: TrainRecord, run_dir: Path) -> float:
    """What making a cached student's starting network still takes: for a pruned one not yet pruned, the teacher's
    passes for its Taylor gradients (forward and backward: ~3 forwards an image) and for BatchNorm's re-estimation,
    at the teacher's forward speed timed now, with the ladder's margin. Under a CPU hog this took 2 of the 2:41
    minutes left, which nothing had counted (RESULTS.md#busy_budget)."""
    if candidate.source != "pruned" or (run_dir / "candidates" / candidate.name / "pruned.pt").exists():
        return 0.0
    checkpoint = Checkpoint.load(teacher.checkpoint)
    images = TAYLOR_PASS_COST * PRUNING.calibration_batches * DataConfig().batch_size + PRUNE_RECALIBRATION_IMAGES
    return MARGIN * images / inference_speed(checkpoint.model(), checkpoint.preprocess.img_size)


def prune_teacher(teacher_checkpoint: str, target: int, keep: int, config: ShipConfig, folder: Path) -> Path:
    """The fine-tuned teacher pruned into the size budget, its first ``keep`` blocks whole, the BatchNorm statistics
    of the rest re-estimated on training images."""
    path = folder / "pruned.pt"
    if path.exists():
        return path
    teacher = Checkpoint.load(teacher_checkpoint)
    size = teacher.preprocess.img_size
    data = DataConfig(data=config.data, workers=config.workers, img_size=size)
    record = {"importance": PRUNING.importance, "global": PRUNING.global_pruning, "keep_blocks": keep}
    gradients = taylor_gradients(teacher, data, PRUNING.calibration_batches) if PRUNING.importance == "taylor" else None
    prune = lambda model: prune_into(model, size, target, keep, gradients)  # noqa: E731
    prune_and_save(teacher, prune, data, PRUNE_RECALIBRATION_IMAGES, config.seed, path, record, keep)
    return path


# ------------------------------------------------------------------------------------------------------ export


def export_attempts(checkpoint: str, runtime: str) -> list[tuple[str, tuple[str, ...]]]:
    """PTQ; then PTQ with the first layer groups left in float; then QAT where the backend takes it (not ONNX,
    which quantizes fp32 graphs only). ``mobiforge export`` searches every layer group for the ones to leave in
    float (minutes: ~20 calibrations); ship, on a clock, tries the groups that search picked on both hymenoptera
    models (the stem, alone or with the first block: RESULTS.md#export_hymenoptera_amd) for one more PTQ export.
    """
    first = tuple(layer_groups(Checkpoint.load(checkpoint).model())[:FIRST_LAYERS_IN_FLOAT])
    qat = [("qat", ())] if get_backend(runtime).supports_qat else []
    return [("ptq", ()), *([("ptq", first)] if first else []), *qat]  # no groups: no repeat of plain PTQ


def above_chance(top1: float, images: int, majority_rate: float) -> bool:
    """Whether ``top1`` (%) on ``images`` val images is clearly above ``majority_rate``: the one-sided binomial
    probability of scoring at least that well by always answering the largest class is under CHANCE_P_VALUE."""
    if images <= 0 or majority_rate >= 1.0:
        return False
    correct = round(top1 * images / 100)
    if correct <= majority_rate * images:
        return False
    log_p, log_q = math.log(majority_rate), math.log1p(-majority_rate)
    tail = sum(
        math.exp(math.lgamma(images + 1) - math.lgamma(k + 1) - math.lgamma(images - k + 1) + k * log_p
                 + (images - k) * log_q)
        for k in range(correct, images + 1)
    )  # fmt: skip
    return tail < CHANCE_P_VALUE


def attempt_seconds(method: str, candidate: Candidate, info: Survey, last_seconds: float) -> float:
    """What one more export attempt takes: a PTQ export, as long as the attempt just made (the same checkpoint,
    calibration and val images: the padded reserve refused a 42 s retry with 50 s left on hymenoptera), or QAT's
    epoch on up to QAT_IMAGES images (at the candidate's measured training speed, with the fake-quant overhead) plus
    its export."""
    if method != "qat":
        return last_seconds
    images = min(QAT_IMAGES, info.train_images)
    speed = candidate.train_images_per_s or UNMEASURED_SPEED
    return QAT_EXPORTS * export_reserve(candidate, info) + QAT_STEP_COST * images / speed


def export_candidate(candidate: Candidate, trained: TrainRecord, run: ShipRun) -> ExportRecord:
    """int8 PTQ through the runtime and the accuracy gate; past a failed gate, PTQ with the first layers in float,
    then QAT (where the backend takes it), while time is left."""
    config, say, state = run.config, run.say, run.state
    folder = Path(trained.run_dir)
    suffix = get_backend(config.runtime).suffix
    reports, last_seconds = [], 0.0
    for method, float_modules in export_attempts(trained.checkpoint, config.runtime):
        label = method.upper() + (f" with {', '.join(float_modules)} in float" if float_modules else "")
        if reports and state.left() < attempt_seconds(method, candidate, state.survey, last_seconds):
            say(f"export: {candidate.name}: missed the gate; no time left for {label}")
            break
        say(f"export: {candidate.name}: int8 {label} -> {config.runtime}, gate through the runtime")
        started = time.time()
        name = f"model-int8-{method}" + ("-float" if float_modules else "")
        report = export_checkpoint(
            ExportConfig(
                checkpoint=trained.checkpoint,
                format=config.runtime,
                int8=method,
                data=config.data,
                out=str(folder / f"{name}{suffix}"),
                calibration_images=CALIBRATION_IMAGES,
                val_images=config.val_images,
                exclude_val=left_out_of_gate(config, state),
                reference_images=REFERENCE_IMAGES,
                qat_images=min(QAT_IMAGES, state.survey.train_images),
                threads=(config.threads,),
                max_drop=config.max_drop,
                float_modules=float_modules,
                float_fallback=False,  # export's full search takes longer than ship's time plan holds
                pixel_input=get_backend(config.runtime).pixel_input,  # what the SDKs feed (MediaPipe, ML Kit)
                workers=loader_workers(config.workers),
                seed=config.seed,
                **card_settings(config),
            )
        )
        reports.append(report)
        last_seconds = time.time() - started
        say(
            f"export: {candidate.name} int8 {label}: top-1 {report.top1:.2f}% through {config.runtime} "
            f"(fp32 {report.torch_fp32_top1:.2f}%), {report.file_bytes / 1e6:.2f} MB, "
            f"{report.latency_ms[str(config.threads)]['median']:.2f} ms"
        )
        if report.passed:
            break
    best = max(reports, key=lambda r: (r.passed, r.top1))
    latency = best.latency_ms[str(config.threads)]["median"]
    verdicts = {
        "size": best.file_bytes <= config.max_size,
        "latency": latency <= config.max_latency_ms,
        "accuracy_gate": bool(best.passed),
    }
    if state.survey.majority_rate is not None:  # a model no better than one constant answer never ships
        verdicts["above_chance"] = above_chance(best.top1, best.images, state.survey.majority_rate)
    if config.min_top1 is not None:  # what the user said is good enough: below it the run failed, whatever else
        verdicts["min_top1"] = best.top1 >= config.min_top1
    return ExportRecord(reports, best, verdicts)


def core_ml_package(trained: TrainRecord, run: ShipRun) -> ArtifactReport | None:
    """The shipped checkpoint as a Core ML package too (``model.mlpackage``, int8 weights), for iOS apps. Core ML
    cannot run here: the package is read back and scored as it computes (``mobiforge.backends.coreml``). None when
    coremltools is missing or the budget has no minute left."""
    config, say, state = run.config, run.say, run.state
    backend = get_backend(CORE_ML)
    try:
        backend.require()
    except MobiforgeError:
        return None
    affordable = (state.left() - CORE_ML_SECONDS) / _core_ml_seconds_per_image(backend, trained.checkpoint)
    images = int(min(config.val_images or state.survey.val_images, CORE_ML_IMAGES, max(0.0, affordable)))
    if images < CORE_ML_MIN_IMAGES:
        say(f"core ml: no time left for the iOS package (its conversion and {CORE_ML_MIN_IMAGES} val images)")
        return None
    say(f"core ml: the shipped checkpoint as model{backend.suffix}, int8 weights, for iOS (not run on this host; "
        f"scored on {images} val images)")  # fmt: skip
    try:
        return _core_ml_export(trained, config, run.run_dir, backend.suffix, images, left_out_of_gate(config, state))
    except MobiforgeError as error:  # the shipped artifact stands; the extra package is skipped, saying why
        say(f"core ml: skipped ({error})")
        return None


def _core_ml_seconds_per_image(backend: Any, checkpoint: str, batch: int = 8) -> float:
    """Seconds to score one val image as export does: the fp32 model and the package's simulated fp16 one, timed
    on a batch of random images (with the decoding's share as a margin)."""
    model = Checkpoint.load(checkpoint).model().eval()
    size = model.preprocess.img_size
    images = torch.randn(batch, 3, size, size)
    simulated = backend.impl().simulated(model, int8=True)
    started = time.perf_counter()
    with torch.inference_mode():
        model(images)
        simulated(images)
    return MARGIN * (time.perf_counter() - started) / batch


def _core_ml_export(
    trained: TrainRecord, config: ShipConfig, run_dir: Path, suffix: str, val_images: int, left_out: tuple[str, ...]
) -> ArtifactReport:
    return export_checkpoint(
        ExportConfig(
            checkpoint=trained.checkpoint,
            format=CORE_ML,
            int8="ptq",  # weights only: nothing to calibrate
            data=config.data,
            out=str(run_dir / f"model{suffix}"),
            calibration_images=1,
            val_images=val_images,
            exclude_val=left_out,
            threads=(config.threads,),
            workers=loader_workers(config.workers),
            seed=config.seed,
            **card_settings(config),
        )
    )


WEB_SCREENSHOT = "web.png"  # in the run folder: the page classifying a camera frame, for the report


def web_page(trained: TrainRecord, run: ShipRun) -> ArtifactReport | None:
    """The shipped checkpoint as a web folder too (``RUN/web/``: a page that runs the int8 ONNX file in the browser),
    gated by running the page in headless Chromium, with a screenshot of it classifying a (stubbed) camera frame.
    None, saying why, when its runtime files, Chromium or Playwright are missing or the budget has no minute left."""
    config, say, state = run.config, run.say, run.state
    missing_part = _web_unavailable()
    if missing_part:
        say(f"web: skipped ({missing_part})")
        return None
    affordable = (state.left() - WEB_SECONDS) / _web_seconds_per_image(trained.checkpoint)
    wanted = min(config.val_images or state.survey.val_images, WEB_IMAGES)
    images = int(min(wanted, max(0.0, affordable)))
    if images < min(wanted, WEB_MIN_IMAGES):
        say(f"web: no time left for the web folder (its export and {WEB_MIN_IMAGES} val images in the browser)")
        return None
    folder = run.run_dir / SHIPPED_WEB_FOLDER
    say(f"web: the shipped checkpoint as {folder.name}/, a page running it in the browser; gated in Chromium on "
        f"{images} val images")  # fmt: skip
    try:
        report = export_checkpoint(
            ExportConfig(
                checkpoint=trained.checkpoint,
                format=WEB,
                int8="ptq",
                data=config.data,
                out=str(folder),
                val_images=images,
                exclude_val=left_out_of_gate(config, state),
                float_fallback=False,  # export's full search takes longer than the minute this holds
                threads=(config.threads,),
                workers=loader_workers(config.workers),
                seed=config.seed,
                **card_settings(config),
            )
        )
    except MobiforgeError as error:  # the shipped artifact stands; the extra folder is skipped, saying why
        say(f"web: skipped ({error})")
        return None
    _web_screenshot(folder, report, run)
    return report


def _web_seconds_per_image(checkpoint: str) -> float:
    """The web gate's seconds per val image, by the model's input pixels (WEB_SECONDS_PER_IMAGE is a WEB_IMAGE_SIDE
    px one's)."""
    side = Checkpoint.load(checkpoint).preprocess.img_size
    return WEB_SECONDS_PER_IMAGE * max(WEB_SMALLEST_SHARE, (side / WEB_IMAGE_SIDE) ** 2)


def _web_unavailable() -> str:
    """What the web folder and its gate need that is missing here (empty: nothing)."""
    try:
        get_backend(WEB).require()
        runtime_package()
        chromium_path()
        import playwright  # noqa: F401 - the gate drives Chromium with it
    except ImportError:
        return "playwright is not installed: pip install 'mobiforge[dev]'"
    except MobiforgeError as error:
        return str(error)
    return ""


def _web_screenshot(folder: Path, report: ArtifactReport, run: ShipRun) -> None:
    """The page classifying a val photo shown to its camera, for the report; a failure is a line, not the run's."""
    data = DataConfig(data=run.config.data)
    image = next((path for path, _ in discover(data).val), None)
    if image is None:
        return
    try:
        camera_screenshot(folder, Path(image), run.run_dir / WEB_SCREENSHOT)
    except Exception as error:  # the browser's own errors: the folder and its gate stand
        run.say(f"web: no screenshot ({type(error).__name__}: {str(error).splitlines()[0][:160]})")


def left_out_of_gate(config: ShipConfig, state: ShipState) -> tuple[str, ...]:
    """``--dedupe-val``: the val photos with a copy in train (the data checks'), which the gate leaves out; none
    when every val photo has one (nothing would be left to judge on: the report says so)."""
    if not config.dedupe_val:
        return ()
    leaked = state.health.leaked_val
    return tuple(leaked) if len(leaked) < state.survey.val_images else ()


def card_settings(config: ShipConfig) -> dict[str, Any]:
    """What the card says of the model, for the files' own metadata (``CARD_FIELDS``)."""
    return {name: getattr(config, name) for name in CARD_FIELDS}
