"""Ship's stage records and the state file that makes a ship run resumable.

Every stage writes a typed record when it finishes; ``ShipState`` keeps them in the order they finished and saves
them atomically to ``RUN/ship_state.json`` after each one. The file's layout is the one ship has always written
(``{"config", "elapsed_s", "stages": {"survey", "search", "teacher", "train:NAME", "export:NAME", "result"}}``,
now with a ``"version"``); records are read with ``from_dict``, which fills fields missing from older files with
their defaults and ignores keys it does not know, so a state file written by an earlier mobiforge still resumes
(tested with files committed in ``tests/data``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from mobiforge.config import CARD_FIELDS, ShipConfig
from mobiforge.errors import MobiforgeError
from mobiforge.export import ArtifactReport
from mobiforge.files import BACKUP_SUFFIX, write_atomic
from mobiforge.log import logger
from mobiforge.paths import NOT_PATHS, local_record, portable_record
from mobiforge.ship.config import CORE_ML, WEB
from mobiforge.ship.policy import CLOCK_SECONDS

STATE_FILE = "ship_state.json"
# 1: the untyped dicts written before 2026-12-01 (no "version" key); 2: typed records, same layout; 3: the paths
# relative to the run folder (before: as the run named them, absolute or relative to its working directory)
STATE_VERSION = 3

R = TypeVar("R")


def known_fields(cls: type[R], data: dict[str, Any]) -> R:
    """``cls(**data)`` with only the keys ``cls`` has: older files lack new fields (their defaults apply), newer
    ones may carry fields this version does not know."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class Survey:
    """Classes, split sizes and the typical image side: what the plan is built on."""

    classes: list[str]
    train_images: int
    val_images: int
    description: str = ""
    median_side: int = 224
    small_images: bool = False
    img_sizes: list[int] = field(default_factory=lambda: [224])
    majority_rate: float | None = None  # the largest class's share of the val images: what one constant answer scores


@dataclass
class DataHealth:
    """What the doctor found, as the report shows it."""

    verdicts: list[str] = field(default_factory=list)
    leaked_val: list[str] = field(default_factory=list)  # val photos with a copy in train, relative to the data
    label_issues: int | None = None  # None: the feature checks did not run
    features: bool = False
    seconds: float = 0.0
    note: str = ""  # why the feature checks did not run


@dataclass
class TeacherSpec:
    """The teacher before it is trained: enough to build, prune or truncate it for the search."""

    name: str
    img_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # a given teacher checkpoint; None: the pretrained model of that name
    pretrained: bool = False


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
    spec: dict[str, Any] | None = None  # the pruned or truncated architecture (rebuilds the measured model)
    prune_target_bytes: int | None = None  # int8 weight bytes the teacher was pruned to
    kept_blocks: int | None = None  # the pruned teacher's first blocks, left whole (it trains on the cache behind them)
    artifact_bytes: int | None = None  # the int8 artifact written by the search
    latency_ms: float | None = None  # its median latency in the runtime
    train_images_per_s: float | None = None
    train_amp: str = "none"  # bf16: its probe trained faster under bf16 autocast, and so it trains
    speed_estimated: bool = False  # not probed (the probes' share of the budget was spent): scaled from its MACs
    budget_epochs: int | None = None  # small images: epochs the time left buys it alone (``search.rank``)
    export_seconds: float | None = None  # how long quantizing and writing its artifact took
    status: str = "not measured"

    @property
    def fits(self) -> bool:
        return self.status == "fits"


@dataclass
class SearchRecord:
    candidates: list[Candidate]
    teacher_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": [dataclasses.asdict(c) for c in self.candidates], "teacher_note": self.teacher_note}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchRecord:
        candidates = [known_fields(Candidate, c) for c in data.get("candidates", [])]
        return cls(candidates, data.get("teacher_note", ""))


@dataclass
class TrainRecord:
    """A finished training (a candidate's, or the teacher's): the checkpoint that goes on, and how it went."""

    checkpoint: str
    run_dir: str
    top1: float | None = None  # val top-1 of ``checkpoint``
    best_top1: float | None = None
    epochs_planned: int = 0
    epochs_run: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_estimated: int | None = None  # from the speed probe, before the re-plan
    seconds: float | None = None
    distilled: bool = False
    given: bool = False  # a teacher checkpoint given by the user, not trained here
    rung: str | None = None  # the transfer-ladder rung it trained on (a cached tail), None: end to end
    trainable_params: int | None = None  # of that rung
    images: int | None = None  # train images it trained on (None: not recorded, every one)
    views: int | None = None  # cached views of each (None: end to end, a fresh augmented view every epoch)


@dataclass
class Rung:
    """One rung of the transfer ladder: how much of the pretrained network trained, for how long, how well."""

    name: str
    trainable_params: int
    seconds: float
    top1: float
    images: int | None = None  # train images it trained on
    views: int | None = None  # cached views of each (None: end to end, a fresh augmented view every epoch)
    trunk_pass: str = ""  # what computed its cache: an engine and precision ("onnxruntime int8")
    views_asked: int | None = None  # more than ``views`` where the disk could not hold the cache of them all


