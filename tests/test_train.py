"""Training end to end: run directory, checkpoints, exact resume after SIGKILL and Ctrl-C, DDP, eval, predict."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mobiforge.checkpoint import load_checkpoint, model_from_checkpoint
from mobiforge.cli import main
from mobiforge.data import DataConfig
from mobiforge.engine import OptimConfig
from mobiforge.errors import MobiforgeError
from mobiforge.inference import evaluate_checkpoint, predict
from mobiforge.models.whitening import first_conv
from mobiforge.train import EPOCH_END, TrainConfig, Trainer, train
from tests.helpers import make_image, make_split_folder, small_train_config


def _config(data: Path, runs: Path, **overrides) -> TrainConfig:
    return small_train_config(data, runs, **overrides)


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    return make_split_folder(tmp_path / "data", classes=3, train=32, val=6)


def test_train_writes_a_complete_run_directory(colours: Path, tmp_path: Path) -> None:
    result = train(_config(colours, tmp_path / "runs"))
    run = result.run_dir
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png", "confusion.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    raw = torch.load(run / "last.pt", weights_only=True)
    for key in ("epoch", "state_dict", "optimizer", "scheduler", "rng", "spec", "classes", "preprocess", "config"):
        assert key in raw, key
    assert raw["epoch"] == 3 and raw["classes"] == ["class0", "class1", "class2"]
    assert raw["preprocess"]["img_size"] == 16
    model = model_from_checkpoint(run / "best.pt")
    assert model.spec["kwargs"]["small_input"] is True


def test_a_short_fit_learns_well_above_chance(colours: Path, tmp_path: Path) -> None:
    # ~150 steps: BatchNorm's running statistics need about that many updates before eval mode is meaningful.
    config = _config(colours, tmp_path / "runs", epochs=12)
    config.data.img_size = 32
    result = train(config)
    assert result.best_top1 >= 80  # three patterns: chance is 33%


@pytest.mark.parametrize("planned, replanned", [(2, 4), (4, 2)])
def test_a_run_re_planned_after_its_first_epoch_ends_its_new_schedule(
    colours: Path, tmp_path: Path, planned: int, replanned: int
) -> None:
    """A callback re-plans the epoch count once the first epoch is timed (ship does, on its budget): the run trains that
    many epochs, its learning rate reaches the end of the new schedule, and the new plan is what a resume reads."""
    asked = []

    def replan(trainer: Trainer) -> None:
        if not asked:
            asked.append((trainer.epoch, trainer.epoch_seconds))
            trainer.set_epochs(replanned)

    result = train(_config(colours, tmp_path / "runs", epochs=planned), callbacks={EPOCH_END: [replan]})
    assert len(asked) == 1 and asked[0][0] == 1 and asked[0][1] > 0
    assert [row["epoch"] for row in result.history] == list(range(1, replanned + 1))
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine to zero: the schedule ended
    assert load_checkpoint(result.run_dir / "last.pt")["config"]["epochs"] == replanned
    assert f"epochs: {replanned}" in (result.run_dir / "config.yaml").read_text()


def test_existing_run_is_never_overwritten(colours: Path, tmp_path: Path) -> None:
    train(_config(colours, tmp_path / "runs", epochs=1))
    with pytest.raises(MobiforgeError, match="already holds a run; continue it with --resume"):
        train(_config(colours, tmp_path / "runs", epochs=1))


def test_images_cached_in_memory_train_exactly_like_images_read_from_files(
    colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.data.cache as cache_module
    import mobiforge.data.datasets as datasets_module
    from mobiforge.data import load_image, load_rgb

    reads: list[str] = []
    # the two that read images: the memory cache (Pillow), the dataset (its tensors)
    monkeypatch.setattr(cache_module, "load_rgb", lambda path, *args: reads.append(path) or load_rgb(path, *args))
    monkeypatch.setattr(
        datasets_module, "load_image", lambda path, *args: reads.append(path) or load_image(path, *args)
    )
    runs, read_counts = {}, {}
    for cache in ("none", "auto"):
        config = _config(colours, tmp_path / "runs", name=cache, epochs=2, deterministic=True)
        config.data.cache = cache
        config.data.trivial_augment = True  # keeps the per-sample steps (pad-and-crop is batched when cached)
        reads.clear()
        runs[cache] = train(config).run_dir
        read_counts[cache] = len(reads)
    _assert_same_run(runs["none"], runs["auto"])  # pad-and-crop at 16 px: the same recipe, split in two
    assert read_counts["auto"] == 32 * 3 + 6 * 3  # every file decoded once, before training
    assert read_counts["none"] == 2 * read_counts["auto"]  # uncached: both epochs read every file again


def test_cached_small_images_are_augmented_a_batch_at_a_time_and_repeatably(
    colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mobiforge.data import PadCropBatch

    batches: list[int] = []
    call = PadCropBatch.__call__
    monkeypatch.setattr(PadCropBatch, "__call__", lambda self, x, g: batches.append(len(x)) or call(self, x, g))
    runs = [train(_config(colours, tmp_path / "runs", name=f"r{i}", epochs=2, deterministic=True)).run_dir
            for i in range(2)]  # fmt: skip
    assert batches and max(batches) > 1  # whole batches, not single samples
    _assert_same_run(*runs)  # seeded by the batch's sample keys: the same run twice


def test_unknown_cache_mode_is_a_one_line_error(colours: Path, tmp_path: Path) -> None:
    config = _config(colours, tmp_path / "runs")
    config.data.cache = "disk"
    with pytest.raises(MobiforgeError, match="--cache must be auto or memory or none, got disk"):
        train(config)


def test_a_whitened_stem_stays_frozen_through_training_and_a_resume(colours: Path, tmp_path: Path) -> None:
    config = _config(colours, tmp_path / "runs", epochs=2, whiten_stem=True)
    config.optim = OptimConfig(lr=0.05, nesterov=True)
    result = train(config)
    stem = first_conv(model_from_checkpoint(result.run_dir / "last.pt")).weight
    assert torch.equal(stem[: len(stem) // 2], -stem[len(stem) // 2 :])  # +/- pairs of whitening filters
    checkpoint = load_checkpoint(result.run_dir / "last.pt")
    assert checkpoint["config"]["whiten_stem"] and checkpoint["config"]["optim"]["nesterov"]
    assert all(group["nesterov"] for group in checkpoint["optimizer"]["param_groups"])  # the optimizer got it
    resumed = train(_config(colours, tmp_path / "runs", resume=str(result.run_dir / "last.pt"), epochs=3))
    assert torch.equal(first_conv(model_from_checkpoint(resumed.run_dir / "last.pt")).weight, stem)  # still frozen


def test_airbench_starts_hold_bn_scales_at_1_through_training_and_a_resume(colours: Path, tmp_path: Path) -> None:
    config = _config(colours, tmp_path / "runs", epochs=2, identity_init=True, model="convpool_s", width_mult=0.5)
    config.optim = OptimConfig(lr=0.05, norm_bias_lr_scale=64.0)
    trainer = Trainer(dataclasses.replace(config, name="setup-only"))
    trainer.setup()  # the start, before any step: each conv after the stem passes its inputs through
    conv = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)][1]
    centre = conv.weight[: conv.in_channels, :, 1, 1]
    assert torch.equal(centre, torch.eye(conv.in_channels)), "identity start not applied"
    result = train(config)

    def norms(run: Path) -> list[torch.nn.BatchNorm2d]:
        model = model_from_checkpoint(run / "last.pt")
        return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in norms(result.run_dir))
    assert any(bn.bias.abs().sum() > 0 for bn in norms(result.run_dir))  # the biases trained
    checkpoint = load_checkpoint(result.run_dir / "last.pt")
    assert checkpoint["config"]["identity_init"] and checkpoint["config"]["optim"]["norm_bias_lr_scale"] == 64.0
    resumed = train(_config(colours, tmp_path / "runs", resume=str(result.run_dir / "last.pt"), epochs=3))
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in norms(resumed.run_dir))


@pytest.mark.parametrize("flag", ["whiten_stem", "identity_init"])
def test_a_from_scratch_start_with_pretrained_weights_is_a_one_line_error(
    colours: Path, tmp_path: Path, flag: str
) -> None:
    config = _config(colours, tmp_path / "runs", init_from=str(tmp_path / "any.pt"), **{flag: True})
    with pytest.raises(MobiforgeError, match=f"--{flag.replace('_', '-')} starts a model from scratch"):
        train(config)


def test_nesterov_needs_sgd_with_momentum() -> None:
    with pytest.raises(MobiforgeError, match="--nesterov applies to --optimizer sgd"):
        OptimConfig(nesterov=True, momentum=0.0)
    with pytest.raises(MobiforgeError, match="--nesterov"):
        OptimConfig(nesterov=True, optimizer="adamw")


def _cli_args(data: Path, runs: Path, name: str, epochs: int = 3, workers: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mobiforge",
        "train",
        "--model",
        "mobilenet_v2",
        "--width-mult",
        "0.5",
        "--data",
        str(data),
        "--img-size",
        "48",
        "--batch-size",
        "4",
        "--workers",
        str(workers),
        "--epochs",
        str(epochs),
        "--deterministic",
        "--threads",
        "1",
        "--runs-dir",
        str(runs),
        "--name",
        name,
        "--opt",
        "adamw",
        "--lr",
        "0.002",
        "--sched",
        "cosine",
        "--no-tensorboard",
        "--mixup",
        "0.2",
        "--ema",
        "0.9",  # an exact resume restores the raw weights and their average
    ]


def _final_state(run: Path) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for row in rows:
        row.pop("epoch_seconds"), row.pop("images_per_second")
    return rows, load_checkpoint(run / "last.pt")["state_dict"]


def _assert_same_run(a: Path, b: Path) -> None:
    rows_a, state_a = _final_state(a)
    rows_b, state_b = _final_state(b)
    assert rows_a == rows_b
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A deterministic 3-epoch run that nothing interrupts, shared by the resume tests."""
    root = tmp_path_factory.mktemp("resume")
    data = make_split_folder(root / "data", classes=3, train=24, val=6)
    subprocess.run(_cli_args(data, root / "runs", "reference"), check=True, capture_output=True)
    return data, root / "runs" / "reference"


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def _epoch_in(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"]) if path.exists() else 0
    except Exception:  # being replaced right now
        return 0


def _stop_during_epoch_two(data: Path, runs: Path, name: str, signum: int) -> tuple[Path, int]:
    """Start the deterministic run, send ``signum`` half a second into its second epoch; return last.pt, exit code."""
    process = subprocess.Popen(_cli_args(data, runs, name), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = runs / name / "last.pt"
    _wait_for(lambda: _epoch_in(last) >= 1)
    time.sleep(0.5)
    process.send_signal(signum)
    return last, process.wait(timeout=120)


def _resume(last: Path) -> None:
    resumed = subprocess.run(
        [sys.executable, "-m", "mobiforge", "train", "--resume", str(last)],  # keeps the run's own 3 epochs
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(reference_run: tuple[Path, Path]) -> None:
    data, reference = reference_run
    last, _ = _stop_during_epoch_two(data, reference.parent, "killed", signal.SIGKILL)
    assert _epoch_in(last) == 1  # it died during the second epoch, with no chance to save
    _resume(last)
    _assert_same_run(reference, last.parent)


@pytest.mark.slow
def test_ctrl_c_saves_mid_epoch_and_resume_matches(reference_run: tuple[Path, Path]) -> None:
    data, reference = reference_run
    last, code = _stop_during_epoch_two(data, reference.parent, "interrupted", signal.SIGINT)
    assert code == 130
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 1 and saved["step_in_epoch"] > 0  # saved mid-epoch 2
    _resume(last)
    _assert_same_run(reference, last.parent)


@pytest.mark.slow
def test_torchrun_two_processes(colours: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mobiforge",
        "train",
        "--model",
        "mobilenet_v3_small",
        "--width-mult",
        "0.5",
        "--data",
        str(colours),
        "--img-size",
        "16",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--epochs",
        "2",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--name",
        "ddp",
        "--threads",
        "1",
        "--no-tensorboard",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "runs" / "ddp"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["metrics"]["val"]["images"] == 18  # both shards' counts summed: the whole val set
    assert sum(sum(row) for row in checkpoint["metrics"]["val"]["confusion"]) == 18
    assert not list(run.glob("*.tmp"))


def test_eval_and_predict(colours: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(_config(colours, tmp_path / "runs", epochs=4)).run_dir
    report = evaluate_checkpoint(run / "best.pt", workers=0)
    assert report.result.images == 18 and len(report.result.per_class) == 3
    assert report.result.top1 == pytest.approx(load_checkpoint(run / "best.pt")["metrics"]["val"]["top1"])
    held_out = make_image(tmp_path / "new.png", (40, 200, 60), size=30, seed=99)  # class1's colour
    top = predict(run / "best.pt", [str(held_out)], top_k=2)[0]["top"]
    assert len(top) == 2 and sum(entry["probability"] for entry in top) <= 1.0 + 1e-6
    assert main(["eval", str(run / "best.pt"), "--json", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 18
    assert main(["predict", str(run / "best.pt"), str(held_out)]) == 0
    assert "class" in capsys.readouterr().out
    assert main(["predict", str(run / "best.pt"), str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


def test_cli_train_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MOBIFORGE_HOME", str(tmp_path / "home"))
    code = main(
        [
            "train",
            "--model",
            "mobilenet_v3_small",
            "--width-mult",
            "0.5",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--name",
            "digits",
            "--no-tensorboard",
            "--img-size",
            "16",
        ]
    )
    assert code == 0
    assert "done: val top-1" in capsys.readouterr().out


def test_hymenoptera_with_its_gif_needs_no_flag(shared_dir: Path) -> None:
    from mobiforge.data import check_images, discover

    root = shared_dir / "datasets" / "hymenoptera"
    if not root.is_dir():
        pytest.skip("hymenoptera is not present")
    splits = check_images(discover(DataConfig(data=str(root))), skip_bad=False)
    assert splits.classes == ["ants", "bees"]
    assert splits.ignored_files == 1  # the .gif
    assert len(splits.train) + len(splits.val) == 397


def test_every_training_option_runs(colours: Path, tmp_path: Path) -> None:
    config = _config(colours, tmp_path / "runs", epochs=2, amp="bf16")
    config.data.mixup, config.data.cutmix, config.data.trivial_augment = 0.2, 1.0, True
    config.data.random_erasing, config.data.crop = 0.25, "rrc"
    config.optim = OptimConfig(
        optimizer="rmsprop",
        lr=1e-3,
        scheduler="onecycle",
        weight_decay=1e-5,
        label_smoothing=0.1,
        clip_grad=1.0,
        ema_decay=0.9,
    )
    result = train(config)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    checkpoint = load_checkpoint(result.run_dir / "last.pt")
    assert checkpoint["ema"] is not None and checkpoint["config"]["amp"] == "bf16"
    # the weights that were validated (the EMA's) are the checkpoint's model; the raw ones are kept for a resume
    raw, averaged = checkpoint["train_state_dict"], checkpoint["state_dict"]
    assert all(torch.equal(averaged[key], checkpoint["ema"][f"module.{key}"]) for key in averaged)
    assert any(not torch.equal(averaged[key], raw[key]) for key in averaged if averaged[key].is_floating_point())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.engine as engine

    real = engine.cross_entropy_loss
    steps_per_epoch = 96 // 8

    def poisoned(label_smoothing: float = 0.0):
        loss_fn, calls = real(label_smoothing), [0]

        def fn(logits, targets, images):
            calls[0] += 1
            loss = loss_fn(logits, targets, images)
            return loss * float("nan") if calls[0] > steps_per_epoch + 3 else loss  # NaN in the second epoch

        return fn

    monkeypatch.setattr(engine, "cross_entropy_loss", poisoned)
    with pytest.raises(engine.DivergedError, match="loss became nan at epoch 2, step 4; the last good checkpoint is"):
        train(_config(colours, tmp_path / "runs", epochs=3))
    assert load_checkpoint(tmp_path / "runs" / "run" / "last.pt")["epoch"] == 1


def test_hymenoptera_short_training(shared_dir: Path, tmp_path: Path) -> None:
    root = shared_dir / "datasets" / "hymenoptera"
    if not root.is_dir():
        pytest.skip("hymenoptera is not present")
    config = TrainConfig(
        model="mobilenet_v3_small",
        width_mult=0.5,
        data=DataConfig(data=str(root), img_size=64, batch_size=32, workers=2),
        epochs=1,
        runs_dir=str(tmp_path),
        name="ants-bees",
        tensorboard=False,
    )
    result = train(config)
    checkpoint = load_checkpoint(result.run_dir / "last.pt")
    assert checkpoint["classes"] == ["ants", "bees"] and checkpoint["data"]["val_images"] == 153


@pytest.mark.slow
def test_torch_compile_option(colours: Path, tmp_path: Path) -> None:
    result = train(_config(colours, tmp_path / "runs", epochs=1, compile=True))  # ~45 s of inductor compilation
    state = load_checkpoint(result.run_dir / "last.pt")["state_dict"]
    assert not any(key.startswith("_orig_mod") for key in state)  # the checkpoint holds the plain model's keys
    assert model_from_checkpoint(result.run_dir / "last.pt")(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_eval_of_a_train_test_layout_uses_test_as_val(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "tt", classes=3, train=8, val=3, val_name="test")
    run = train(_config(data, tmp_path / "runs", epochs=1)).run_dir
    assert evaluate_checkpoint(run / "last.pt", workers=0).result.images == 9  # the split training validated on
    assert evaluate_checkpoint(run / "last.pt", split="test", workers=0).result.images == 9
