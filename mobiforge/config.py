"""Every setting of every command, as dataclasses: the one source of each default, help text, flag and choice.

The library takes these dataclasses; the CLI is generated from them (``mobiforge.options`` reads each field's
``option(...)`` metadata to build its flags, and fills the dataclass from the flags given, so a flag left out keeps
the field's default). A field without ``option`` metadata is a library-only setting. This module imports nothing
heavy: ``mobiforge --help`` builds every parser from it without loading torch.

Command-specific defaults are written where the command owns them: prune's optimiser is a field default of
``PruneConfig.optim``, not a second copy of ``OptimConfig``'s.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mobiforge.backend_api import DEFAULT_RUNTIME, backend_names, runnable_suffixes
from mobiforge.errors import MobiforgeError
from mobiforge.units import SECONDS, format_bytes, parse_count, parse_duration, parse_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUILTIN_DATASETS = ("digits",)
DEFAULT_LOADER_WORKERS = 2
DEFAULT_MODEL = "mobilenet_v2"
PRETRAINED_TRUNK = "efficientnet_lite0"  # the model zoo's network with real ImageNet weights on this machine
CACHE_MODES = ("auto", "memory", "none")
# what runs a frozen trunk's cache pass (mobiforge.trunk)
TRUNK_ENGINES = ("auto", "eager", "onnxruntime", "onnxruntime-int8")
LABEL_PROBES = ("auto", "linear")  # what judges the labels in doctor (mobiforge.doctor.features)
CROPS = ("rrc", "pad")
OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULERS = ("step", "cosine", "onecycle", "none")
AMP_MODES = ("auto", "bf16", "fp16", "none")
IMPORTANCES = ("l1", "taylor", "bn")
INT8_MODES = ("ptq", "qat")


class InputSpec(Protocol):
    """What ``DataConfig.resolved`` reads of a pretrained model's preprocessing (``models.base.Preprocess``,
    which sits above this module)."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def option(
    help: str = "",
    *,
    flags: tuple[str, ...] = (),
    choices: tuple[str, ...] | Callable[[], list[str]] | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] | None = None,
    positional: bool = False,
    nargs: str | int | None = None,
    const: Any = None,
    group: str | None = None,
    valid: Range | None = None,
) -> dict[str, Any]:
    """The metadata that makes a dataclass field a command-line option.

    ``flags``: the option strings (default ``--field-name``); ``parse``: turns the text into the field's value (a
    size, a duration, a comma list); ``show``: how the default reads in the help; ``group``: a name shared by
    options of which at most one may be given; ``choices`` may be a function, called when the parser is built;
    ``valid``: the values the field accepts (checked by ``check_ranges`` whenever the config is built).
    """
    return {
        "cli": {
            "help": help,
            "flags": flags,
            "choices": choices,
            "metavar": metavar,
            "parse": parse,
            "show": show,
            "positional": positional,
            "nargs": nargs,
            "const": const,
            "group": group,
            "valid": valid,
        }
    }


@dataclass(frozen=True)
class Range:
    """The numbers a field accepts; ``None`` (the field's "default") is always accepted."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)
IMAGE_SIDE = Range(8, 2048)  # pixels: below, the stems' strides leave nothing; above, minutes and GBs per image
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def check_ranges(config: Any) -> None:
    """Refuse a config whose fields hold values outside their ``valid`` range, naming the flag: a negative
    --clip-grad flipped every gradient, and -b 0 or --step-size 0 ended in tracebacks from deep in torch."""
    for item in dataclasses.fields(config):
        meta = item.metadata.get("cli") or {}
        value = getattr(config, item.name)
        valid = meta.get("valid")
        if valid is None or value is None or isinstance(value, bool):
            continue
        if not isinstance(value, int | float) or value not in valid:
            raise MobiforgeError(f"{flag_of(item)[0]} must be {valid.describe()}, got {value!r}")


def check_device(device: str) -> None:
    if not DEVICE.fullmatch(device):
        raise MobiforgeError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


def flag_of(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """A field's option strings, the long one first."""
    meta = field.metadata["cli"]
    return meta["flags"] or ("--" + field.name.replace("_", "-"),)


