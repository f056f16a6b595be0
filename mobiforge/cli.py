"""The ``mobiforge`` command: argument parsing only; each subcommand calls the library and prints its result.

Errors the user can fix (a wrong name, a missing file, a bad flag value) arrive as ``MobiforgeError`` and are
printed as one line, exit status 2; a failed budget check exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mobiforge.errors import MobiforgeError

DEFAULT_MODEL = "mobilenet_v2"


def _model_args(parser: argparse.ArgumentParser) -> None:
    """Flags that shape a model built by name (ignored for checkpoints, which carry their own spec)."""
    group = parser.add_argument_group("model (when MODEL is a name)")
    group.add_argument("--num-classes", type=int, default=None, help="classifier outputs (model default: 1000)")
    group.add_argument("--width-mult", type=float, default=None, help="channel multiplier")
    group.add_argument("--small-input", action="store_true", default=None, help="CIFAR-style variant for 32 px images")


def build_parser() -> argparse.ArgumentParser:
    from mobiforge import __version__

    parser = argparse.ArgumentParser(
        prog="mobiforge",
        description="Train, compress and ship MobileNet-family image classifiers to phones and edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"mobiforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser("models", help="list the registered models with parameters and MACs")
    models.add_argument("pattern", nargs="?", default="*", help="substring or shell pattern, e.g. 'mobilenet_v3*'")
    models.add_argument("--img-size", type=int, default=224, help="input size for the MAC count (default 224)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=run_models)

    profile = commands.add_parser(
        "profile", help="parameters, MACs, sizes, measured latency and peak memory of a model or checkpoint"
    )
    profile.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        metavar="MODEL_OR_CHECKPOINT",
        help=f"a registered model name or a checkpoint .pt file (default: {DEFAULT_MODEL})",
    )
    profile.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    profile.add_argument("--batch-size", type=int, default=1)
    profile.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    profile.add_argument("--max-size", default=None, help="budget on the int8 weight size, e.g. 1MB")
    profile.add_argument("--max-latency", default=None, help="budget on the median latency, e.g. 100ms")
    profile.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _model_args(profile)
    profile.set_defaults(handler=run_profile)
    return parser


def run_models(args: argparse.Namespace) -> int:
    from mobiforge.models import create_model, list_models
    from mobiforge.profile import count_macs, count_params

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
    from mobiforge.profile import parse_duration_ms, parse_size, profile_model

    max_size = parse_size(args.max_size) if args.max_size else None
    max_latency = parse_duration_ms(args.max_latency) if args.max_latency else None
    model, name = _load_for_profile(args)
    report = profile_model(model, args.img_size, args.batch_size, args.threads, max_size, max_latency, name=name)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_profile(report)
    return 0 if report.passed else 1


def _print_profile(report) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from mobiforge.profile import format_bytes

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
    for check in report.budgets:
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
    try:
        return int(args.handler(args))
    except MobiforgeError as error:
        print(f"mobiforge {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobiforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
