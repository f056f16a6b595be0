"""One function per command: fill the command's config from the flags, call the library, print the result.

The library is imported inside each function, so ``mobiforge --help`` never loads torch. A command returns its exit
status by the one rule of ``mobiforge.errors``; errors a user can fix raise ``MobiforgeError``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mobiforge import config as cfg
from mobiforge.backend_api import is_artifact
from mobiforge.cli import render
from mobiforge.errors import EXIT_CHECK_FAILED, EXIT_OK, MobiforgeError
from mobiforge.options import read_options


def _emit(args: argparse.Namespace, data: Any) -> bool:
    """Print ``data`` as JSON when ``--json`` was given; says whether it did."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        return True
    return False


def run_train(args: argparse.Namespace) -> int:
    from mobiforge.cli.progress import RichReporter
    from mobiforge.train import train

    with RichReporter() as reporter:
        result = train(read_options(args, cfg.TrainConfig, base=_replayed(args)), reporter)
    return render.run_result(result)


def _replayed(args: argparse.Namespace) -> cfg.TrainConfig | None:
    """``--config FILE``: the saved run's settings, which the flags given then override (Ultralytics' ``cfg=``)."""
    from mobiforge.runs import load_run_config

    path = getattr(args, "config_file", None)
    return load_run_config(path) if path else None


def run_distill(args: argparse.Namespace) -> int:
    from mobiforge.cli.progress import RichReporter
    from mobiforge.distill import distill

    with RichReporter() as reporter:
        result = distill(read_options(args, cfg.TrainConfig, base=_replayed(args), nested=("distill",)), reporter)
    return render.run_result(result)


def run_prune(args: argparse.Namespace) -> int:
    from mobiforge.cli.progress import RichReporter
    from mobiforge.prune import prune

    config = read_options(args, cfg.PruneConfig, nested=("distill",))
    with RichReporter() as reporter:
        result = prune(config, reporter)
    if not _emit(args, result.to_dict()):
        render.prune_table(config.checkpoint, result, config.finetune_epochs)
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from mobiforge.export import export_checkpoint

    report = export_checkpoint(read_options(args, getattr(args, "config_class", cfg.ExportConfig)))
    if not _emit(args, report.to_dict()):
        render.export_report(report)
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def run_ship(args: argparse.Namespace) -> int:
    from mobiforge.cli.progress import RichReporter
    from mobiforge.ship import ship

    with RichReporter() as reporter:
        result = ship(read_options(args, cfg.ShipConfig), reporter)
    if result.follower:  # rank 0 prints the outcome
        return EXIT_OK
    from mobiforge.card import CARD_FILE

    card_path = result.run_dir / CARD_FILE
    if getattr(args, "json", False) and card_path.exists():
        print(card_path.read_text())
    elif result.chosen:
        print(f"shipped {result.artifact} ({result.chosen}); report: {result.run_dir / 'report.html'}")
    else:
        closest = f"; closest: {result.closest}" if result.closest else ""
        why = f"nothing shipped: {result.why}" if result.why else f"no candidate met the budget{closest}"
        print(f"{why}; report: {result.run_dir / 'report.html'}")
    return EXIT_OK if result.chosen else EXIT_CHECK_FAILED


def run_eval(args: argparse.Namespace) -> int:
    from mobiforge.backend_api import is_artifact

    options = read_options(args, cfg.EvalOptions)
    if is_artifact(options.checkpoint):  # an exported file, run in its own runtime
        from mobiforge.runtimes import evaluate_artifact

        report = evaluate_artifact(
            options.checkpoint, options.data, options.split, options.workers, options.skip_bad_images
        )
    else:
        from mobiforge.inference import evaluate_checkpoint

        report = evaluate_checkpoint(
            options.checkpoint, options.data, options.split, options.batch_size, options.workers,
            options.skip_bad_images,
        )  # fmt: skip
    if not _emit(args, report.to_dict()):
        render.eval_report(options.checkpoint, report)
    return EXIT_OK


