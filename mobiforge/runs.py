"""What a training run starts from (the model, its preprocessing) and what it leaves: its directory, its files
(``config.yaml``, ``metrics.csv``, plots) and its result.

Shared by every way of training (the ``Trainer`` in ``train``, the cached frozen-trunk path in ``transfer``), so
both start from the same model and leave the same run directory.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from mobiforge.checkpoint import Checkpoint
from mobiforge.config import TrainConfig
from mobiforge.data import preprocess_for
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.log import command
from mobiforge.models import build_from_spec, create_model
from mobiforge.models.base import Preprocess
from mobiforge.models.weights import get_weights
from mobiforge.paths import RUN_FILE as RUN_FILE  # public here too
from mobiforge.paths import local_record, portable_record, shareable_command
from mobiforge.plots import plot_confusion, plot_curves


@dataclass
class TrainResult:
    run_dir: Path
    best_top1: float
    history: list[dict[str, Any]]
    interrupted: bool = False

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def default_run_name(config: TrainConfig) -> str:
    data_name = Path(config.data.data).name or "data"
    return f"{config.model}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(config: TrainConfig, resume_ckpt: dict[str, Any] | None) -> Path:
    """The run's folder, checked (not yet written): a new run never takes a folder holding a run."""
    if config.resume:
        return Path(config.resume).resolve().parent
    run_dir = Path(config.runs_dir) / (config.name or default_run_name(config))
    if (run_dir / "last.pt").exists():
        raise MobiforgeError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir / 'last.pt'} or choose another --name"
        )
    check_run_dir(run_dir, train_kind(config))
    return run_dir


# ----------------------------------------------------------------------------------------- who owns a folder

# What a folder made before run.json existed holds, by kind; the first file found names the kind.
# An export (``--out`` anywhere) writes no run.json: its labels.txt says what it is.
KIND_OUTPUTS = (
    ("ship_state.json", "ship"),
    ("prune_report.json", "prune"),
    ("last.pt", "train"),
    ("labels.txt", "export"),
)
HOSTED = {"prune": ("train", "distill")}  # kinds whose folder also holds a run of another kind: prune's fine-tuning


def train_kind(config: TrainConfig) -> str:
    return "distill" if config.distill else "train"


def run_kind(run_dir: Path) -> dict[str, Any] | None:
    """What made ``run_dir``: its run.json, else what its files say, else None (a new or foreign folder)."""
    try:
        record = json.loads((run_dir / RUN_FILE).read_text())
        if isinstance(record, dict) and isinstance(record.get("kind"), str):
            return record
    except (OSError, ValueError):
        pass
    for name, kind in KIND_OUTPUTS:
        if (run_dir / name).exists():
            return {"kind": kind, "command": "unknown (made before run.json)"}
    return None


def check_run_dir(run_dir: Path, kind: str) -> None:
    """Refuse, before any work, a folder that another kind of run made: its files would be overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MobiforgeError(f"{run_dir} is a file; the {kind} run needs a folder there: choose another name")
    found = run_kind(run_dir)
    if found is not None and found["kind"] != kind and kind not in HOSTED.get(found["kind"], ()):
        raise MobiforgeError(
            f"{run_dir} holds {'an' if found['kind'][0] in 'aeiou' else 'a'} {found['kind']} run (made by "
            f"`{found.get('command', 'unknown')}`); "
            f"write this {kind} run to another folder"
        )


def claim_run_dir(run_dir: Path, kind: str) -> None:
    """Check ``run_dir`` as ``check_run_dir`` does, create it and record what made it (kept if it is a host's)."""
    check_run_dir(run_dir, kind)
    found = run_kind(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if found is None or not (run_dir / RUN_FILE).exists():
        record = {"kind": kind, "command": shareable_command(command())}
        write_atomic(run_dir / RUN_FILE, json.dumps(record, indent=2))


def write_config(run_dir: Path, config: TrainConfig) -> None:
    """``config.yaml``, its paths relative to the run folder (the checkpoints keep the config as it ran)."""
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(portable_record(config.to_dict(), run_dir), sort_keys=False))


def load_run_config(path: str | Path) -> TrainConfig:
    """A run's saved ``config.yaml`` as the config of a new run that replays it (``train --config FILE``): its paths
    read as relative to the run's folder, no run name (a new folder, unless ``--name``) and nothing to resume."""
    path = Path(path)
    try:
        saved = yaml.safe_load(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a mapping of settings")
        config = TrainConfig.from_dict(local_record(saved, path.resolve().parent))
    except FileNotFoundError:
        raise MobiforgeError(f"--config {path}: no such file; give a run's config.yaml") from None
    except (OSError, ValueError, TypeError, yaml.YAMLError) as error:
        what = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise MobiforgeError(f"--config {path}: not a run's config.yaml ({what})") from None
    return dataclasses.replace(config, name=None, resume=None)


def write_metrics_csv(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_atomic(run_dir / "metrics.csv", table.getvalue())  # the same atomic writer (and disk-full line) as all


def finish_plots(run_dir: Path, history: list[dict[str, Any]], classes: list[str]) -> None:
    if history:
        plot_curves(history, run_dir / "curves.png")
    best = run_dir / "best.pt"
    if best.exists():
        confusion = Checkpoint.load(best).metrics.get("val", {}).get("confusion")
        if confusion is not None:
            plot_confusion(confusion, classes, run_dir / "confusion.png")


@dataclass
class Start:
    """A run's starting point: its model (weights loaded, except a resume's), preprocessing and resolved config."""

    model: nn.Module
    preprocess: Preprocess
    config: TrainConfig  # with the input size and normalisation filled in
    img_size: int
    pretrained: bool


def starting_point(config: TrainConfig, classes: list[str], resume_spec: dict[str, Any] | None = None) -> Start:
    """The model a run starts from: a resumed run's own architecture (``resume_spec``; its weights are the
    caller's to load), the ``init_from`` checkpoint, or a new model, with pretrained weights when asked. The input
    size and normalisation come from the flags, else the starting weights, else ImageNet's."""
    pretrained = bool(config.pretrained or config.weights is not None)
    weights_preprocess = get_weights(config.model, config.pretrained or True).preprocess if pretrained else None
    init = _init_checkpoint(config, classes) if resume_spec is None else None
    if init is not None:  # the starting checkpoint's input size and normalisation, unless set explicitly
        weights_preprocess = init.preprocess
    config = dataclasses.replace(config, data=config.data.resolved(weights_preprocess))
    img_size = config.data.resolved_img_size()
    if resume_spec is not None:
        model = build_from_spec(resume_spec, f"--resume {config.resume}")
    elif init is not None:
        model = init.model()
    else:
        model = create_model(
            config.model,
            pretrained=config.pretrained,
            weights=config.weights,
            download=config.download,
            num_classes=len(classes),
            width_mult=config.width_mult,
            small_input=config.small_input if config.small_input is not None else img_size <= 64,
            dropout=config.dropout,
        )
    preprocess = model.preprocess = preprocess_for(config.data, weights_preprocess)
    return Start(model, preprocess, config, img_size, pretrained)


def _init_checkpoint(config: TrainConfig, classes: list[str]) -> Checkpoint | None:
    """The checkpoint named by ``init_from``, checked against the data's classes."""
    if not config.init_from:
        return None
    checkpoint = Checkpoint.load(config.init_from)
    checkpoint.require_classes(classes, "the starting checkpoint", f"start from a checkpoint of {config.data.data}")
    return checkpoint
