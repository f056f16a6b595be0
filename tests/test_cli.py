"""The command line: subcommands, JSON output, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobiforge import create_model
from mobiforge.checkpoint import model_checkpoint, save_checkpoint
from mobiforge.cli import main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "models" in out and "profile" in out


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "mobilenet_v3*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["mobilenet_v3_large", "mobilenet_v3_small"]
    assert rows[0]["params"] == 5_483_032


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "shufflenet_v2_x1_0"]) == 0
    assert "2.28M" in capsys.readouterr().out


def test_unknown_model_is_one_line_with_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "mobilenet_v3_smal"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "did you mean mobilenet_v3_small" in err


def test_profile_budget_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", "mobilenet_v3_small", "--small-input", "--num-classes", "10", "--threads", "1", "--json"]
    assert main([*args, "--max-size", "2MB", "--max-latency", "10s"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and [b["name"] for b in report["budgets"]] == ["int8 weight size", "median latency"]
    assert main([*args, "--max-size", "100KB"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_profile_checkpoint_uses_its_input_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("mobilenet_seed", num_classes=4, width_mult=0.25, small_input=True)
    path = save_checkpoint(model_checkpoint(model), tmp_path / "seed.pt")
    assert main(["profile", str(path), "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["img_size"] == 32 and report["model"] == "seed.pt"


def test_bad_flag_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "mobilenet_v2", "--max-size", "tiny"]) == 2
    assert "cannot read size 'tiny'" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mobiforge", "models", "mobilenet_seed", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)[0]["name"] == "mobilenet_seed"


def test_train_flags_fill_the_config_dataclasses() -> None:
    from mobiforge.cli import build_parser
    from mobiforge.config import TrainConfig
    from mobiforge.options import read_options

    def train_config_from_args(args):  # type: ignore[no-untyped-def]
        return read_options(args, TrainConfig)

    args = build_parser().parse_args(
        [
            "train", "--model", "efficientnet_lite0", "--pretrained", "--freeze-epochs", "2", "--backbone-lr-scale",
            "0.1", "--freeze-bn", "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--opt", "adamw",
            "--sched", "cosine", "--warmup-epochs", "1", "--ema", "0.999", "--mixup", "0.2", "--no-hflip",
            "--data", "some/folder", "--img-size", "192", "--epochs", "7",
        ]
    )  # fmt: skip
    config = train_config_from_args(args)
    assert config.model == "efficientnet_lite0" and config.pretrained is True and config.epochs == 7
    assert (config.freeze_epochs, config.backbone_lr_scale, config.freeze_bn) == (2, 0.1, True)
    assert config.data.mean == (0.5, 0.5, 0.5) and config.data.hflip is False and config.data.img_size == 192
    assert (config.optim.optimizer, config.optim.scheduler, config.optim.ema_decay) == ("adamw", "cosine", 0.999)
    assert config.data.mixup == 0.2 and config.optim.warmup_epochs == 1
    tagged = train_config_from_args(build_parser().parse_args(["train", "--pretrained", "tv_imagenet1k_v1"]))
    assert tagged.pretrained == "tv_imagenet1k_v1"


def test_models_weights_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "efficientnet", "--weights", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["weights"] == "efficientnet_lite0.imagenet" and rows[0]["available"].endswith(".pth")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--img-size", "4"], "--img-size must be in [8, 2048], got 4"),
        (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    ],
)
def test_bad_train_flags_are_one_line_errors(flags: list[str], message: str, capsys) -> None:
    assert main(["train", "--data", "digits", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_debug_shows_the_traceback_behind_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pt")
    assert main(["eval", missing]) == 2
    plain = capsys.readouterr().err
    assert plain.count("\n") == 1 and "Traceback" not in plain  # users get one line
    for argv in (["--debug", "eval", missing], ["eval", missing, "--debug"]):
        assert main(argv) == 2
        shown = capsys.readouterr().err
        assert "Traceback" in shown and "load_checkpoint" in shown and shown.endswith(plain)


def test_mobiforge_debug_in_the_environment_turns_debug_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobiforge.log import debug_requested

    monkeypatch.setenv("MOBIFORGE_DEBUG", "1")
    assert debug_requested()
    monkeypatch.setenv("MOBIFORGE_DEBUG", "0")
    assert not debug_requested() and debug_requested(True)


CLI_ONLY = {"help", "version", "debug", "json", "command", "config_file"}


def _subparsers():  # type: ignore[no-untyped-def]
    import argparse

    from mobiforge.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_flag_is_generated_from_its_dataclass_field() -> None:
    """Every option of every command: its strings, default, choices and help come from one field of the command's
    config (no sampled subset), and every field with option metadata is offered."""
    import argparse
    import dataclasses

    from mobiforge.cli import COMMANDS
    from mobiforge.options import config_fields, flag_of

    for name, sub in _subparsers().items():
        _, config_class, keywords, _, _ = COMMANDS[name]
        fields = config_fields(config_class, keywords.get("nested", ()))
        offered = set()
        for action in sub._actions:
            if action.dest in CLI_ONLY:
                continue
            assert action.dest in fields, f"mobiforge {name}: {action.option_strings or action.dest} has no field"
            field, default = fields[action.dest]
            meta = field.metadata["cli"]
            offered.add(action.dest)
            if action.option_strings:
                extra = keywords.get("aliases", {}).get(field.name, ())
                negated = [f"--no-{s[2:]}" for s in flag_of(field)] if action.nargs == 0 and len(
                    action.option_strings) > len(flag_of(field)) + len(extra) else []  # fmt: skip
                assert action.option_strings == [*extra, *flag_of(field), *negated], (name, action.option_strings)
                assert action.default is argparse.SUPPRESS, (name, field.name)  # the field's default applies
                assert action.required == (field.name in keywords.get("required", ()))
            choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
            assert (list(action.choices) if action.choices else None) == (list(choices) if choices else None)
            assert (action.help or "").startswith(meta["help"]), (name, field.name)
            if default not in (None, False, (), dataclasses.MISSING) and "default" not in meta["help"]:
                shown = meta["show"](default) if meta["show"] else default  # the command's own (prune's optimiser)
                assert f"(default: {shown})" in action.help, (name, field.name, action.help)
        assert offered == set(fields), f"mobiforge {name} lacks {sorted(set(fields) - offered)}"


def test_a_flag_left_out_keeps_the_field_default_and_commands_own_their_defaults() -> None:
    from mobiforge.cli import build_parser
    from mobiforge.config import ExportConfig, PruneConfig, QuantizeConfig, ShipConfig, TrainConfig
    from mobiforge.options import read_options

    parser = build_parser()
    train = read_options(parser.parse_args(["train", "--lr", "0.2", "--mean", "0.5", "0.5", "0.5"]), TrainConfig)
    assert train.optim.lr == 0.2 and train.optim.scheduler == "step" and train.data.mean == (0.5, 0.5, 0.5)
    assert train == TrainConfig(optim=train.optim, data=train.data) and train.distill is None
    prune = read_options(parser.parse_args(["prune", "c.pt", "--ratio", "0.5"]), PruneConfig, nested=("distill",))
    assert prune.optim == PruneConfig(checkpoint="c.pt").optim and prune.distill is None  # prune's own optimiser
    distill = read_options(
        parser.parse_args(["distill", "--teacher", "t.pt", "--student", "mobilenet_v3_small"]), TrainConfig,
        nested=("distill",),
    )  # fmt: skip
    assert distill.model == "mobilenet_v3_small" and distill.distill.teacher == "t.pt" and distill.distill.alpha == 0.5
    ship = read_options(parser.parse_args(["ship", "--max-size", "800KB", "--time-budget", "2h"]), ShipConfig)
    assert ship.max_size == 800_000 and ship.time_budget_s == 7200 and ship.max_latency_ms == 100.0
    export = read_options(parser.parse_args(["export", "c.pt", "-f", "onnx", "--float-layers", "a, b"]), ExportConfig)
    assert export.float_modules == ("a", "b") and export.int8 is None and export.float_fallback
    quantize = read_options(parser.parse_args(["quantize", "c.pt", "--no-float-fallback"]), QuantizeConfig)
    assert quantize.int8 == "ptq" and not quantize.float_fallback and quantize.format == "executorch"


def test_ship_command_and_the_parser_round_trip() -> None:
    """The rerun command a ship report prints is read back by the parser into the same config: every field the
    resume compares, at default and non-default values, bools both ways, lists and durations."""
    import shlex

    from mobiforge.cli import build_parser
    from mobiforge.config import ShipConfig
    from mobiforge.options import read_options
    from mobiforge.ship.report import ship_command

    configs = [
        ShipConfig(data="digits"),
        ShipConfig(
            data="photos", out="runs/my run", max_size=500_000, max_latency_ms=12.5, runtime="onnx", threads=2,
            time_budget_s=5400, teacher="none", max_drop=2.0, models=["mobilenet_v2", "resnet"], img_size=160,
            max_candidates=4, max_trained=1, batch_size=32, workers=0, val_images=100, skip_bad_images=True, seed=7,
            license="MIT", model_name="Ants & bees", model_version="2.1",
        ),
    ]  # fmt: skip
    for config in configs:
        argv = shlex.split(ship_command(config))
        assert argv[:2] == ["mobiforge", "ship"]
        assert read_options(build_parser().parse_args(argv[1:]), ShipConfig) == config