def run_predict(args: argparse.Namespace) -> int:
    from mobiforge.backend_api import is_artifact

    options = read_options(args, cfg.PredictOptions)
    if is_artifact(options.checkpoint):  # an exported file, run in its own runtime
        from mobiforge.runtimes import predict_artifact as predict
    else:
        from mobiforge.inference import predict
    results = predict(options.checkpoint, options.images, options.top_k)
    if not _emit(args, results):
        render.predictions(results)
    return EXIT_OK


def run_doctor(args: argparse.Namespace) -> int:
    from mobiforge.cli.progress import RichReporter
    from mobiforge.doctor import WRITTEN as doctor_files
    from mobiforge.doctor import doctor

    config = read_options(args, cfg.DoctorConfig)
    with RichReporter() as reporter:
        diagnosis = doctor(config, reporter)
    if _emit(args, diagnosis.to_dict()):
        return EXIT_OK
    for line in diagnosis.verdicts():
        print(f"- {line}")
    written = ", ".join(name for name in doctor_files if (config.run_dir() / name).exists())
    print(f"report: {config.run_dir()} ({written})")
    return EXIT_OK


def run_serve(args: argparse.Namespace) -> int:
    from mobiforge.serve import serve

    serve(read_options(args, cfg.ServeConfig))
    return EXIT_OK


def run_models(args: argparse.Namespace) -> int:
    from mobiforge.models import create_model, list_models
    from mobiforge.models.weights import list_weights, locate_quietly
    from mobiforge.profile import count_macs, count_params

    options = read_options(args, cfg.ModelsOptions)
    names = list_models(options.pattern)
    if not names:
        raise MobiforgeError(f"no model matches {options.pattern!r}; run `mobiforge models` to list them all")
    if options.weights:
        rows = [_weights_row(entry, locate_quietly(entry)) for name in names for entry in list_weights(name)]
        if not _emit(args, rows):
            render.weights_table(rows)
        return EXIT_OK
    shape = (1, 3, options.img_size, options.img_size)
    rows = []
    for name in names:
        model = create_model(name)
        rows.append({"name": name, "params": count_params(model), "macs": count_macs(model, shape)})
        rows[-1]["img_size"] = options.img_size
    if not _emit(args, rows):
        render.models_table(rows, options.img_size)
    return EXIT_OK


def _weights_row(entry: Any, local: Path | None) -> dict[str, Any]:
    return {
        "weights": entry.name,
        "top1": entry.metrics.get("top1"),
        "img_size": entry.preprocess.img_size,
        "file": entry.filename,
        "available": str(local or ""),
        "source": entry.source,
        "license": entry.license,
    }


def run_profile(args: argparse.Namespace) -> int:
    from mobiforge.checkpoint import model_from_checkpoint
    from mobiforge.models import create_model, is_model
    from mobiforge.profile import profile_model
    from mobiforge.runtimes import profile_artifact

    options = read_options(args, cfg.ProfileOptions)
    if is_artifact(options.model):
        if options.img_size is not None or options.batch_size != 1:
            raise MobiforgeError(
                f"{options.model}: an exported file keeps the input shape it was exported with; drop "
                "--img-size and --batch-size"
            )
        report = profile_artifact(options.model, options.threads or 1, options.max_size, options.max_latency_ms)
        if not _emit(args, report.to_dict()):
            render.artifact_profile(report)
        return EXIT_OK if report.passed else EXIT_CHECK_FAILED
    path = Path(options.model)
    if not is_model(options.model) and (path.suffix in {".pt", ".pth"} or path.exists()):
        model, name = model_from_checkpoint(path), path.name
    else:
        kwargs = {"num_classes": options.num_classes, "width_mult": options.width_mult}
        model, name = create_model(options.model, small_input=options.small_input, **kwargs), options.model
    report = profile_model(
        model, options.img_size, options.batch_size, options.threads, options.max_size, options.max_latency_ms,
        name=name,
    )  # fmt: skip
    if not _emit(args, report.to_dict()):
        render.model_profile(report)
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED
