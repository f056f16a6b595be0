"""One training loop for every run (issue 45, item 1): its events, the built-in listeners, MLflow as a real
integration, and ``--config FILE`` replaying a run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from mobiforge import create_model
from mobiforge.callbacks import Event, RunView, mlflow_uri
from mobiforge.checkpoint import model_checkpoint, save_checkpoint
from mobiforge.cli import main
from mobiforge.config import TrainConfig
from mobiforge.ship import fit_epochs, replan_early, stop_by
from mobiforge.train import train
from tests.helpers import make_split_folder, small_train_config


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_split_folder(tmp_path / "data", classes=3, train=16, val=6)


def _source(kind: str, data: Path, runs: Path, name: str = "run", **overrides: object) -> TrainConfig:
    """A tiny run of either data source: images trained whole, or a cached tail (its trunk's outputs cached)."""
    config = small_train_config(data, runs, name=name, **overrides)
    if kind == "cached tail":
        runs.mkdir(parents=True, exist_ok=True)
        model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
        start = save_checkpoint(model_checkpoint(model, classes=["class0", "class1", "class2"]), runs / "start.pt")
        config.init_from, config.trainable_blocks, config.views = str(start), 1, 2
    return config


SOURCES = ["images", "cached tail"]


@pytest.mark.parametrize("kind", SOURCES)
def test_every_run_fires_the_same_events_in_order(kind: str, data: Path, tmp_path: Path) -> None:
    heard: list[tuple[str, int]] = []

    def listener(event: Event):  # type: ignore[no-untyped-def]
        return lambda run: heard.append((event.name, run.epoch))

    config = _source(kind, data, tmp_path / "runs", epochs=2)
    result = train(config, callbacks={event: [listener(event)] for event in Event})
    per_epoch = [("EPOCH_START", 0), ("CHECKPOINT_SAVED", 1), ("EPOCH_END", 1)]
    per_epoch += [("EPOCH_START", 1), ("CHECKPOINT_SAVED", 2), ("EPOCH_END", 2)]
    assert heard == [("TRAIN_START", 0), *per_epoch, ("TRAIN_END", 2)]
    for name in ("metrics.csv", "curves.png", "last.pt", "best.pt"):  # the built-in listeners' files
        assert (result.run_dir / name).exists(), name


@pytest.mark.parametrize("kind", SOURCES)
def test_ships_budget_callbacks_re_plan_and_stop_either_data_source(kind: str, data: Path, tmp_path: Path) -> None:
    """``replan_early`` and ``stop_by`` are ship's time budget: one Trainer serves both sources, so they act the same
    on a cached tail as on images."""
    config = _source(kind, data, tmp_path / "runs", name="longer", epochs=2)
    longer = train(config, callbacks={Event.EPOCH_END: [replan_early(lambda done, seconds: 4)]})
    assert len(longer.history) == 4
    assert yaml.safe_load((longer.run_dir / "config.yaml").read_text())["epochs"] == 4  # saved: a resume follows it
    lrs = [row["lr"] for row in longer.history]
    assert lrs == sorted(lrs, reverse=True)  # one cosine curve to the new end

    config = _source(kind, data, tmp_path / "runs", name="stopped", epochs=3)
    stopped = train(config, callbacks={Event.EPOCH_END: [stop_by(time.time())]})
    assert len(stopped.history) == 1 and not stopped.interrupted

    config = _source(kind, data, tmp_path / "runs", name="fitted", epochs=2)
    fitted = train(config, callbacks={Event.EPOCH_END: [replan_early(fit_epochs(time.time() + 3600, 3))]})
    assert len(fitted.history) == 3  # capped


def test_a_listener_may_stop_the_run_through_its_view(data: Path, tmp_path: Path) -> None:
    def stop_after_one(run: RunView) -> None:
        run.stop("enough")

    result = train(small_train_config(data, tmp_path / "runs"), callbacks={Event.EPOCH_END: [stop_after_one]})
    assert len(result.history) == 1


def test_an_mlflow_run_is_recorded_in_the_local_file_store(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="MLflow is the optional tracking extra: pip install 'mobiforge[tracking]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # --mlflow sets it for its own store (callbacks)
    config = small_train_config(data, tmp_path / "runs", epochs=2)
    config.mlflow = True
    result = train(config)
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    client = MlflowClient(tracking_uri=mlflow_uri(tmp_path / "runs"))
    assert (tmp_path / "runs" / "mlruns").is_dir()  # a file store beside the runs: no server
    experiment = client.get_experiment_by_name("mobiforge")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == result.run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["model"] == "mobilenet_seed" and run.data.params["optim.lr"] == "0.002"
    top1 = client.get_metric_history(run.info.run_id, "val_top1")
    assert [(m.step, m.value) for m in top1] == [(row["epoch"], row["val_top1"]) for row in result.history]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", "curves.png"} <= artifacts


def test_a_resumed_run_continues_its_mlflow_run(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="MLflow is the optional tracking extra: pip install 'mobiforge[tracking]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    config = small_train_config(data, tmp_path / "runs", name="it's quoted", epochs=1)
    config.mlflow = True
    first = train(config)
    train(TrainConfig(resume=str(first.run_dir / "last.pt"), epochs=2, mlflow=True))
    client = MlflowClient(tracking_uri=mlflow_uri(tmp_path / "runs"))
    [run] = client.search_runs([client.get_experiment_by_name("mobiforge").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]


def test_an_mlflow_store_that_cannot_be_written_is_a_one_line_error(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlflow", reason="MLflow is the optional tracking extra: pip install 'mobiforge[tracking]'")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mlruns").write_text("a file where the store's folder goes")
    args = ["train", "--data", str(data), "--img-size", "16", "--epochs", "1", "--workers", "0", "--model",
            "mobilenet_seed", "--width-mult", "0.25", "--runs-dir", str(runs), "--mlflow"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mobiforge train: error: --mlflow: cannot record the run in")
    assert not any("Traceback" in line for line in err)


def test_a_run_is_replayed_from_its_config_file_with_the_flags_given_overriding_it(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train(small_train_config(data, tmp_path / "runs", name="first", epochs=1))
    monkeypatch.chdir(tmp_path)  # the saved paths are relative to the run folder: read from anywhere
    saved = first.run_dir / "config.yaml"
    assert main(["train", "--config", str(saved), "--epochs", "2", "--name", "again", "--lr", "0.01"]) == 0
    again = yaml.safe_load((tmp_path / "runs" / "again" / "config.yaml").read_text())
    before = yaml.safe_load(saved.read_text())
    assert (again["epochs"], again["optim"]["lr"], again["name"]) == (2, 0.01, "again")
    same = {key for key in before if key not in ("epochs", "optim", "name")}
    assert {key: again[key] for key in same} == {key: before[key] for key in same}
    assert again["data"] == before["data"] and again["optim"]["scheduler"] == before["optim"]["scheduler"]

    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("- not\n- settings\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2


def test_mlflow_failing_mid_run_is_a_one_line_error(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="MLflow is the optional tracking extra: pip install 'mobiforge[tracking]'")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mobiforge.errors import MobiforgeError

    def full_disk(*args: object, **kwargs: object) -> None:
        raise MlflowException("No space left on device\nmore detail")

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setattr(MlflowClient, "log_metric", full_disk)
    config = small_train_config(data, tmp_path / "runs", epochs=1)
    config.mlflow = True
    with pytest.raises(
        MobiforgeError, match=r"--mlflow: cannot record the run in .*mlruns \(No space left on device\)"
    ):
        train(config)
    assert (tmp_path / "runs" / "run" / "last.pt").exists()  # the epoch's checkpoint was written first
