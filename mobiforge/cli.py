"""The ``mobiforge`` command: argument parsing only; each subcommand calls the library and prints its result.

Errors the user can fix (a wrong name, a missing file, a bad flag value) arrive as ``MobiforgeError`` and are
printed as one line, exit status 2; a failed budget check exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from mobiforge.backends import DEFAULT_RUNTIME, backend_names, is_artifact
from mobiforge.errors import MobiforgeError
from mobiforge.log import DEBUG_ENV, configure, debug_requested
from mobiforge.units import format_bytes, parse_count, parse_duration, parse_size

DEFAULT_MODEL = "mobilenet_v2"


def _model_args(parser: argparse.ArgumentParser) -> None:
    """Flags that shape a model built by name (ignored for checkpoints, which carry their own spec)."""
    group = parser.add_argument_group("model (when MODEL is a name)")
    group.add_argument("--num-classes", type=int, default=None, help="classifier outputs (model default: 1000)")
    group.add_argument("--width-mult", type=float, default=None, help="channel multiplier")
    group.add_argument("--small-input", action="store_true", default=None, help="CIFAR-style variant for 32 px images")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Data flags, shared by every command that trains (train, distill, prune fine-tuning, ship)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        default="digits",
        help="image folder (DIR/train + DIR/val|test, or DIR/<class>/) or 'digits' (built in, default)",
    )
    group.add_argument("--img-size", type=int, default=None, help="input size (default 224; 32 for digits)")
    group.add_argument("--val-split", type=float, default=0.1, help="val fraction when DIR has class folders only")
    group.add_argument("--split-seed", type=int, default=0)
    group.add_argument("--batch-size", "-b", type=int, default=64)
    group.add_argument(
        "--workers",
        "-j",
        type=int,
        default=None,
        help="data loader processes (default: 0 when the images are cached in memory on CPU, else 2)",
    )
    group.add_argument(
        "--cache",
        choices=["auto", "memory", "none"],  # mobiforge.data.CACHE_MODES; imported lazily
        default="auto",
        help="decode the images once into memory (auto: when they take under a quarter of RAM, at most 4 GiB)",
    )
    group.add_argument("--skip-bad-images", action="store_true", help="skip undecodable files instead of failing")
    group.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (default: on, off for digits)",
    )
    group.add_argument(
        "--crop",
        choices=["rrc", "pad"],
        default=None,
        help="RandomResizedCrop or pad-and-crop (default: pad up to 64 px, else rrc)",
    )
    group.add_argument("--min-scale", type=float, default=0.08, help="RandomResizedCrop's smallest area")
    group.add_argument("--trivial-augment", action="store_true", help="TrivialAugmentWide")
    group.add_argument("--random-erasing", type=float, default=0.0, metavar="P")
    group.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA")
    group.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA")
    group.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=None,
        help="normalisation mean (default: the pretrained weights', else ImageNet's)",
    )
    group.add_argument("--std", type=float, nargs=3, default=None)


def add_optim_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimisation (defaults: the seed article's SGD 0.01/0.9, StepLR(10, 0.1))")
    group.add_argument("--optimizer", "--opt", choices=["sgd", "adamw", "rmsprop"], default="sgd")
    group.add_argument("--lr", type=float, default=0.01)
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight-decay", "--wd", type=float, default=0.0)
    group.add_argument("--decay-norm-and-bias", action="store_true", help="also decay BN and bias parameters")
    group.add_argument("--scheduler", "--sched", choices=["step", "cosine", "onecycle", "none"], default="step")
    group.add_argument("--step-size", type=int, default=10, help="epochs between StepLR decays")
    group.add_argument("--gamma", type=float, default=0.1)
    group.add_argument("--warmup-epochs", type=float, default=0.0)
    group.add_argument("--label-smoothing", type=float, default=0.0)
    group.add_argument("--clip-grad", type=float, default=None, metavar="NORM")
    group.add_argument("--ema", type=float, default=None, metavar="DECAY", help="EMA of weights, e.g. 0.999")


def add_distill_args(parser: argparse.ArgumentParser, teacher_required: bool) -> None:
    group = parser.add_argument_group("distillation")
    group.add_argument(
        "--teacher",
        required=teacher_required,
        default=None,
        metavar="CKPT_OR_MODEL",
        help="teacher checkpoint, or a model name with pretrained weights (adapted to the data first)",
    )
    group.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher's soft targets (0-1)")
    group.add_argument("--temperature", "-T", type=float, default=4.0)
    group.add_argument(
        "--feature-weight", type=float, default=0.0, help="weight of pre-logit feature MSE (equal widths only)"
    )
    group.add_argument("--teacher-epochs", type=int, default=3, help="epochs to adapt a pretrained teacher")


def distill_config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from mobiforge.losses import DistillConfig

    if not args.teacher:
        return None
    return DistillConfig(args.teacher, args.alpha, args.temperature, args.feature_weight, args.teacher_epochs)


def add_train_args(parser: argparse.ArgumentParser, model_flags: tuple[str, ...] = ("--model", "-m")) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(*model_flags, dest="model", default=DEFAULT_MODEL)
    group.add_argument("--width-mult", type=float, default=None)
    group.add_argument(
        "--small-input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CIFAR-style stem (default: on for images of 64 px or less)",
    )
    group.add_argument("--dropout", type=float, default=None)
    group.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=False,
        metavar="TAG",
        help="start from pretrained weights (default entry, or TAG); the classifier is replaced",
    )
    group.add_argument("--weights", default=None, metavar="FILE", help="explicit pretrained weights file")
    group.add_argument("--download", action="store_true", help="allow downloading missing pretrained weights")
    group.add_argument("--freeze-epochs", type=int, default=0, help="train only the classifier for N epochs")
    group.add_argument("--backbone-lr-scale", type=float, default=1.0, help="backbone lr relative to the head's")
    group.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed throughout")
    group.add_argument("--epochs", type=int, default=None, help="default 30; with --resume: the run's own")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--deterministic", action="store_true", help="repeatable results (slower kernels)")
    group.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "none"],
        default="auto",
        help="mixed precision (auto: bf16 on CUDA, none on CPU)",
    )
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--compile", action="store_true", help="torch.compile the model")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    group.add_argument("--runs-dir", default="runs")
    group.add_argument("--name", default=None, help="run directory name (default: model-data-timestamp)")
    group.add_argument("--resume", default=None, metavar="CKPT", help="continue runs/NAME/last.pt")
    group.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    add_data_args(parser)
    add_optim_args(parser)


def train_config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from mobiforge.data import DataConfig
    from mobiforge.engine import OptimConfig
    from mobiforge.train import TrainConfig

    def pick(cls):  # type: ignore[no-untyped-def]
        names = {f.name for f in dataclasses.fields(cls)}
        return {key: value for key, value in vars(args).items() if key in names}

    data = DataConfig(**pick(DataConfig))
    data.mean = tuple(data.mean) if data.mean else None  # type: ignore[assignment]
    data.std = tuple(data.std) if data.std else None  # type: ignore[assignment]
    optim = OptimConfig(**{**pick(OptimConfig), "ema_decay": args.ema})
    run = {key: value for key, value in pick(TrainConfig).items() if key not in ("data", "optim", "distill")}
    return TrainConfig(data=data, optim=optim, **run)


def build_parser() -> argparse.ArgumentParser:
    from mobiforge import __version__

    parser = argparse.ArgumentParser(
        prog="mobiforge",
        description="Train, compress and ship MobileNet-family image classifiers to phones and edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"mobiforge {__version__}")
    debug_help = f"log what mobiforge decides and show the traceback behind an error (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command too, without overriding it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_command = functools.partial(commands.add_parser, parents=[common])

    models = add_command("models", help="list the registered models with parameters and MACs")
    models.add_argument("pattern", nargs="?", default="*", help="substring or shell pattern, e.g. 'mobilenet_v3*'")
    models.add_argument("--img-size", type=int, default=224, help="input size for the MAC count (default 224)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--weights", action="store_true", help="list the pretrained weights entries instead")
    models.set_defaults(handler=run_models)

    profile = add_command(
        "profile",
        help="parameters, MACs, sizes, measured latency and peak memory of a model or checkpoint; an exported "
        ".pte/.tflite/.onnx file is timed in its own runtime",
    )
    profile.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        metavar="MODEL_OR_CHECKPOINT",
        help=f"a registered model name, a checkpoint .pt file or an exported file (default: {DEFAULT_MODEL})",
    )
    profile.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    profile.add_argument("--batch-size", type=int, default=1)
    profile.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's default; 1 for an exported file)"
    )
    profile.add_argument(
        "--max-size", default=None, help="budget on the int8 weight size (an exported file's own size), e.g. 1MB"
    )
    profile.add_argument("--max-latency", default=None, help="budget on the median latency, e.g. 100ms")
    profile.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _model_args(profile)
    profile.set_defaults(handler=run_profile)

    train = add_command("train", help="train a model on an image folder (default: built-in digits)")
    add_train_args(train)
    train.set_defaults(handler=run_train)

    evaluate = add_command("eval", help="top-1/top-5, per-class accuracy and confusion of a checkpoint")
    evaluate.add_argument("checkpoint", metavar="CKPT")
    evaluate.add_argument("--data", default=None, help="image folder (default: the one the checkpoint trained on)")
    evaluate.add_argument("--split", default="val", help="val, test or train")
    evaluate.add_argument("--batch-size", "-b", type=int, default=64)
    evaluate.add_argument("--workers", "-j", type=int, default=2)
    evaluate.add_argument("--skip-bad-images", action="store_true")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=run_eval)

    distill = add_command("distill", help="train a student model with a teacher's soft targets (same flags as train)")
    add_train_args(distill, model_flags=("--student", "--model", "-m"))
    add_distill_args(distill, teacher_required=True)
    distill.set_defaults(handler=run_distill)

    prune = add_command("prune", help="structured channel pruning of a checkpoint, then fine-tuning")
    prune.add_argument("checkpoint", metavar="CKPT")
    prune.add_argument("--data", default=None, help="image folder (default: the one the checkpoint trained on)")
    target = prune.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float, default=None, help="fraction of channels to remove, e.g. 0.5")
    target.add_argument("--target-macs", default=None, help="prune until at most this many MACs, e.g. 150M")
    target.add_argument("--target-params", default=None, help="prune until at most this many parameters, e.g. 1M")
    prune.add_argument("--importance", choices=["l1", "taylor", "bn"], default="l1")
    prune.add_argument("--global", dest="global_pruning", action="store_true", help="rank channels across layers")
    prune.add_argument("--round-to", type=int, default=8, help="keep channel counts multiples of this")
    prune.add_argument("--iterative", dest="iterative_steps", type=int, default=1, metavar="STEPS")
    prune.add_argument(
        "--bn-recalibration",
        type=int,
        default=512,
        metavar="IMAGES",
        help="re-estimate BatchNorm statistics on this many training images after pruning (0: off)",
    )
    prune.add_argument("--finetune-epochs", type=int, default=0)
    prune.add_argument("--batch-size", "-b", type=int, default=64)
    prune.add_argument("--workers", "-j", type=int, default=None)
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--threads", type=int, default=None, help="CPU threads (latency is measured with these)")
    prune.add_argument("--runs-dir", default="runs")
    prune.add_argument("--name", default=None)
    prune.add_argument("--json", action="store_true")
    add_optim_args(prune)
    prune.set_defaults(lr=0.01, scheduler="cosine", weight_decay=4e-5)
    add_distill_args(prune, teacher_required=False)
    prune.set_defaults(handler=run_prune)

    export = add_command(
        "export", help="export a checkpoint to ExecuTorch, LiteRT or ONNX (optionally int8) and verify it there"
    )
    _export_args(export)
    export.add_argument("--format", "-f", choices=backend_names(), required=True)
    export.add_argument("--int8", choices=["ptq", "qat"], default=None, help="post-training or quantization-aware")
    export.set_defaults(handler=run_export)

    quantize = add_command("quantize", help="int8 export (PTQ or QAT), verified in the runtime")
    _export_args(quantize)
    quantize.add_argument("--format", "-f", choices=backend_names(), default=DEFAULT_RUNTIME)
    quantize.add_argument("--method", dest="int8", choices=["ptq", "qat"], default="ptq")
    quantize.set_defaults(handler=run_export)

    ship = add_command(
        "ship", help="image folder + device budget -> the best verified int8 on-device model, with a report"
    )
    _ship_args(ship)
    ship.set_defaults(handler=run_ship)

    predict = add_command("predict", help="top-k classes of images, with the checkpoint's preprocessing")
    predict.add_argument("checkpoint", metavar="CKPT")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", "-k", type=int, default=5)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=run_predict)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from mobiforge.cli_progress import RichReporter
    from mobiforge.train import train

    config = train_config_from_args(args)
    with RichReporter() as reporter:
        result = train(config, reporter)
    return _print_run_result(result)


def _print_run_result(result) -> int:  # type: ignore[no-untyped-def]
    if not result.history:
        return 130 if result.interrupted else 0
    last = result.last
    print(
        f"done: val top-1 {last['val_top1']:.2f}% (best {result.best_top1:.2f}%), top-5 {last['val_top5']:.2f}% "
        f"after {last['epoch']} epochs; checkpoints in {result.run_dir}"
    )
    return 130 if result.interrupted else 0


def run_distill(args: argparse.Namespace) -> int:
    from mobiforge.cli_progress import RichReporter
    from mobiforge.distill import distill

    config = dataclasses.replace(train_config_from_args(args), distill=distill_config_from_args(args))
    with RichReporter() as reporter:
        result = distill(config, reporter)
    return _print_run_result(result)


def run_prune(args: argparse.Namespace) -> int:
    from mobiforge.cli_progress import RichReporter
    from mobiforge.engine import OptimConfig
    from mobiforge.prune import PruneConfig, prune

    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    optim = OptimConfig(**{k: v for k, v in vars(args).items() if k in optim_fields}, ema_decay=args.ema)
    config = PruneConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        ratio=args.ratio,
        target_macs=parse_count(args.target_macs, "--target-macs") if args.target_macs else None,
        target_params=parse_count(args.target_params, "--target-params") if args.target_params else None,
        importance=args.importance,
        global_pruning=args.global_pruning,
        round_to=args.round_to,
        iterative_steps=args.iterative_steps,
        bn_recalibration_images=args.bn_recalibration,
        finetune_epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        optim=optim,
        distill=distill_config_from_args(args),
        seed=args.seed,
        threads=args.threads,
        runs_dir=args.runs_dir,
        name=args.name,
    )
    with RichReporter() as reporter:
        result = prune(config, reporter)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pruning {args.checkpoint} -> {result.checkpoint}")
    for column in ("model", "params", "MACs", "latency (ms, batch 1)", "val top-1"):
        table.add_column(column, justify="right" if column != "model" else "left")
    rows = [("original", result.before), ("pruned", result.pruned)]
    if result.after is not None:
        rows.append((f"pruned + {args.finetune_epochs} epoch fine-tuning", result.after))
    for label, figures in rows:
        table.add_row(
            label,
            f"{figures.params / 1e6:.3f}M",
            f"{figures.macs / 1e6:.1f}M",
            f"{figures.latency_ms:.2f}",
            f"{figures.top1:.2f}%" if figures.top1 is not None else "-",
        )
    Console().print(table)
    return 0


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("--data", default=None, help="image folder (default: the one the checkpoint trained on)")
    parser.add_argument("--out", "-o", default=None, help="artifact path (default: next to the checkpoint)")
    parser.add_argument("--calibration-images", type=int, default=256, help="train images that calibrate int8")
    parser.add_argument("--val-images", type=int, default=None, help="verify on this many val images (default all)")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-images", type=int, default=None, help="train images per QAT epoch (default all)")
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument(
        "--qat-freeze-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="QAT fine-tunes with BN on its running statistics (default; --no-qat-freeze-bn updates them)",
    )
    parser.add_argument(
        "--qat-distill",
        type=float,
        default=0.5,
        metavar="ALPHA",
        help="weight of the fp32 model's soft predictions in the QAT loss, the rest on the labels (0: labels only)",
    )
    parser.add_argument(
        "--onnx-reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="7-bit ONNX int8 weights (default: only on x86 CPUs without VNNI, where ONNX Runtime's kernels saturate)",
    )
    parser.add_argument("--max-drop", type=float, default=None, help="fail if int8 loses more top-1 points")
    parser.add_argument(
        "--float-layers",
        default="",
        metavar="NAMES",
        help="comma-separated modules to keep in float in an int8 export, e.g. features.0,classifier",
    )
    parser.add_argument(
        "--no-float-fallback",
        dest="float_fallback",
        action="store_false",
        help="when int8 (PTQ or QAT) misses --max-drop, do not search for layers to leave in float",
    )
    parser.add_argument("--batch-size", "-b", type=int, default=64)
    parser.add_argument("--workers", "-j", type=int, default=2)
    parser.add_argument("--json", action="store_true")


def run_export(args: argparse.Namespace) -> int:
    from mobiforge.export import ExportConfig, export_checkpoint

    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    config = ExportConfig(**{key: value for key, value in vars(args).items() if key in fields})
    config.float_modules = tuple(name.strip() for name in args.float_layers.split(",") if name.strip())
    report = export_checkpoint(config)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_export_report(report)
    return 0 if report.passed else 1


def print_export_report(report) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.path} ({report.format}, {report.precision}), {report.images} val images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("file size", format_bytes(report.file_bytes)),
        (f"top-1 in {report.format}", f"{report.top1:.2f}%"),
        ("top-1 PyTorch fp32", f"{report.torch_fp32_top1:.2f}%"),
        ("top-1 agreement with PyTorch", f"{report.agreement:.2f}%"),
        ("max abs logit difference", f"{report.max_abs_logit_diff:.4g}"),
    ]
    if report.float_modules:
        rows.append(("left in float", ", ".join(report.float_modules)))
    if report.reference_top1 is not None:
        rows.append(("top-1 PT2E reference (simulated int8)", f"{report.reference_top1:.2f}%"))
    if report.reference_max_abs_diff is not None:
        rows.append(("max abs diff vs PT2E reference", f"{report.reference_max_abs_diff:.4g}"))
    for threads, stats in report.latency_ms.items():
        eager = report.torch_latency_ms[threads]
        rows.append(
            (
                f"latency batch 1, {threads} thread(s): median / p90",
                f"{stats['median']:.2f} / {stats['p90']:.2f} ms (PyTorch eager {eager['median']:.2f} ms)",
            )
        )
    for label, value in rows:
        table.add_row(label, value)
    console = Console()
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    if report.max_drop is not None and report.precision != "fp32":
        verdict = "[green]PASS[/green]" if report.passed else "[red]FAIL[/red]"
        console.print(
            f"{verdict} int8 top-1 drop {report.drop:.2f} points (limit {report.max_drop}{_gate_resolution(report)}); "
            f"report: {report.path}.json"
        )


def _gate_resolution(report) -> str:  # type: ignore[no-untyped-def]
    """On a small val set one image can be worth more than the whole limit: say so, or a one-image flip of a near
    tie reads like a broken quantization."""
    one_image = 100.0 / report.images
    if report.max_drop >= one_image:
        return ""
    return f"; one of {report.images} val images is {one_image:.2f} points here, so the limit allows no net lost image"


def _ship_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", help="image folder (as for train) or 'digits' (built in)")
    parser.add_argument("--max-size", default="1MB", help="largest int8 artifact file (1MB, 800KB, 2MiB)")
    parser.add_argument("--max-latency", default="100ms", help="median batch-1 latency in the runtime (100ms, 0.1s)")
    parser.add_argument("--runtime", choices=backend_names(), default=DEFAULT_RUNTIME)
    parser.add_argument("--threads", type=int, default=1, help="threads the latency is measured with")
    parser.add_argument("--time-budget", default="30m", help="wall time for the whole run (30m, 1h, 90s)")
    parser.add_argument("--teacher", default="auto", help="auto (pretrained EfficientNet-Lite0), none, or a CKPT")
    parser.add_argument("--out", "-o", default=None, help="run directory (default runs/ship-<data name>)")
    parser.add_argument("--max-drop", type=float, default=1.0, help="int8 accuracy gate: top-1 points lost")
    parser.add_argument("--models", default=None, help="comma-separated families to search (default: all)")
    parser.add_argument("--img-size", type=int, default=None, help="one input size instead of the data's regime")
    parser.add_argument("--max-candidates", type=int, default=3, help="fitting candidates the search looks for")
    parser.add_argument("--max-trained", type=int, default=2, help="of which at most this many are trained")
    parser.add_argument("--batch-size", "-b", type=int, default=None, help="default 128 (small images) or 32")
    parser.add_argument("--workers", "-j", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=None, help="gate on this many val images (default all)")
    parser.add_argument("--skip-bad-images", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the model card as JSON at the end")


def run_ship(args: argparse.Namespace) -> int:
    from mobiforge.cli_progress import RichReporter
    from mobiforge.ship import ShipConfig, ship

    fields = {f.name for f in dataclasses.fields(ShipConfig)}
    config = ShipConfig(
        **{
            **{key: value for key, value in vars(args).items() if key in fields},
            "max_size": parse_size(args.max_size),
            "max_latency_ms": parse_duration(args.max_latency, "ms", "--max-latency", to="ms"),
            "time_budget_s": parse_duration(args.time_budget, "m", "--time-budget"),
            "models": [name.strip() for name in args.models.split(",")] if args.models else None,
        }
    )
    with RichReporter() as reporter:
        result = ship(config, reporter)
    card_path = result.run_dir / "model_card.json"
    if args.json and card_path.exists():
        print(card_path.read_text())
    elif result.chosen:
        print(f"shipped {result.artifact} ({result.chosen}); report: {result.run_dir / 'report.html'}")
    else:
        closest = f"; closest: {result.closest}" if result.closest else ""
        print(f"no candidate met the budget{closest}; report: {result.run_dir / 'report.html'}")
    return 0 if result.chosen else 1


def run_eval(args: argparse.Namespace) -> int:
    from mobiforge.inference import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, args.batch_size, args.workers, args.skip_bad_images
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    result = report.result
    console = Console()
    console.print(
        f"{args.checkpoint} on {report.data} [{report.split}], {result.images} images: "
        f"top-1 {result.top1:.2f}%, top-5 {result.top5:.2f}%, loss {result.loss:.4f}"
    )
    table = Table(title="per class")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("top-1", justify="right")
    for name, total, accuracy in zip(report.classes, result.confusion.sum(1).tolist(), result.per_class, strict=True):
        table.add_row(name, str(total), f"{accuracy:.1f}%" if total else "-")
    console.print(table)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from mobiforge.inference import predict

    results = predict(args.checkpoint, args.images, args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for item in results:
        ranked = ", ".join(f"{entry['class']} {100 * entry['probability']:.1f}%" for entry in item["top"])
        print(f"{item['image']}: {ranked}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from mobiforge.models import create_model, list_models
    from mobiforge.profile import count_macs, count_params

    if args.weights:
        return _list_weights(args)
    names = list_models(args.pattern)
    if not names:
        raise MobiforgeError(f"no model matches {args.pattern!r}; run `mobiforge models` to list them all")
    rows = []
    for name in names:
        model = create_model(name)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "macs": count_macs(model, (1, 3, args.img_size, args.img_size)),
                "img_size": args.img_size,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mobiforge models (MACs at {args.img_size} px, 1000 classes)")
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for row in rows:
        table.add_row(row["name"], f"{row['params'] / 1e6:.2f}M", f"{row['macs'] / 1e6:.0f}M")
    Console().print(table)
    return 0


def _list_weights(args: argparse.Namespace) -> int:
    from mobiforge.models import list_models
    from mobiforge.models.weights import list_weights, locate_quietly

    rows = [
        {
            "weights": entry.name,
            "top1": entry.metrics.get("top1"),
            "img_size": entry.preprocess.img_size,
            "file": entry.filename,
            "available": str(locate_quietly(entry) or ""),
            "source": entry.source,
            "license": entry.license,
        }
        for name in list_models(args.pattern)
        for entry in list_weights(name)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pretrained weights (use --pretrained [TAG]; TAG is the part after the dot)")
    for column in ("weights", "ImageNet top-1", "local file", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["weights"], f"{row['top1']:.1f}", row["available"] or "-", row["source"])
    Console().print(table)
    return 0


def _load_for_profile(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from mobiforge.checkpoint import model_from_checkpoint
    from mobiforge.models import create_model, is_model

    if not is_model(args.model) and (Path(args.model).suffix in {".pt", ".pth"} or Path(args.model).exists()):
        return model_from_checkpoint(args.model), Path(args.model).name
    model = create_model(
        args.model, num_classes=args.num_classes, width_mult=args.width_mult, small_input=args.small_input
    )
    return model, args.model


def run_profile(args: argparse.Namespace) -> int:
    from mobiforge.profile import profile_model

    max_size = parse_size(args.max_size) if args.max_size else None
    max_latency = parse_duration(args.max_latency, "ms", "--max-latency", to="ms") if args.max_latency else None
    if is_artifact(args.model):
        return _profile_artifact(args, max_size, max_latency)
    model, name = _load_for_profile(args)
    report = profile_model(model, args.img_size, args.batch_size, args.threads, max_size, max_latency, name=name)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_profile(report)
    return 0 if report.passed else 1


def _profile_artifact(args: argparse.Namespace, max_size: int | None, max_latency: float | None) -> int:
    from rich.console import Console

    from mobiforge.runtimes import profile_artifact

    if args.img_size is not None or args.batch_size != 1:
        raise MobiforgeError(
            f"{args.model}: an exported file keeps the input shape it was exported with; drop "
            "--img-size and --batch-size"
        )
    report = profile_artifact(args.model, args.threads or 1, max_size, max_latency)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.passed else 1
    console = Console()
    latency = report.latency
    console.print(
        f"{report.path} ({report.runtime}): {format_bytes(report.file_bytes)}, input {list(report.input_shape)}, "
        f"{report.threads} thread{'s' if report.threads > 1 else ''}: median {latency.median_ms:.2f} ms, "
        f"p90 {latency.p90_ms:.2f} ms ({latency.runs} runs)"
    )
    _print_budgets(console, report.budgets)
    return 0 if report.passed else 1


def _print_profile(report) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{report.model} at {report.img_size} px, batch {report.batch_size}, "
        f"{report.threads} thread{'s' if report.threads > 1 else ''}"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    latency = report.latency
    for label, value in (
        ("parameters", f"{report.params / 1e6:.3f}M"),
        ("MACs", f"{report.macs / 1e6:.1f}M"),
        ("fp32 weights", format_bytes(report.fp32_weight_bytes)),
        ("int8 weights", format_bytes(report.int8_weight_bytes)),
        ("serialized (state_dict)", format_bytes(report.serialized_bytes)),
        ("latency median", f"{latency.median_ms:.2f} ms"),
        ("latency p90", f"{latency.p90_ms:.2f} ms"),
        ("timed runs / layout", f"{latency.runs} / {report.layout}"),
        ("peak memory", format_bytes(report.peak_memory_bytes)),
    ):
        table.add_row(label, value)
    console = Console()
    console.print(table)
    _print_budgets(console, report.budgets)


def _print_budgets(console, budgets) -> None:  # type: ignore[no-untyped-def]

    for check in budgets:
        shown = (
            (format_bytes(check.value), format_bytes(check.limit))
            if check.unit == "bytes"
            else (f"{check.value:.2f} ms", f"{check.limit:.2f} ms")
        )
        verdict = "[green]PASS[/green]" if check.passed else "[red]FAIL[/red]"
        console.print(f"{verdict} {check.name}: {shown[0]} (budget {shown[1]})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug_requested(args.debug)
    configure(debug)
    try:
        return int(args.handler(args))
    except MobiforgeError as error:
        if debug:  # the maintainer's view: where the one-line error came from, and what it replaced
            error.__suppress_context__ = False  # `raise ... from None` hid the library's own exception
            traceback.print_exc()
        print(f"mobiforge {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"mobiforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
