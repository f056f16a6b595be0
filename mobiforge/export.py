"""Export a checkpoint to a mobile runtime, optionally int8, and verify the artifact *in that runtime*.

Formats: one per row of ``mobiforge.backend_api.BACKENDS`` (ExecuTorch ``.pte`` lowered to the XNNPACK delegate,
LiteRT ``.tflite``, ONNX with a dynamic batch); each backend module writes its own files. int8: post-training or
quantization-aware fine-tuning (PT2E QAT, where the backend takes it); this module prepares the data, the PT2E
calibration and QAT loop that backends share, and the verification.

The accuracy gate: every artifact is run by its own runtime on the validation images; the report gives top-1
through the runtime next to the PyTorch fp32 model's, their top-1 agreement, the max abs logit difference, the file
size and the batch-1 latency (median, p90) on 1 and 2 threads, beside PyTorch eager's. With ``max_drop`` an int8
artifact that loses more top-1 points than that is marked failed (``passed: false`` in the JSON written next to
it; the CLI exits 1) but kept for inspection.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mobiforge import engine
from mobiforge.backend_api import (
    BACKENDS,
    About,
    Int8Job,
    Interface,
    Region,
    backend_for,
    get_backend,
    is_artifact,
)
from mobiforge.checkpoint import Checkpoint
from mobiforge.config import INT8_MODES
from mobiforge.config import ExportConfig as ExportConfig  # public here too
from mobiforge.config import QuantizeConfig as QuantizeConfig
from mobiforge.data import (
    DataConfig,
    ImageSamples,
    checkpoint_data_config,
    data_name,
    eval_transform,
    gate_samples,
    load_rgb,
    relative_to_data,
    spaced_subset,
    split_samples,
    train_transform,
)
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.log import logger
from mobiforge.losses import DistillationLoss, DistillConfig
from mobiforge.models.base import Preprocess
from mobiforge.paths import portable_record
from mobiforge.profile import measure_latency, num_threads
from mobiforge.quantize import (
    fold_batchnorms,
    layer_groups,
    ptq_pt2e,
    qat_pt2e,
    search_float_modules,
    top1_percent,
)
from mobiforge.runtimes import (
    ACCURACY_THREADS,
    artifact_bytes,
    load_runner,
    remove_artifact,
    run_all,
    sidecar,
    verified_on,
    write_labels,
)
from mobiforge.units import named
from mobiforge.untrusted import trust

SEARCH_IMAGES = 96  # labelled training images the float-layer search scores each trial on
QAT_TEMPERATURE = 2.0  # softmax temperature of QAT's distillation from the fp32 model


@dataclass
class ArtifactReport:
    path: str
    format: str
    precision: str  # fp32 | int8-ptq | int8-qat
    file_bytes: int
    images: int
    top1: float  # through the runtime
    torch_fp32_top1: float
    agreement: float  # % of images where the runtime's and PyTorch fp32's top-1 class agree
    max_abs_logit_diff: float  # runtime vs PyTorch fp32
    reference_max_abs_diff: float | None  # int8 runtime vs its PT2E reference model (None for fp32 / ONNX QDQ)
    latency_ms: dict[str, dict[str, float]]  # threads -> median/p90 in the runtime
    torch_latency_ms: dict[str, dict[str, float]]  # threads -> median/p90 of PyTorch eager fp32
    max_drop: float | None = None
    float_modules: list[str] = field(default_factory=list)  # left in float in an int8 artifact
    notes: list[str] = field(default_factory=list)
    # top-1 of the PT2E reference model (simulated int8): against ``top1`` it tells whether a lost image was lost by
    # quantization itself or by the runtime's integer kernels rounding differently (None where there is none)
    reference_top1: float | None = None
    # The shipped file's own figures per class, from the runtime's logits (and the fp32 model's, to compare):
    classes: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # [true][predicted] counts, in the runtime
    fp32_confusion: list[list[int]] = field(default_factory=list)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # precision, recall, f1, support
    # image (relative to the data), label, predicted, confidence
    confident_mistakes: list[dict[str, Any]] = field(default_factory=list)
    wrong_images: list[str] = field(default_factory=list)  # every val image the runtime gets wrong, as above
    pixel_input: bool = False  # the file takes uint8 RGB pixels (NHWC), the normalisation inside its graph
    # False where the runtime cannot run here (Core ML): the top-1 figures are then the PyTorch model computing as
    # the file does (its int8 weight rounding), and latency is not measured
    ran_in_runtime: bool = True
    # The file in the app-side SDK that loads it on phones (MediaPipe Tasks for LiteRT), on the same val pixels:
    sdk: str | None = None
    sdk_top1: float | None = None
    sdk_agreement: float | None = None  # % of images where its top-1 class and the runtime's agree
    sdk_clear_disagreements: int | None = None  # images they disagree on that are not near ties (the gate: none)
    # The SDK as an app runs it: the full-size val images, resized by the SDK itself within the region the snippets
    # give it (the center the model saw), not pixels already at the model's input
    sdk_app_top1: float | None = None

    @property
    def drop(self) -> float:
        return self.torch_fp32_top1 - self.top1

    @property
    def passed(self) -> bool:
        sdk_agrees = not self.sdk_clear_disagreements  # the file the app loads answers as the runtime does
        return sdk_agrees and (self.max_drop is None or self.precision == "fp32" or self.drop <= self.max_drop)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "drop": self.drop, "passed": self.passed}

    @classmethod
    def from_json(cls, path: str | Path) -> ArtifactReport:
        """The report that ``export_checkpoint`` wrote next to an artifact."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactReport:
        """From ``to_dict``'s output (its computed ``drop`` and ``passed`` are recomputed, unknown keys ignored)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


# -------------------------------------------------------------------------------------------------------- data


def _subset(samples: list[Any], count: int | None, seed: int, spaced: bool) -> list[Any]:
    if spaced:
        return spaced_subset(samples, count)
    if count is None or count >= len(samples):
        return samples
    return random.Random(seed).sample(samples, count)


def _tensors(samples: list[Any], preprocess: Preprocess, config: ExportConfig) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = ImageSamples(samples, eval_transform(preprocess), draft_size=preprocess.resize_size)
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers)
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


@dataclass
class ExportData:
    val_images: torch.Tensor
    val_labels: torch.Tensor
    calibration: list[torch.Tensor]
    calibration_labels: torch.Tensor | None
    data_config: DataConfig
    train_samples: list[Any]
    val_samples: list[Any] = field(default_factory=list)  # (path, label) of each val image, in val_images' order
    classes: list[str] = field(default_factory=list)  # the model's outputs, in order
    preprocess: Preprocess = field(default_factory=Preprocess)  # the checkpoint's, which made val_images


def load_export_data(checkpoint: Checkpoint, config: ExportConfig) -> ExportData:
    classes = checkpoint.named_classes()
    preprocess = checkpoint.preprocess
    data_config = checkpoint_data_config(checkpoint.config, config.data)
    saved = (checkpoint.config or {}).get("data") or {}
    data_config = dataclasses.replace(
        data_config,
        **{key: saved[key] for key in ("crop", "hflip", "min_scale") if key in saved},
        img_size=preprocess.img_size,
        mean=preprocess.mean,
        std=preprocess.std,
        batch_size=32,
        workers=config.workers,
    )
    val = gate_samples(data_config, classes, config.val_images, config.exclude_val)
    val_images, val_labels = _tensors(val, preprocess, config)
    calibration: list[torch.Tensor] = []
    calibration_labels, train_samples = None, []
    if config.int8:
        train_samples = split_samples(data_config, "train", classes)
        chosen = _subset(train_samples, config.calibration_images, config.seed, spaced=False)
        images, calibration_labels = _tensors(chosen, preprocess, config)
        calibration = list(images.split(32))
    return ExportData(
        val_images, val_labels, calibration, calibration_labels, data_config, train_samples, val, classes, preprocess
    )


# ----------------------------------------------------------------------------------------------------- pipeline


def default_output(config: ExportConfig) -> Path:
    source = Path(config.checkpoint)
    suffix = f"-int8-{config.int8}" if config.int8 else ""
    return source.with_name(f"{source.stem}{suffix}{get_backend(config.format).suffix}")


def _check(config: ExportConfig) -> None:
    backend = get_backend(config.format)
    if config.int8 not in (None, *INT8_MODES):
        raise MobiforgeError(f"--int8 must be ptq or qat, got {config.int8!r}")
    if config.int8 == "qat" and not backend.supports_qat:
        able = ", ".join(b.name for b in BACKENDS.values() if b.supports_qat)
        raise MobiforgeError(f"--int8 qat is not available for {backend.name}: {backend.no_qat_reason}; use {able}")
    if config.pixel_input and not backend.pixel_input:
        able = ", ".join(b.name for b in BACKENDS.values() if b.pixel_input)
        raise MobiforgeError(f"--uint8-input is not available for {backend.name}; use --format {able}")


def qat_model(
    model: nn.Module, quantizer: Any, data: ExportData, config: ExportConfig, fold: bool, fold_every_bn: bool = False
) -> nn.Module:
    """QAT on ``config.qat_images`` training images. BatchNorm is folded into its conv first where it would stay
    float (``config.float_modules``), or everywhere with ``fold_every_bn`` (a quantizer without conv-BN patterns)."""
    samples = _subset(data.train_samples, config.qat_images, config.seed, spaced=False)
    dataset = ImageSamples(samples, train_transform(data.data_config), seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        dataset, batch_size=32, shuffle=True, drop_last=True, num_workers=config.workers, generator=generator
    )
    optim = engine.OptimConfig(lr=config.qat_lr, momentum=0.9, scheduler="cosine", weight_decay=0.0)
    loss_fn = None
    if config.qat_distill > 0:  # teacher and student see the same images: one preprocessing for both
        same = Preprocess()
        distill = DistillConfig(teacher="fp32 model", alpha=config.qat_distill, temperature=QAT_TEMPERATURE)
        teacher = copy.deepcopy(model).eval()
        # (its student argument serves feature distillation only, which is off here)
        loss_fn = DistillationLoss(teacher, same, teacher, same, distill, label_smoothing=0.1)
    return qat_pt2e(
        fold_batchnorms(model, [""] if fold_every_bn else config.float_modules),  # float pairs: see there
        quantizer,
        loader,
        data.calibration[0],
        config.qat_epochs,
        optim,
        len(loader),
        fold_quantize=fold,
        freeze_bn=config.qat_freeze_bn,
        loss_fn=loss_fn,
    )


def build_artifact(
    model: nn.Module, config: ExportConfig, data: ExportData, path: Path
) -> tuple[nn.Module | None, str]:
    """Write the artifact; returns the PT2E reference model of an int8 PT2E artifact (else None) and a note.
    A converter failing deep inside its own stack becomes one line naming the format and the model."""
    try:
        return _write_artifact(model, config, data, path)
    except MobiforgeError:
        raise
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MobiforgeError(
            f"{config.format} export of {config.checkpoint} failed in the converter: {type(error).__name__}: {first}"
        ) from None


def _write_artifact(
    model: nn.Module, config: ExportConfig, data: ExportData, path: Path
) -> tuple[nn.Module | None, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = get_backend(config.format).impl()
    logger.debug("writing %s (%s, int8 %s, float layers %s)", path, config.format, config.int8, config.float_modules)
    if config.int8 is None:
        backend.write(model, data.val_images[:1].clone(), path, interface(config, data))
        trust(path)  # written here: no child needs to load it first (mobiforge.untrusted)
        return None, ""
    reference, note = backend.write_int8(model, _int8_job(model, config, data), path)
    trust(path)
    return reference, note + _float_note(config)


def _int8_job(model: nn.Module, config: ExportConfig, data: ExportData) -> Int8Job:
    def pt2e(quantizer: Any, fold: bool, fold_every_bn: bool = False) -> nn.Module:
        if config.int8 == "ptq":
            return ptq_pt2e(model, quantizer, data.calibration, fold_quantize=fold)
        return qat_model(model, quantizer, data, config, fold, fold_every_bn)

    return Int8Job(
        example=data.val_images[:1].clone(),
        calibration=data.calibration,
        float_modules=config.float_modules,
        qat=config.int8 == "qat",
        pt2e=pt2e,
        reduce_range=config.onnx_reduce_range,
        interface=interface(config, data),
    )


def interface(config: ExportConfig, data: ExportData) -> Interface:
    """What the app feeds the artifact and reads from it (no normalisation given: the models' default), and what
    the file's metadata says of the model."""
    mean, std = data.data_config.mean or Preprocess().mean, data.data_config.std or Preprocess().std
    described = about(config, data.data_config.data, data.classes)
    seen = {**data.preprocess.to_dict(), "mean": list(mean), "std": list(std)}  # the page resizes as training did
    return Interface(mean, std, tuple(data.classes), config.pixel_input, described, seen)


def about(config: ExportConfig | Any, data: str, classes: list[str]) -> About:
    """The model's name (default: its data's), version, one line on what it does, and its licence as given."""
    shown = named(classes)
    return About(
        name=config.model_name or data_name(data),
        version=config.model_version,
        description=f"Image classifier: one of {len(classes)} classes ({shown}), trained with mobiforge",
        license=config.license or "",
    )


def _float_note(config: ExportConfig) -> str:
    return f"; left in float: {', '.join(config.float_modules)}" if config.float_modules else ""


def _latency(fn: Any, threads: int, seconds: float) -> dict[str, float]:
    with num_threads(threads):
        stats = measure_latency(fn, min_seconds=seconds)
    return {"median": stats.median_ms, "p90": stats.p90_ms}


def export_checkpoint(config: ExportConfig) -> ArtifactReport:
    """Export, run in the runtime, measure, gate; the report is also written as ``<artifact>.json``.

    An int8 artifact (PTQ or QAT, any format) that misses ``max_drop`` is retried with the most sensitive layer
    groups left in float (``float_fallback``); the better of the two through the runtime is kept, and the report
    says what stayed float. The search itself runs on calibrated (PTQ) graphs, ONNX Runtime's own for ONNX: a layer
    that int8 rounding hurts most after calibration is the one fine-tuning has most to make up for, and a PTQ trial
    costs seconds where QAT costs an epoch per trial.
    """
    _check(config)
    backend = get_backend(config.format)
    backend.require()
    path = Path(config.out) if config.out else default_output(config)
    another = is_artifact(path) and backend_for(path) is not backend  # a folder artifact takes any name but those
    if path.suffix != backend.suffix and (another or not backend.marker):
        raise MobiforgeError(f"--out {path}: a {config.format} artifact needs the suffix {backend.suffix}")
    checkpoint = Checkpoint.load(config.checkpoint)
    model = checkpoint.model()
    _check_float_modules(model, config)
    torch.manual_seed(config.seed)
    data = load_export_data(checkpoint, config)

    started = time.time()
    verify = _export_and_verify if backend.runs_here else _export_and_inspect
    report = verify(model, config, data, path)
    if _wants_fallback(config, report):
        report = _retry_with_float_layers(model, config, data, path, report)
    report.notes.append(f"export and verification took {time.time() - started:.0f} s")
    record = {
        **report.to_dict(),
        "classes": checkpoint.named_classes(),  # with the preprocessing: what predict and the app need beside it
        "preprocess": checkpoint.preprocess.to_dict(),
        "data": verified_on(data.data_config, config.val_images, config.exclude_val),  # what eval repeats, to the image
        "checkpoint": str(config.checkpoint),
        "config": dataclasses.asdict(config),
    }
    write_atomic(sidecar(path), json.dumps(portable_record(record, path.parent), indent=2))
    write_labels(path.parent, checkpoint.named_classes())
    return report


def _check_float_modules(model: nn.Module, config: ExportConfig) -> None:
    if config.float_modules and not config.int8:
        raise MobiforgeError("--float-layers applies to int8 exports (--int8 ptq or qat)")
    names = dict(model.named_modules())
    for name in config.float_modules:
        if name not in names:
            groups = ", ".join(layer_groups(model))
            raise MobiforgeError(f"--float-layers {name!r}: the model has no such module; its layer groups: {groups}")


def _wants_fallback(config: ExportConfig, report: ArtifactReport) -> bool:
    wanted = config.float_fallback and config.int8 in ("ptq", "qat") and not config.float_modules
    return wanted and report.ran_in_runtime and not report.passed


def _retry_with_float_layers(
    model: nn.Module, config: ExportConfig, data: ExportData, path: Path, first: ArtifactReport
) -> ArtifactReport:
    """Search the layer groups to leave in float on the labelled calibration images, export again, keep the
    better artifact through the runtime."""
    assert data.calibration_labels is not None and config.max_drop is not None
    # Each trial re-calibrates (histogram observers, the slow part) and re-evaluates: a subset keeps the ~20 trials
    # of an EfficientNet-Lite0 at 224 px to minutes on two cores (it took over 20 minutes on all 256 images).
    images, labels = torch.cat(data.calibration)[:SEARCH_IMAGES], data.calibration_labels[:SEARCH_IMAGES]
    scratch = path.with_name(f"{path.stem}.search-scratch{path.suffix}")
    try:
        job = _int8_job(model, config, data)
        int8_logits = get_backend(config.format).impl().int8_simulator(model, job, images, scratch)
        fallback = search_float_modules(
            model, images, labels, config.max_drop, config.float_fallback_groups, int8_logits
        )
    except Exception as error:  # the all-int8 artifact is written and verified: keep it, say why there is no retry
        first.notes.append(
            f"float-layer search failed ({type(error).__name__}: {str(error).strip()[:200]}); all-int8 kept"
        )
        return first
    finally:
        scratch.unlink(missing_ok=True)
    retry_config = dataclasses.replace(config, float_modules=tuple(fallback.float_modules))
    trial_path = path.with_name(f"{path.stem}.float-fallback{path.suffix}")
    retry = _export_and_verify(model, retry_config, data, trial_path)
    search = (
        f"all-int8 lost {first.drop:.2f} points (over --max-drop {config.max_drop}); layer groups tried in float "
        f"on {len(images)} training images: "
        + "; ".join(f"{'+'.join(t.float_modules)} -> {t.top1:.1f}%" for t in fallback.trials[:5])
        + f" (fp32 {fallback.fp32_top1:.1f}%)"
    )
    if retry.top1 > first.top1:
        _replace_artifact(trial_path, path)
        retry.path = str(path)
        retry.notes.append(search)
        return retry
    remove_artifact(trial_path)
    first.notes.append(f"{search}; all-int8 kept: float {', '.join(fallback.float_modules)} scored {retry.top1:.2f}%")
    return first


def _replace_artifact(source: Path, target: Path) -> None:
    """``source`` renamed to ``target``: a file atomically, a folder artifact (the web's) once the old one is gone."""
    if source.is_dir():
        remove_artifact(target)
    source.replace(target)


def _against_reference(
    reference: nn.Module, runtime_logits: torch.Tensor, data: ExportData, config: ExportConfig
) -> tuple[float, float | None]:
    """The largest logit difference between the runtime and the simulated-int8 graph it was converted from, on
    ``images`` evenly spaced val images (None: all), and the graph's top-1 when it saw them all."""
    total = len(data.val_labels)
    images = config.reference_images
    chosen = torch.linspace(0, total - 1, min(images or total, total)).round().long()
    with torch.no_grad():
        logits = torch.cat([reference(chunk) for chunk in data.val_images[chosen].split(64)])
    if get_backend(config.format).probabilities:
        logits = torch.log_softmax(logits, dim=1)
    diff = (runtime_logits[chosen] - logits).abs().max().item()
    return diff, top1_percent(logits, data.val_labels) if len(chosen) == total else None


def _channels_last(model: nn.Module) -> nn.Module:
    """A copy of the fp32 model in channels_last: about 2x faster than NCHW on CPU for depthwise networks."""
    return copy.deepcopy(model).eval().to(memory_format=torch.channels_last)


def _torch_logits(eager: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([eager(chunk.contiguous(memory_format=torch.channels_last)) for chunk in images.split(64)])


def _export_and_verify(model: nn.Module, config: ExportConfig, data: ExportData, path: Path) -> ArtifactReport:
    reference, note = build_artifact(model, config, data, path)
    eager = _channels_last(model)
    torch_logits = _torch_logits(eager, data.val_images)
    batched = get_backend(config.format).batched
    if get_backend(config.format).probabilities:  # the runner gives log-probabilities: compare like with like
        torch_logits = torch.log_softmax(torch_logits, dim=1)
    runner = load_runner(path, threads=ACCURACY_THREADS, interface=interface(config, data))
    runtime_logits = run_all(runner, data.val_images, batched)
    reference_diff = reference_top1 = None
    if reference is not None and config.reference_images != 0:
        reference_diff, reference_top1 = _against_reference(reference, runtime_logits, data, config)

    example = data.val_images[:1].contiguous()
    latency, torch_latency = {}, {}
    eager_input = example.contiguous(memory_format=torch.channels_last)
    for threads in config.threads:
        timed = load_runner(path, threads=threads, interface=interface(config, data))
        latency[str(threads)] = _latency(lambda timed=timed: timed(example), threads, config.latency_seconds)
        with torch.no_grad():
            torch_latency[str(threads)] = _latency(lambda: eager(eager_input), threads, config.latency_seconds)
    return ArtifactReport(
        path=str(path),
        format=config.format,
        precision=f"int8-{config.int8}" if config.int8 else "fp32",
        file_bytes=artifact_bytes(path),
        **_scores(runtime_logits, torch_logits, data),
        reference_max_abs_diff=reference_diff,
        latency_ms=latency,
        torch_latency_ms=torch_latency,
        max_drop=config.max_drop,
        float_modules=list(config.float_modules),
        notes=[note] if note else [],
        reference_top1=reference_top1,
        pixel_input=config.pixel_input,
        **class_figures(runtime_logits, torch_logits, data),
        **sdk_figures(path, config, data, runtime_logits),
    )


# Two correct int8 executions of one file may round a near tie either way: MediaPipe's image-to-tensor step and
# LiteRT's interpreter gave probabilities up to 0.02 apart on the hymenoptera val set, and one image at 0.51/0.49
# in LiteRT was an exact 0.50/0.50 tie in MediaPipe (RESULTS.md#flipped_images_hymenoptera_amd). The gate counts the
# disagreements outside these.
NEAR_TIE = 0.05  # top two probabilities closer than this


def sdk_figures(path: Path, config: ExportConfig, data: ExportData, runtime_logits: torch.Tensor) -> dict[str, Any]:
    """Top-1 of the file in the SDK that loads it on phones, where the backend names one: on the val images' own
    pixels at the model's input, with its agreement with the runtime's top-1 (the gate asks for all of them); and
    as an app runs it, on the full-size images that the SDK resizes itself (``sdk_app_top1``)."""
    row = get_backend(config.format)
    if not row.sdk_package or not data.classes:
        return {}
    backend = row.impl()
    pixels = interface(config, data).to_pixels(data.val_images.numpy()).transpose(0, 2, 3, 1)
    try:
        by_pixels = backend.sdk_top1(path, ((image, None) for image in pixels))
        as_in_app = backend.sdk_top1(path, app_images(data))
    except MobiforgeError as error:  # recorded: the runtime's own figures stand, the SDK's are missing and why
        return {"sdk": str(error)}
    assert by_pixels is not None and as_in_app is not None, f"{row.name} names an SDK and implements no sdk_top1"
    (sdk, predicted), (_, in_app) = by_pixels, as_in_app
    chosen = torch.from_numpy(predicted).long()
    differs = chosen != runtime_logits.argmax(1)
    top2 = torch.softmax(runtime_logits.float(), dim=1).topk(min(2, runtime_logits.shape[1]), dim=1).values
    near_tie = (top2[:, 0] - top2[:, -1]) < NEAR_TIE
    return {
        "sdk": sdk,
        "sdk_top1": 100.0 * (chosen == data.val_labels).float().mean().item(),
        "sdk_agreement": 100.0 * (~differs).float().mean().item(),
        "sdk_clear_disagreements": int((differs & ~near_tie).sum().item()),
        "sdk_app_top1": 100.0 * (torch.from_numpy(in_app).long() == data.val_labels).float().mean().item(),
    }


def app_images(data: ExportData) -> Iterator[tuple[np.ndarray, Region]]:
    """The val images as a phone app hands them to its SDK: decoded at full size (upright, RGB), one at a time,
    each with the region the model sees of it."""
    for image_path, _ in data.val_samples:
        image = np.asarray(load_rgb(image_path))
        yield image, data.preprocess.region_seen(image.shape[1], image.shape[0])


def _export_and_inspect(model: nn.Module, config: ExportConfig, data: ExportData, path: Path) -> ArtifactReport:
    """For a runtime that cannot run here (Core ML): write the file, read back what it declares, and score the
    PyTorch model computing as the file does (its int8 weight rounding) beside the fp32 model, saying so."""
    _, note = build_artifact(model, config, data, path)
    backend = get_backend(config.format)
    simulated = backend.impl().simulated(model, int8=config.int8 is not None)
    torch_logits = _torch_logits(_channels_last(model), data.val_images)
    with torch.inference_mode():  # NCHW: fp16 convs ran about 2x faster in NCHW than in channels_last here
        file_logits = torch.cat([simulated(chunk) for chunk in data.val_images.split(64)])
    threads = str(max(config.threads))
    with torch.no_grad():
        eager = _latency(lambda: model(data.val_images[:1]), int(threads), config.latency_seconds)
    return ArtifactReport(
        path=str(path),
        format=config.format,
        precision=f"int8-{config.int8}" if config.int8 else "fp16",
        file_bytes=artifact_bytes(path),
        **_scores(file_logits, torch_logits, data),
        reference_max_abs_diff=None,
        latency_ms={},
        torch_latency_ms={threads: eager},
        max_drop=config.max_drop,
        notes=[f"{backend.title}: {backend.impl().NOT_RUN}", *([note] if note else []), *backend.impl().inspect(path)],
        ran_in_runtime=False,
        **class_figures(file_logits, torch_logits, data),
    )


def _scores(file_logits: torch.Tensor, torch_logits: torch.Tensor, data: ExportData) -> dict[str, Any]:
    """The file's top-1 beside fp32 PyTorch's, their agreement and largest logit difference."""
    return {
        "images": len(data.val_labels),
        "top1": top1_percent(file_logits, data.val_labels),
        "torch_fp32_top1": top1_percent(torch_logits, data.val_labels),
        "agreement": 100.0 * (file_logits.argmax(1) == torch_logits.argmax(1)).float().mean().item(),
        "max_abs_logit_diff": (file_logits - torch_logits).abs().max().item(),
    }


MISTAKES_SHOWN = 10  # val images the shipped file gets wrong most confidently, in its report


def _under_data(image: str, data: ExportData) -> str:
    return relative_to_data(image, data.data_config.data)


def class_figures(runtime_logits: torch.Tensor, torch_logits: torch.Tensor, data: ExportData) -> dict[str, Any]:
    """Per-class precision/recall/F1 (scikit-learn's ``classification_report``) and the confusion matrices of the
    runtime's logits and of fp32 PyTorch's, with the val images the runtime gets wrong most confidently."""
    from sklearn.metrics import classification_report, confusion_matrix

    if not data.classes:
        return {}
    labels = data.val_labels.tolist()
    indices = list(range(len(data.classes)))
    predicted = runtime_logits.argmax(1).tolist()
    report = classification_report(
        labels, predicted, labels=indices, target_names=data.classes, output_dict=True, zero_division=0
    )
    confidence = torch.softmax(runtime_logits.float(), 1).max(1).values.tolist()
    wrong = sorted((i for i, (p, t) in enumerate(zip(predicted, labels, strict=True)) if p != t),
                   key=lambda i: -confidence[i])[:MISTAKES_SHOWN]  # fmt: skip
    return {
        "classes": list(data.classes),
        "confusion": confusion_matrix(labels, predicted, labels=indices).tolist(),
        "fp32_confusion": confusion_matrix(labels, torch_logits.argmax(1).tolist(), labels=indices).tolist(),
        "per_class": {
            name: {key: float(report[name][key]) for key in ("precision", "recall", "f1-score", "support")}
            for name in data.classes
        },
        "confident_mistakes": [
            {
                # relative to the data, as the report that shows them and a reader with the same data find them
                "image": _under_data(data.val_samples[i][0], data) if i < len(data.val_samples) else "",
                "label": data.classes[labels[i]],
                "predicted": data.classes[predicted[i]],
                "confidence": confidence[i],
            }
            for i in wrong
        ],
        "wrong_images": [
            _under_data(data.val_samples[i][0], data)
            for i, (p, t) in enumerate(zip(predicted, labels, strict=True))
            if p != t and i < len(data.val_samples)
        ],
    }