@dataclass
class TeacherRecord:
    """The teacher stage: its training (and the ladder rungs that led to it), or why there is none."""

    trained: TrainRecord | None = None
    skipped: str | None = None
    rungs: list[Rung] = field(default_factory=list)
    # [photos, val top-1] of the probe on 1/4, 1/2 and all of a subset (mobiforge.ship.subsets); empty: all photos
    learning_curve: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {"skipped": self.skipped} if self.trained is None else _plain(self.trained)
        if self.learning_curve:
            data["learning_curve"] = self.learning_curve
        return {**data, "rungs": [dataclasses.asdict(rung) for rung in self.rungs]} if self.rungs else data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherRecord:
        rungs = [known_fields(Rung, rung) for rung in data.get("rungs", [])]
        curve = [list(point) for point in data.get("learning_curve", [])]
        if "skipped" in data:
            return cls(skipped=str(data["skipped"]), rungs=rungs, learning_curve=curve)
        return cls(trained=known_fields(TrainRecord, data), rungs=rungs, learning_curve=curve)


@dataclass
class ExportRecord:
    """Every int8 attempt's report, the one kept, and its budget verdicts."""

    reports: list[ArtifactReport]
    chosen: ArtifactReport
    verdicts: dict[str, bool]

    @property
    def met(self) -> bool:
        return all(self.verdicts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "reports": [r.to_dict() for r in self.reports],
            "chosen": self.chosen.to_dict(),
            "verdicts": self.verdicts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportRecord:
        reports = [ArtifactReport.from_dict(r) for r in data.get("reports", [])]
        return cls(reports, ArtifactReport.from_dict(data["chosen"]), dict(data.get("verdicts", {})))


@dataclass
class ResultRecord:
    chosen: str | None
    closest: str | None
    artifact: str | None
    elapsed_s: float = 0.0


def _plain(record: Any) -> dict[str, Any]:
    return record.to_dict() if hasattr(record, "to_dict") else dataclasses.asdict(record)


@dataclass(frozen=True)
class Stage(Generic[R]):
    """A stage of a ship run: its name, how its record is read back from the state file (and so its type), and, for
    the stages run once per candidate, the candidate (``TRAIN.of(name)``). Its key in the file is its name, or
    ``name:candidate``."""

    name: str
    read: Callable[[dict[str, Any]], R]
    candidate: str | None = None

    @property
    def key(self) -> str:
        return self.name if self.candidate is None else f"{self.name}:{self.candidate}"

    def of(self, candidate: str) -> Stage[R]:
        return dataclasses.replace(self, candidate=candidate)


SURVEY: Stage[Survey] = Stage("survey", functools.partial(known_fields, Survey))
HEALTH: Stage[DataHealth] = Stage("health", functools.partial(known_fields, DataHealth))
SEARCH: Stage[SearchRecord] = Stage("search", SearchRecord.from_dict)
TEACHER: Stage[TeacherRecord] = Stage("teacher", TeacherRecord.from_dict)
TRAIN: Stage[TrainRecord] = Stage("train", functools.partial(known_fields, TrainRecord))
EXPORT: Stage[ExportRecord] = Stage("export", ExportRecord.from_dict)
CORE_ML_PACKAGE: Stage[ArtifactReport] = Stage(CORE_ML, ArtifactReport.from_dict)
WEB_PAGE: Stage[ArtifactReport] = Stage(WEB, ArtifactReport.from_dict)
RESULT: Stage[ResultRecord] = Stage("result", functools.partial(known_fields, ResultRecord))
STAGES = {
    stage.name: stage for stage in (SURVEY, HEALTH, SEARCH, TEACHER, TRAIN, EXPORT, CORE_ML_PACKAGE, WEB_PAGE, RESULT)
}


def read_record(key: str, data: dict[str, Any]) -> Any:
    """The typed record of a stage by its key in the file; a stage this version does not know stays a plain dict."""
    stage = STAGES.get(key.split(":", 1)[0])
    return stage.read(data) if stage is not None else data


class ShipState:
    """The finished stages and the time spent, persisted atomically after every stage."""

    def __init__(self, run_dir: Path, config: ShipConfig) -> None:
        self.path = run_dir / STATE_FILE
        self.session_start = time.time()
        self.config = plain_config(config)
        self.stages: dict[str, Any] = {}
        self.finished_at: dict[str, float] = {}  # seconds of the budget spent when each stage finished
        self.elapsed_before = 0.0
        self.recovered = ""  # how the state was read back from its backup, for the user
        self._lock = threading.Lock()  # the clock thread saves too
        if self.path.exists():
            self._load(run_dir)
        self.deadline = self.session_start + config.time_budget_s - self.elapsed_before

    def _load(self, run_dir: Path) -> None:
        """Read the state, or its previous good copy when a crash or a full disk damaged it."""
        backup = Path(f"{self.path}{BACKUP_SUFFIX}")
        for path in (self.path, backup):
            try:
                saved = located(json.loads(path.read_text()), run_dir)
                stages = {name: read_record(name, data) for name, data in (saved.get("stages") or {}).items()}
                elapsed = float(saved.get("elapsed_s", 0.0))
                finished_at = {str(k): float(v) for k, v in (saved.get("finished_at_s") or {}).items()}
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                logger.debug("%s is damaged: %r", path, error)
                continue
            if not stages:  # nothing finished: nothing to resume, whatever the settings were
                return
            self._check_config(saved, run_dir)
            self.stages, self.elapsed_before, self.finished_at = stages, elapsed, finished_at
            if path == backup:
                self.recovered = f"{self.path.name} was damaged; resumed from its previous copy"
            return
        raise MobiforgeError(
            f"{self.path} is damaged and has no good previous copy; to start over, delete it "
            f"(the trained candidates are kept and retrained) or give --out a new folder"
        )

    def _check_config(self, saved: dict[str, Any], run_dir: Path) -> None:
        """The settings must be the run's own; one added since the file was written counts at its default."""
        before = saved.get("config") or {}
        defaults = {f.name: f.default for f in dataclasses.fields(ShipConfig)}
        changed = sorted(key for key in self.config if before.get(key, defaults.get(key)) != self.config[key])
        if changed:
            raise MobiforgeError(
                f"{run_dir} holds a ship run with other settings ({', '.join(changed)}); rerun it with the "
                "same ones to resume, or give --out a new folder"
            )

    # ----------------------------------------------------------------------------------------------- time

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.session_start

    def left(self) -> float:
        return self.deadline - time.time()

    # --------------------------------------------------------------------------------------------- stages

    @property
    def survey(self) -> Survey:
        return self.stages[SURVEY.key]

    @property
    def health(self) -> DataHealth:
        """What the doctor found (an empty record before its checks ran, or in a state file from before them)."""
        return self.stages.get(HEALTH.key) or DataHealth(note="the data checks did not run")

    def done(self, stage: Stage[R]) -> R | None:
        return self.stages.get(stage.key)

    def trained(self, name: str) -> TrainRecord | None:
        return self.done(TRAIN.of(name))

    def exported(self, name: str) -> ExportRecord | None:
        return self.done(EXPORT.of(name))

    def records(self, stage: Stage[R]) -> dict[str, R]:
        """The records of a per-candidate stage (``TRAIN``, ``EXPORT``) by candidate, in the order they finished."""
        prefix = f"{stage.name}:"
        return {key[len(prefix) :]: record for key, record in self.stages.items() if key.startswith(prefix)}

    def finish(self, stage: Stage[R], record: R) -> R:
        with self._lock:
            self.stages[stage.key] = record
            self.finished_at.pop(stage.key, None)  # a stage finished again (health's feature checks) moves last
            self.finished_at[stage.key] = round(self.elapsed(), 1)
        self.save()
        return record

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config": self.config,
            "elapsed_s": self.elapsed(),
            "finished_at_s": dict(self.finished_at),
            "stages": {
                name: _plain(record) if not isinstance(record, dict) else record for name, record in self.stages.items()
            },
        }

    def save(self) -> None:
        """Write the state atomically, keeping the previous copy beside it."""
        with self._lock:
            portable = portable_record(self.to_dict(), self.path.parent)  # no absolute path of this machine
            write_atomic(self.path, json.dumps(portable, indent=2), backup=True)

    @contextlib.contextmanager
    def clock(self) -> Iterator[None]:
        """Save the time spent every ``CLOCK_SECONDS`` and on the way out, however the run ends: a run killed
        mid-stage, or stopped with Ctrl-C, resumes with that time counted against its budget."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(CLOCK_SECONDS):
                if self.stages:
                    with contextlib.suppress(MobiforgeError):  # a full disk: the stage's own save says so
                        self.save()

        thread = threading.Thread(target=tick, name="ship-clock", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if self.stages:  # a run that failed before its first stage leaves nothing to resume
                with contextlib.suppress(MobiforgeError):
                    self.save()


def plain_config(config: ShipConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the first (the run directory itself excluded), its paths
    resolved."""
    data = dataclasses.asdict(config)
    for name in ("data", "teacher"):
        if data[name] not in NOT_PATHS:
            data[name] = str(Path(data[name]).resolve())
    for name in ("out", *CARD_FIELDS):  # what the card says can change on a rerun: the card is written again
        data.pop(name)
    return data


def located(saved: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A saved state with its path fields resolved: relative to the run folder from version 3, relative to the
    working directory before it."""
    return local_record(saved, run_dir if int(saved.get("version", 1)) >= 3 else Path.cwd())


@dataclass
class Row:
    """One candidate with what became of it: the report's unit."""

    candidate: Candidate
    trained: TrainRecord | None = None
    exported: ExportRecord | None = None
