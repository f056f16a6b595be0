"""The ``mobiforge`` command: parsers generated from ``mobiforge.config``, one thin function per command.

Errors the user can fix (a wrong name, a missing file, a bad flag value, a read-only folder, a full disk) arrive as
``MobiforgeError`` or ``OSError`` and are printed as one line, exit status 2 (``--debug`` or ``MOBIFORGE_DEBUG=1``
adds the traceback); a failed budget check exits 1 (the rule: ``mobiforge.errors``). Only this package imports
internal modules inside functions: the library (and torch) load when a command runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import errno
import functools
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from mobiforge import __version__
from mobiforge import config as cfg
from mobiforge.backend_api import runnable_suffixes
from mobiforge.errors import EXIT_CANNOT_RUN, EXIT_INTERRUPTED, MobiforgeError
from mobiforge.log import DEBUG_ENV, configure, debug_requested, set_command
from mobiforge.options import add_options

JSON_HELP = "print JSON instead of a table"
CONFIG_HELP = "replay a run from its config.yaml, in a new run folder; the flags given override its settings"


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The command's function, imported when it runs (the commands module loads rich)."""

    def run(args: argparse.Namespace) -> int:
        from mobiforge.cli import commands

        return int(getattr(commands, name)(args))

    return run


# command -> (help, config class, add_options keywords, function, takes --json)
COMMANDS: dict[str, tuple[str, type, dict[str, Any], str, bool]] = {
    "models": ("list the registered models with parameters and MACs", cfg.ModelsOptions, {}, "run_models", True),
    "profile": (
        "parameters, MACs, sizes, measured latency and peak memory of a model or checkpoint; an exported "
        f"{runnable_suffixes()} file is timed in its own runtime",
        cfg.ProfileOptions, {}, "run_profile", True,
    ),
    "train": ("train a model on an image folder (default: built-in digits)", cfg.TrainConfig, {}, "run_train", False),
    "eval": (
        f"top-1/top-5, per-class accuracy and confusion of a checkpoint or an exported {runnable_suffixes()} file",
        cfg.EvalOptions, {}, "run_eval", True,
    ),
    "distill": (
        "train a student model with a teacher's soft targets (same flags as train)",
        cfg.TrainConfig, {"nested": ("distill",), "required": ("teacher",), "aliases": {"model": ("--student",)}},
        "run_distill", False,
    ),
    "prune": (
        "structured channel pruning of a checkpoint, then fine-tuning",
        cfg.PruneConfig, {"nested": ("distill",), "one_of": ("target",)}, "run_prune", True,
    ),
    "export": (
        "export a checkpoint to a mobile runtime (optionally int8) and verify it there",
        cfg.ExportConfig, {"required": ("format",)}, "run_export", True,
    ),
    "quantize": ("int8 export (PTQ or QAT), verified in the runtime", cfg.QuantizeConfig, {}, "run_export", True),
    "ship": (
        "image folder + device budget -> the best verified int8 on-device model, with a report",
        cfg.ShipConfig, {}, "run_ship", True,
    ),
    "doctor": (
        "find exact and near copies, val photos leaked into train, wrong labels and odd files in an image folder",
        cfg.DoctorConfig, {}, "run_doctor", True,
    ),
    "predict": (
        f"top-k classes of images or folders, with a checkpoint or an exported {runnable_suffixes()} file",
        cfg.PredictOptions, {}, "run_predict", True,
    ),
    "serve": ("a local page to try an exported model on your own photos, in its runtime", cfg.ServeConfig, {},
              "run_serve", False),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
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
    for name, (help_text, config_class, keywords, function, takes_json) in COMMANDS.items():
        sub = add_command(name, help=help_text, description=help_text)
        add_options(sub, config_class, **keywords)
        if config_class is cfg.TrainConfig:  # train and distill replay a run
            sub.add_argument(
                "--config", dest="config_file", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP
            )
        if takes_json:
            sub.add_argument("--json", action="store_true", help=JSON_HELP)
        sub.set_defaults(handler=_command(function), config_class=config_class)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug_requested(args.debug)
    configure(debug)
    set_command(list(sys.argv[1:] if argv is None else argv))
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
        return EXIT_INTERRUPTED
    except OSError as error:  # the machine's, not mobiforge's: a full disk, a read-only or vanished folder
        if debug:
            traceback.print_exc()
        where = f" {error.filename}" if error.filename else ""
        full = " (disk full: free some space and run the command again)" if error.errno == errno.ENOSPC else ""
        print(f"mobiforge {args.command}: error:{where}: {error.strerror or error}{full}", file=sys.stderr)
        return EXIT_CANNOT_RUN  # like any folder the user gave that cannot be used


if __name__ == "__main__":
    sys.exit(main())
