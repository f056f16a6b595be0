"""What a training run tells the code around it, and the built-in listeners.

A run fires five events (``Event``), as Ultralytics' ``callbacks/base.py`` names its hooks: train start (set up,
before the first epoch), epoch start, epoch end (after the epoch's evaluation and checkpoint), checkpoint saved
(``last.pt`` written; ``best.pt`` too when the epoch scored best) and train end (the loop is over, however it
ended). Each listener is a function of the run (``RunView``: what it may read, and the two things it may do:
``set_epochs`` re-plans the run's length and learning-rate schedule, ``stop`` ends it after this epoch).

The files a run writes beside its checkpoints are listeners too, registered by ``default_callbacks``:
``metrics.csv``, the TensorBoard events (``--tensorboard``, when TensorBoard is installed), the plots, and the
MLflow run (``--mlflow``: a local file store, ``mlruns/`` in the runs folder; no server). Another tracker (W&B,
a database) is one more listener, added with ``train(config, callbacks={Event.EPOCH_END: [...]})``; the loop does
not change.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from mobiforge.config import TrainConfig
from mobiforge.errors import MobiforgeError
from mobiforge.runs import finish_plots, write_metrics_csv


class Event(enum.StrEnum):
    TRAIN_START = "on_train_start"
    EPOCH_START = "on_epoch_start"
    EPOCH_END = "on_epoch_end"
    CHECKPOINT_SAVED = "on_checkpoint_saved"
    TRAIN_END = "on_train_end"


class RunView(Protocol):
    """What a listener sees of a run (``train.Trainer`` is one)."""

    config: TrainConfig  # as it runs (its ``epochs`` re-planned, if a listener did)
    run_dir: Path
    classes: list[str]
    history: list[dict[str, Any]]  # a row per epoch done: ``metrics.csv``'s
    epoch: int  # epochs done
    epoch_seconds: float  # the last epoch's wall time, evaluation and checkpoint included
    whole_epoch: bool  # the last epoch started at its first step in this session
    frozen: bool  # the last epoch trained the head alone
    best_top1: float
    interrupted: bool

    def set_epochs(self, epochs: int) -> None: ...

    def stop(self, reason: str) -> None: ...


Callback = Callable[[RunView], None]
Callbacks = dict[Event, list[Callback]]


def default_callbacks(config: TrainConfig) -> Callbacks:
    """The files every run writes beside its checkpoints, and the trackers its config asks for."""
    callbacks: Callbacks = {
        Event.TRAIN_START: [write_metrics],  # a resumed run's history so far
        Event.EPOCH_END: [write_metrics],
        Event.TRAIN_END: [write_plots],
    }
    trackers: list[TensorBoard | Mlflow] = []
    if config.tensorboard:
        trackers.append(TensorBoard())
    if config.mlflow:
        trackers.append(Mlflow())
    for tracker in trackers:
        callbacks[Event.TRAIN_START].append(tracker.start)
        callbacks[Event.EPOCH_END].append(tracker.epoch_end)
        callbacks[Event.TRAIN_END].append(tracker.end)
    return callbacks


def merged(*tables: Callbacks | None) -> Callbacks:
    """The listeners of several tables, in order, event by event."""
    result: Callbacks = {}
    for table in tables:
        for event, functions in (table or {}).items():
            result.setdefault(Event(event), []).extend(functions)
    return result


def write_metrics(run: RunView) -> None:
    write_metrics_csv(run.run_dir, run.history)


def write_plots(run: RunView) -> None:
    finish_plots(run.run_dir, run.history, run.classes)


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in row.items() if key != "epoch"}


class TensorBoard:
    """The history rows as TensorBoard scalars in ``RUN/tensorboard`` (skipped when TensorBoard is not installed)."""

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run: RunView) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))

    def epoch_end(self, run: RunView) -> None:
        if self.writer is not None:
            for key, value in _scalars(run.history[-1]).items():
                self.writer.add_scalar(key, value, run.epoch)

    def end(self, run: RunView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


MLFLOW_STORE = "mlruns"  # in the runs folder: MLflow's local file store (``mlflow ui --backend-store-uri``)
# MLflow 3.18 keeps its file store in maintenance mode and refuses it unless this is set; a database backend would
# need SQLAlchemy and migrations for what is one folder of files. A value the user set is kept.
MLFLOW_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
MLFLOW_EXPERIMENT = "mobiforge"
RUN_DIR_TAG = "mobiforge_run_dir"  # the run folder an MLflow run records: a resumed run finds its MLflow run by it
MLFLOW_ARTIFACTS = ("config.yaml", "metrics.csv", "curves.png", "confusion.png")  # not the checkpoints: large


def mlflow_uri(runs_dir: str | Path) -> str:
    """The tracking URI of a runs folder's MLflow store."""
    return (Path(runs_dir).resolve() / MLFLOW_STORE).as_uri()


class Mlflow:
    """The run in MLflow's local file store (``--mlflow``): its config as parameters, each epoch's row as metrics at
    that step, and at the end its config, metrics and plots as artifacts. A resumed run continues its MLflow run."""

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id = ""
        self.store, self.errors = Path(MLFLOW_STORE), (OSError,)  # set by ``start``

    def start(self, run: RunView) -> None:
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MobiforgeError("--mlflow needs MLflow: pip install 'mobiforge[tracking]'") from None
        os.environ.setdefault(MLFLOW_FILE_STORE_ENV, "true")
        self.store, self.errors = Path(run.config.runs_dir) / MLFLOW_STORE, (MlflowException, OSError)
        with self._recording():
            self.client = MlflowClient(tracking_uri=mlflow_uri(run.config.runs_dir))
            self.run_id = self._run_of(run)

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """MLflow's errors (an unwritable folder, a full disk, a store another version wrote) as one line."""
        try:
            yield
        except self.errors as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise MobiforgeError(f"--mlflow: cannot record the run in {self.store} ({reason}); drop --mlflow") from None

    def _run_of(self, run: RunView) -> str:
        """The MLflow run of this run folder: found again on a resume, else created with the config as parameters."""
        experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(MLFLOW_EXPERIMENT)
        folder = str(run.run_dir.resolve())
        for found in self.client.search_runs([experiment_id]):  # compared here: a folder's name may hold quotes
            if found.data.tags.get(RUN_DIR_TAG) == folder:
                return str(found.info.run_id)
        run_id = str(self.client.create_run(experiment_id, run_name=run.run_dir.name).info.run_id)
        self.client.set_tag(run_id, RUN_DIR_TAG, folder)
        for key, value in _flat(run.config.to_dict()).items():
            self.client.log_param(run_id, key, value)
        return run_id

    def epoch_end(self, run: RunView) -> None:
        with self._recording():
            for key, value in _scalars(run.history[-1]).items():
                self.client.log_metric(self.run_id, key, value, step=run.epoch)

    def end(self, run: RunView) -> None:
        with self._recording():
            for name in MLFLOW_ARTIFACTS:
                if (run.run_dir / name).exists():
                    self.client.log_artifact(self.run_id, str(run.run_dir / name))
            self.client.set_terminated(self.run_id, "KILLED" if run.interrupted else "FINISHED")


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: ``optim.lr`` -> ``"0.01"``."""
    flat: dict[str, str] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            flat[f"{prefix}{key}"] = str(value)
    return flat