def opt(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with a default and ``option`` metadata (``default=MISSING``: a required field)."""
    if default is dataclasses.MISSING:
        return field(metadata=option(help, **kwargs))
    return field(default=default, metadata=option(help, **kwargs))


def read_path_list(file: str, flag: str) -> tuple[str, ...]:
    """The paths listed in a text file, one a line (blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(file).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MobiforgeError(f"{flag} {file}: cannot read it ({type(error).__name__}); give a text file") from None
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def comma_tuple(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def comma_list(text: str) -> list[str]:
    return list(comma_tuple(text))


def loader_workers(workers: int | None) -> int:
    return DEFAULT_LOADER_WORKERS if workers is None else workers


# ---------------------------------------------------------------------------------------------------- training


@dataclass
class DataConfig:
    """data: where the images come from and how they are augmented (train, distill, prune, ship)"""

    data: str = opt(
        "digits",
        "image folder (DIR/train + DIR/val|test, or DIR/<class>/), a path,label[,split] CSV, or 'digits' (built in)",
    )
    img_size: int | None = opt(
        None, "input size (default 224; 32 for digits)", valid=IMAGE_SIDE
    )  # None: see resolved_img_size
    val_split: float = opt(0.1, "val fraction when DIR has class folders only", valid=OPEN_FRACTION)
    split_seed: int = opt(0, "seed of that split")
    batch_size: int = opt(64, flags=("--batch-size", "-b"), valid=AT_LEAST_1)
    workers: int | None = opt(
        None,
        "data loader processes (default: 0 when the images are cached in memory on CPU, else 2)",
        flags=("--workers", "-j"),
        valid=NON_NEGATIVE,
    )
    cache: str = opt(
        "auto",
        "decode the images once into memory (auto: when they take under a quarter of RAM, at most 4 GiB)",
        choices=CACHE_MODES,
    )
    skip_bad_images: bool = opt(False, "skip undecodable files instead of failing")
    hflip: bool | None = opt(None, "random horizontal flips (default: on, off for digits)")
    crop: str | None = opt(
        None, "RandomResizedCrop or pad-and-crop (default: pad up to 64 px, else rrc)", choices=CROPS
    )
    min_scale: float = opt(0.08, "RandomResizedCrop's smallest area fraction", valid=Range(0, 1, low_open=True))
    trivial_augment: bool = opt(False, "TrivialAugmentWide")
    random_erasing: float = opt(0.0, "RandomErasing probability", metavar="P", valid=FRACTION)
    mixup: float = opt(0.0, "mixup alpha (0: off)", metavar="ALPHA", valid=NON_NEGATIVE)
    cutmix: float = opt(0.0, "cutmix alpha (0: off)", metavar="ALPHA", valid=NON_NEGATIVE)
    mean: tuple[float, float, float] | None = opt(
        None, "normalisation mean (default: the pretrained weights', else ImageNet's)", nargs=3
    )
    std: tuple[float, float, float] | None = opt(None, "normalisation std (default: as for --mean)", nargs=3)

    def __post_init__(self) -> None:
        check_ranges(self)

    def resolved_img_size(self) -> int:
        if self.img_size is not None:
            return self.img_size
        return 32 if self.data in BUILTIN_DATASETS else 224

    def resolved_workers(self, cached: bool, device_type: str) -> int:
        """Loader processes: the explicit count, else none for cached images on CPU (preparing a cached sample
        costs ~0.1-1 ms in the training process; worker processes would take cores from the training threads)."""
        if self.workers is None and cached and device_type == "cpu":
            return 0
        return loader_workers(self.workers)

    def resolved(self, weights_preprocess: InputSpec | None = None) -> DataConfig:
        """A copy with the input size and normalisation filled in: the explicit values, else those of the
        pretrained weights (a model must see inputs normalised as in its pretraining), else ImageNet's."""
        base = weights_preprocess
        img_size = self.img_size or (base.img_size if base is not None and self.data not in BUILTIN_DATASETS else None)
        return dataclasses.replace(
            self,
            img_size=img_size or self.resolved_img_size(),
            mean=self.mean or (base.mean if base is not None else IMAGENET_MEAN),
            std=self.std or (base.std if base is not None else IMAGENET_STD),
        )


@dataclass
class OptimConfig:
    """optimisation: optimizer, schedule, regularisation (train: the seed article's SGD 0.01/0.9, StepLR)"""

    optimizer: str = opt("sgd", flags=("--optimizer", "--opt"), choices=OPTIMIZERS)
    lr: float = opt(0.01, "learning rate", valid=POSITIVE)
    momentum: float = opt(0.9, valid=Range(0, 1, high_open=True))
    nesterov: bool = opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = opt(0.0, flags=("--weight-decay", "--wd"), valid=NON_NEGATIVE)
    decay_norm_and_bias: bool = opt(False, "also decay BN and bias parameters (usually harmful)")
    norm_bias_lr_scale: float = opt(
        1.0,
        "BatchNorm biases learn this many times faster than --lr, and BatchNorm scales are held at 1 (airbench's 64 "
        "for small images from scratch); 1: off, every BN parameter at --lr",
        valid=POSITIVE,
    )
    scheduler: str = opt("step", flags=("--scheduler", "--sched"), choices=SCHEDULERS)
    step_size: int = opt(10, "epochs between StepLR decays", valid=AT_LEAST_1)
    gamma: float = opt(0.1, "StepLR's decay factor", valid=Range(0, 1, low_open=True))
    warmup_epochs: float = opt(0.0, "linear warm-up, for cosine and step", valid=NON_NEGATIVE)
    min_lr_ratio: float = opt(0.0, "cosine floor as a fraction of --lr", valid=FRACTION)
    label_smoothing: float = opt(0.0, valid=Range(0, 1, high_open=True))
    clip_grad: float | None = opt(None, "max gradient norm", metavar="NORM", valid=POSITIVE)
    ema_decay: float | None = opt(None, "EMA of weights, e.g. 0.999 (evaluated and saved)", flags=("--ema",),
                                  metavar="DECAY", valid=OPEN_FRACTION)  # fmt: skip

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise MobiforgeError("--nesterov applies to --optimizer sgd with --momentum above 0; drop it or set them")


@dataclass
class DistillConfig:
    """distillation: the teacher and the weights of the distillation terms (saved in the student's checkpoints)"""

    teacher: str = opt(
        help="teacher checkpoint, or a model name with pretrained weights (adapted to the data first)",
        metavar="CKPT_OR_MODEL",
    )
    alpha: float = opt(0.5, "weight of the teacher's soft targets (0-1); 1 - alpha goes to the labels", valid=FRACTION)
    temperature: float = opt(4.0, flags=("--temperature", "-T"), valid=POSITIVE)
    feature_weight: float = opt(0.0, "weight of pre-logit feature MSE (equal widths only)", valid=NON_NEGATIVE)
    teacher_epochs: int = opt(3, "epochs to adapt a pretrained teacher given by name", valid=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class TrainConfig:
    """run: everything a training run depends on; saved as config.yaml and inside every checkpoint"""

    model: str = opt(DEFAULT_MODEL, flags=("--model", "-m"))
    width_mult: float | None = opt(None, "channel multiplier", valid=Range(0, 8, low_open=True))
    small_input: bool | None = opt(None, "CIFAR-style stem (default: on for images of 64 px or less)")
    dropout: float | None = opt(None, valid=Range(0, 1, high_open=True))
    pretrained: bool | str = opt(
        False,
        "start from pretrained weights (default entry, or TAG); the classifier is replaced",
        nargs="?",
        const=True,
        metavar="TAG",
    )
    weights: str | None = opt(None, "explicit pretrained weights file", metavar="FILE")
    download: bool = opt(False, "allow downloading missing pretrained weights")
    freeze_epochs: int = opt(
        0, "train only the classifier for N epochs (backbone and its BN frozen)", valid=NON_NEGATIVE
    )
    backbone_lr_scale: float = opt(1.0, "backbone learning rate relative to the classifier's", valid=NON_NEGATIVE)
    freeze_bn: bool = opt(False, "keep BatchNorm statistics fixed throughout")
    precise_bn: int = opt(
        0,
        "re-estimate BatchNorm statistics on this many training images before each evaluation (precise BN: after "
        "a few epochs from scratch the running averages lag the weights and eval can sit at chance); 0: off",
        valid=NON_NEGATIVE,
    )
    trainable_blocks: int | None = opt(
        None,
        "train only the last N blocks (0: the classifier alone, a linear probe) on the frozen network's "
        "outputs, computed once per image and view and cached in the run directory",
        metavar="N",
        valid=NON_NEGATIVE,
    )
    views: int = opt(
        4, "with --trainable-blocks: cached views per training image (the plain crop, then augmented)", valid=AT_LEAST_1
    )
    cache_dir: str | None = opt(
        None,
        "with --trainable-blocks: the feature cache's folder (default: RUN/cache); runs sharing one reuse each "
        "other's trunk passes, e.g. a student's cached teacher logits",
        metavar="DIR",
    )
    trunk_engine: str = opt(
        "auto",
        "with --trainable-blocks: what runs the frozen trunk's passes: eager PyTorch, or the trunk exported to ONNX "
        "Runtime in fp32 or in int8 (calibrated on the folder's images); auto: the fastest, timed here, when the "
        "passes are long enough to repay the export, int8 only where its features match fp32's",
        choices=TRUNK_ENGINES,
    )
    whiten_stem: bool = opt(
        False,
        "from scratch: set the first conv to whiten the training images' patches (PCA, airbench's start) and freeze it",
    )
    identity_init: bool = opt(
        False,
        "from scratch: start each dense conv after the first as a partial identity (its first filters pass their "
        "input channels through; airbench's dirac start)",
    )
    init_from: str | None = None  # start from this checkpoint's model and weights (e.g. a pruned one)
    distill: DistillConfig | None = None  # train as the student of a teacher checkpoint
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int | None = opt(None, "default 30; with --resume: the run's own", valid=AT_LEAST_1)
    seed: int = opt(0)
    deterministic: bool = opt(False, "repeatable results (slower kernels)")
    amp: str = opt(
        "auto",
        "mixed precision (auto: bf16 on CUDA; on CPU none, except a cached frozen trunk's pass, bf16 where native)",
        choices=AMP_MODES,
    )
    channels_last: bool = opt(True, "channels_last memory format (measured several times faster on CPU)")
    compile: bool = opt(False, "torch.compile the model")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    threads: int | None = opt(None, "CPU threads (default: torch's default)", valid=AT_LEAST_1)
    runs_dir: str = opt("runs")
    name: str | None = opt(None, "run directory name (default: model-data-timestamp)")
    resume: str | None = opt(None, "continue runs/NAME/last.pt", metavar="CKPT")
    tensorboard: bool = opt(True, "write TensorBoard events when TensorBoard is installed")
    mlflow: bool = opt(
        False, "log the run to MLflow's local file store, RUNS_DIR/mlruns (pip install 'mobiforge[tracking]')"
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("mean", "std"):
            value = getattr(self.data, key)
            data["data"][key] = list(value) if value is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data_config = dict(data.pop("data", {}))
        for key in ("mean", "std"):
            if data_config.get(key) is not None:
                data_config[key] = tuple(data_config[key])
        distill = data.pop("distill", None)
        return cls(
            data=DataConfig(**data_config),
            optim=OptimConfig(**data.pop("optim", {})),
            distill=DistillConfig(**distill) if distill else None,
            **data,
        )


# ------------------------------------------------------------------------------------------------- compression


@dataclass
class PruneConfig:
    """pruning: what to prune, by how much, and how to fine-tune afterwards (saved in prune_report.json)"""

    checkpoint: str = opt(help="the checkpoint to prune", positional=True, metavar="CKPT")
    data: str | None = opt(None, "image folder (default: the one the checkpoint trained on)")
    ratio: float | None = opt(None, "fraction of channels to remove, e.g. 0.5", group="target", valid=OPEN_FRACTION)
    target_macs: int | None = opt(
        None,
        "prune until at most this many MACs, e.g. 150M",
        parse=lambda text: parse_count(text, "--target-macs"),
        group="target",
        metavar="COUNT",
        valid=AT_LEAST_1,
    )
    target_params: int | None = opt(
        None,
        "prune until at most this many parameters, e.g. 1M",
        parse=lambda text: parse_count(text, "--target-params"),
        group="target",
        metavar="COUNT",
        valid=AT_LEAST_1,
    )
    importance: str = opt("l1", "l1 (weight magnitude), taylor (gradients), bn (BN scales)", choices=IMPORTANCES)
    global_pruning: bool = opt(False, "rank channels across layers", flags=("--global",))
    round_to: int = opt(8, "keep channel counts multiples of this", valid=AT_LEAST_1)
    keep_blocks: int = opt(
        0,
        "leave the network's first N blocks (its features[:N]) unpruned, their BatchNorm statistics as they were: "
        "ImageNet features kept exactly, the rest pruned (0: prune every block)",
        metavar="N",
        valid=NON_NEGATIVE,
    )
    iterative_steps: int = opt(1, "prune in this many steps, re-scoring after each", flags=("--iterative",),
                               metavar="STEPS", valid=AT_LEAST_1)  # fmt: skip
    calibration_batches: int = opt(
        4, "training batches whose gradients score channels for --importance taylor", valid=AT_LEAST_1
    )
    bn_recalibration_images: int = opt(
        512,
        "re-estimate BatchNorm statistics on this many training images after pruning (0: off)",
        flags=("--bn-recalibration",),
        metavar="IMAGES",
        valid=NON_NEGATIVE,
    )
    finetune_epochs: int = opt(0, "fine-tuning epochs after pruning", valid=NON_NEGATIVE)
    batch_size: int = opt(64, flags=("--batch-size", "-b"), valid=AT_LEAST_1)
    workers: int | None = opt(
        None, "data loader processes (default: as for train)", flags=("--workers", "-j"), valid=NON_NEGATIVE
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.01, scheduler="cosine", weight_decay=4e-5)
    )  # fine-tuning a pruned network: a gentle cosine schedule
    distill: DistillConfig | None = None  # fine-tune as the student of a teacher
    seed: int = opt(0)
    threads: int | None = opt(None, "CPU threads (latency is measured with these)", valid=AT_LEAST_1)
    runs_dir: str = opt("runs")
    name: str | None = opt(None, "run directory name (default: model-pruned-timestamp)")

    def __post_init__(self) -> None:
        check_ranges(self)


# ------------------------------------------------------------------------------------------------------ export


# Asked for, never assumed: the licence is the model owner's choice (their data's terms may bind it)
LICENSE_HELP = "the licence the model is shared under, as an SPDX id (e.g. Apache-2.0); the card says 'not stated'"
CARD_FIELDS = ("license", "model_name", "model_version")  # what the card says of the model: not part of a resume


@dataclass
class ExportConfig:
    """export: the runtime, int8 and the accuracy gate"""

    checkpoint: str = opt(help="the checkpoint to export", positional=True, metavar="CKPT")
    format: str = opt(DEFAULT_RUNTIME, "the runtime", flags=("--format", "-f"), choices=backend_names)
    int8: str | None = opt(None, "post-training (ptq) or quantization-aware (qat) int8", choices=INT8_MODES)
    data: str | None = opt(None, "image folder (default: the one the checkpoint trained on)")
    out: str | None = opt(None, "artifact path (default: next to the checkpoint)", flags=("--out", "-o"))
    calibration_images: int = opt(256, "train images that calibrate int8", valid=AT_LEAST_1)
    val_images: int | None = opt(
        None, "verify on an evenly spaced subset of this many val images (default all)", valid=AT_LEAST_1
    )
    exclude_val: tuple[str, ...] = opt(
        (),
        "a text file of val images the gate leaves out, one path relative to the data a line (e.g. the val photos "
        "mobiforge doctor finds with a copy in train)",
        parse=lambda text: read_path_list(text, "--exclude-val"),
        show=lambda value: f"{len(value)} images" if value else "none",
        metavar="FILE",
    )
    # the simulated-int8 graph runs its quantize ops one by one in Python: 1,000 EfficientNet-Lite0 images took 2 min
    reference_images: int | None = opt(
        None,
        "compare the runtime with the simulated-int8 graph on this many of them (default all; 0: skip)",
        valid=NON_NEGATIVE,
    )
    qat_epochs: int = opt(1, valid=AT_LEAST_1)
    qat_images: int | None = opt(None, "train images per QAT epoch, a seeded subset (default all)", valid=AT_LEAST_1)
    qat_lr: float = opt(1e-3, valid=POSITIVE)
    # BN on its running statistics while QAT fine-tunes (torchvision's recipe freezes them after 3 epochs): the
    # fold the fake-quantized graph trains against is then the one convert_pt2e writes
    qat_freeze_bn: bool = opt(True, "QAT fine-tunes with BN on its running statistics (off: the batches update them)")
    # weight of the fp32 model's own soft predictions in the QAT loss (the rest on the labels): fine-tuning then pulls
    # the int8 graph towards the model it replaces; measured to halve the logit error against fp32
    # (RESULTS.md#export_hymenoptera_amd)
    qat_distill: float = opt(
        0.5,
        "weight of the fp32 model's soft predictions in the QAT loss, the rest on the labels (0: labels only)",
        metavar="ALPHA",
        valid=FRACTION,
    )
    max_drop: float | None = opt(None, "fail if int8 loses more top-1 points than this", valid=NON_NEGATIVE)
    # ONNX int8 weights in 7 bits (ONNX Runtime's reduce_range); None: where this CPU's int8 kernels saturate
    onnx_reduce_range: bool | None = opt(
        None, "7-bit ONNX int8 weights (default: only on x86 CPUs without VNNI, where ONNX Runtime's kernels saturate)"
    )
    float_modules: tuple[str, ...] = opt(
        (),
        "comma-separated modules to keep in float in an int8 export, e.g. features.0,classifier",
        flags=("--float-layers",),
        parse=comma_tuple,
        metavar="NAMES",
        show=",".join,
    )
    float_fallback: bool = opt(True, "when int8 misses --max-drop, search for layers to leave in float and retry")
    # what MediaPipe Tasks and ML Kit feed image models from a camera frame or bitmap (ship writes it)
    pixel_input: bool = opt(
        False, "tflite: uint8 RGB input, 0-255, with the normalisation folded into the graph", flags=("--uint8-input",)
    )
    float_fallback_groups: int = 3  # ... at most this many
    license: str | None = opt(None, LICENSE_HELP, metavar="SPDX")
    model_name: str | None = opt(None, "the model's name in its card and metadata (default: the data's name)")
    model_version: str = opt("1", "the model's version in its card and metadata")
    batch_size: int = opt(64, flags=("--batch-size", "-b"), valid=AT_LEAST_1)
    workers: int = opt(DEFAULT_LOADER_WORKERS, flags=("--workers", "-j"), valid=NON_NEGATIVE)
    threads: tuple[int, ...] = (1, 2)
    latency_seconds: float = 1.0  # each latency is timed for at least this long (and 30 runs)
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class QuantizeConfig(ExportConfig):
    """quantize: export with int8 (``mobiforge quantize`` is ``mobiforge export --int8``)"""

    int8: str | None = opt("ptq", "post-training (ptq) or quantization-aware (qat) int8", flags=("--method",),
                           choices=INT8_MODES)  # fmt: skip


# -------------------------------------------------------------------------------------------------------- ship


def _show_size(value: int) -> str:
    return format_bytes(value).replace(" ", "").replace(".00", "")


@dataclass
class ShipConfig:
    """ship: what is asked for; saved in the state file (a rerun must ask for the same)"""

    data: str = opt("digits", "image folder (as for train) or 'digits' (built in)")
    max_size: int = opt(
        1_000_000,
        "largest int8 artifact file (1MB, 800KB, 2MiB)",
        parse=parse_size,
        show=_show_size,
        metavar="SIZE",
        valid=AT_LEAST_1,
    )
    max_latency_ms: float = opt(
        100.0,
        "median batch-1 latency in the runtime (100ms, 0.1s; a bare number is ms)",
        flags=("--max-latency",),
        parse=lambda text: parse_duration(text, "ms", "--max-latency", to="ms"),
        show=lambda v: f"{v:g}ms",
        metavar="TIME",
        valid=POSITIVE,
    )
    runtime: str = opt(DEFAULT_RUNTIME, "the runtime the model ships in", choices=backend_names)
    threads: int = opt(1, "threads the latency is measured with", valid=AT_LEAST_1)
    time_budget_s: float = opt(
        1800.0,
        "wall time for the whole run (30m, 1h, 90s; a bare number is minutes; at least 60 s: surveying, measuring, "
        "one epoch and the int8 gate take that on a tiny dataset)",
        flags=("--time-budget",),
        parse=lambda text: parse_duration(text, "m", "--time-budget"),
        show=lambda v: f"{v / SECONDS['m']:g}m",
        metavar="TIME",
        valid=Range(60),
    )
    teacher: str = opt("auto", "auto (pretrained EfficientNet-Lite0), none, or a CKPT")
    out: str | None = opt(None, "run directory (default runs/ship-<data name>)", flags=("--out", "-o"))
    max_drop: float = opt(1.0, "int8 accuracy gate: top-1 points lost through the runtime", valid=NON_NEGATIVE)
    min_top1: float | None = opt(
        None, "val top-1 (%%) the shipped file must reach through the runtime; below it, nothing ships (exit 1)",
        metavar="PERCENT", valid=Range(0, 100),
    )  # fmt: skip
    models: list[str] | None = opt(None, "comma-separated families to search (default: all)", parse=comma_list)
    img_size: int | None = opt(None, "one input size instead of the data's regime", valid=IMAGE_SIDE)
    max_candidates: int = opt(3, "fitting candidates the search looks for", valid=AT_LEAST_1)
    max_trained: int = opt(2, "of which at most this many are trained", valid=AT_LEAST_1)
    batch_size: int | None = opt(
        None, "default 128 (small images) or 32", flags=("--batch-size", "-b"), valid=AT_LEAST_1
    )
    workers: int | None = opt(
        None, "data loader processes (default: as for train)", flags=("--workers", "-j"), valid=NON_NEGATIVE
    )
    val_images: int | None = opt(
        None, "gate on an evenly spaced subset of this many val images (default all)", valid=AT_LEAST_1
    )
    skip_bad_images: bool = opt(False, "skip undecodable files instead of failing")
    dedupe_val: bool = opt(
        False, "gate and choose the model on the val photos without a copy in train (the data checks find them); "
        "the report gives the gate's score with and without them either way",
    )  # fmt: skip
    seed: int = opt(0)
    device: str = opt(
        "auto", "where the trunk's passes and end-to-end training run: auto (a GPU when there is one), cpu, cuda or "
        "cuda:N; the exports, the gate and the cached tails run on the CPU",
    )  # fmt: skip
    license: str | None = opt(None, LICENSE_HELP, metavar="SPDX")
    model_name: str | None = opt(None, "the model's name in its card and metadata (default: the data's name)")
    model_version: str = opt("1", "the model's version in its card and metadata")

    def __post_init__(self) -> None:
        check_ranges(self)
        check_device(self.device)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else data_run_dir("ship", self.data)


def data_run_dir(command: str, data: str) -> Path:
    """``runs/<command>-<the data's name>``: a labels.csv is named by its folder."""
    source = Path(data).resolve()
    source = source.parent if source.suffix.lower() == ".csv" else source
    name = "digits" if data in BUILTIN_DATASETS else (source.name or "data")
    return Path("runs") / f"{command}-{name}"


# ------------------------------------------------------------------------------------------------------ doctor


@dataclass
class DoctorConfig:
    """doctor: exact and near copies, val photos leaked into train, wrong labels and odd files in an image folder"""

    data: str = opt(
        help="image folder (train/ and val/, class folders to split, or a path,label[,split] CSV), or digits",
        positional=True, metavar="DIR",
    )  # fmt: skip
    out: str | None = opt(None, "report folder (default runs/doctor-<data name>)", flags=("--out", "-o"))
    fix: bool = opt(
        False, "also write cleaned.csv (path,label,split) without the leaked val photos and the exact copies, for "
        "train and ship; the folder itself is never touched",
    )  # fmt: skip
    features: bool = opt(
        True, "the checks on the pretrained trunk's features: label issues, near-copies, leaks, outliers, bursts"
    )
    val_split: float = opt(0.1, "val fraction when DIR has class folders only", valid=OPEN_FRACTION)
    split_seed: int = opt(0, "seed of that split")
    folds: int = opt(5, "folds of the probes whose held-out predictions judge the labels", valid=Range(2, 20))
    label_probe: str = opt(
        "auto", "auto: besides the linear probe, fine-tune the trunk's last blocks per fold where the folder is small "
        "enough, and judge the labels with the probe that agrees more with them out of fold; linear: the linear "
        "probe alone (seconds on a warm cache, as ship runs it)", choices=LABEL_PROBES,
    )  # fmt: skip
    cache_dir: str | None = opt(None, "feature cache folder, which runs may share (default OUT/cache)", metavar="DIR")
    trunk_engine: str = opt("auto", "what runs the trunk's pass", choices=TRUNK_ENGINES)
    device: str = opt("auto", "where the trunk's pass runs: auto (a GPU when there is one), cpu, cuda or cuda:N")
    workers: int = opt(DEFAULT_LOADER_WORKERS, "processes decoding the files", flags=("--workers", "-j"),
                       valid=NON_NEGATIVE)  # fmt: skip
    shown: int = opt(24, "examples shown per section of doctor.html (doctor.json lists them all)", valid=AT_LEAST_1)
    seed: int = opt(0)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_device(self.device)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else data_run_dir("doctor", self.data)


# -------------------------------------------------------------------------------------- eval, predict, profile


@dataclass
class EvalOptions:
    """evaluation of a checkpoint or an exported file on a split of an image folder"""

    checkpoint: str = opt(
        help=f"a checkpoint (.pt), or an exported {runnable_suffixes()} file, run in its own runtime on the data "
        "and split its export was verified on",
        positional=True,
        metavar="CKPT",
    )
    data: str | None = opt(None, "image folder (default: what the checkpoint trained on, or the file was verified on)")
    split: str = opt("val", "val, test or train")
    batch_size: int = opt(64, flags=("--batch-size", "-b"), valid=AT_LEAST_1)
    workers: int = opt(DEFAULT_LOADER_WORKERS, flags=("--workers", "-j"), valid=NON_NEGATIVE)
    skip_bad_images: bool = opt(False, "skip undecodable files instead of failing")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class PredictOptions:
    """prediction: the top-k classes of each image, with the checkpoint's or the exported file's preprocessing"""

    checkpoint: str = opt(
        help=f"a checkpoint (.pt), or an exported {runnable_suffixes()} file, run in its own runtime",
        positional=True,
        metavar="CKPT",
    )
    images: list[str] = opt(help="image files, or folders of them", positional=True, nargs="+", metavar="IMAGE")
    top_k: int = opt(5, flags=("--top-k", "-k"), valid=AT_LEAST_1)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class ServeConfig:
    """serve: a local page to try an exported model on your own photos, run in its own runtime"""

    target: str = opt(help=f"a ship run folder (its model.*) or an exported {runnable_suffixes()} file",
                      positional=True, metavar="RUN_DIR|ARTIFACT")  # fmt: skip
    host: str = opt("127.0.0.1", "address to bind (the default keeps the page on this machine)")
    port: int = opt(8000, "port (0: any free one)", valid=Range(0, 65535))
    threads: int = opt(1, "runtime threads, as for the latency budget", valid=AT_LEAST_1)
    lan: bool = opt(False, "serve the web folder (the model runs in the visitor's browser) on the local network, "
                    "with a QR code of its address for a phone")  # fmt: skip

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class ProfileOptions:
    """profile: a model built by name, a checkpoint, or an exported file"""

    model: str = opt(
        DEFAULT_MODEL,
        "a registered model name, a checkpoint .pt file or an exported file",
        positional=True,
        nargs="?",
        metavar="MODEL_OR_CHECKPOINT",
    )
    img_size: int | None = opt(None, "input size (default: the model's own)", valid=IMAGE_SIDE)
    batch_size: int = opt(1, valid=AT_LEAST_1)
    threads: int | None = opt(None, "CPU threads (default: torch's default; 1 for an exported file)", valid=AT_LEAST_1)
    max_size: int | None = opt(
        None,
        "budget on the int8 weight size (an exported file's own size), e.g. 1MB",
        parse=parse_size,
        metavar="SIZE",
        valid=AT_LEAST_1,
    )
    max_latency_ms: float | None = opt(
        None,
        "budget on the median latency, e.g. 100ms (a bare number is ms)",
        flags=("--max-latency",),
        parse=lambda text: parse_duration(text, "ms", "--max-latency", to="ms"),
        metavar="TIME",
        valid=POSITIVE,
    )
    num_classes: int | None = opt(
        None, "classifier outputs, when MODEL is a name (model default: 1000)", valid=AT_LEAST_1
    )
    width_mult: float | None = opt(None, "channel multiplier, when MODEL is a name", valid=Range(0, 8, low_open=True))
    small_input: bool | None = opt(None, "CIFAR-style variant for 32 px images, when MODEL is a name")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class ModelsOptions:
    """models: the registered models, or their pretrained weights"""

    pattern: str = opt("*", "substring or shell pattern, e.g. 'mobilenet_v3*'", positional=True, nargs="?")
    img_size: int = opt(224, "input size for the MAC count", valid=IMAGE_SIDE)
    weights: bool = opt(False, "list the pretrained weights entries instead")

    def __post_init__(self) -> None:
        check_ranges(self)
