"""Hostile files and lost work (issue 25, items 8-11 and 13-16): crafted checkpoints and artifacts, run folders
that belong to another run, rich markup in names, a damaged ship state, a full disk, and memory per image.
Every file here is generated; nothing needs ../shared."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobiforge.checkpoint import Checkpoint, save_checkpoint
from mobiforge.errors import MobiforgeError
from mobiforge.models import create_model
from mobiforge.models.base import Preprocess
from tests.helpers import make_split_folder

CLASSES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_split_folder(tmp_path_factory.mktemp("hostile-data"), train=4, val=2)


@pytest.fixture(scope="module")
def checkpoint(data: Path) -> dict:
    model = create_model("mobilenet_v1", num_classes=3, width_mult=0.25)
    saved = Checkpoint.of(model, classes=CLASSES, preprocess=Preprocess(img_size=32, crop_pct=1.0)).to_dict()
    saved["config"] = {"data": {"data": str(data)}}
    saved["optimizer"] = {}
    return saved


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from mobiforge.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _edited(checkpoint: dict, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    changed = copy.deepcopy(checkpoint)
    edit(changed)
    path = tmp_path / "edited.pt"
    torch.save(changed, path)
    return path


# ------------------------------------------------------------------------------------------------ item 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pretrained": True, "download": True}, "does not take download, pretrained"),
        ({"width_mult": 1e6}, "parameters, over the 100,000,000"),
        ({"num_classes": 10**9}, "parameters, over the 100,000,000"),
        ({"width_mult": "wide"}, "cannot build 'mobilenet_v1'"),
    ],
    ids=["download", "width", "classes", "type"],
)
def test_a_spec_from_a_file_cannot_download_or_ask_for_gigabytes(
    checkpoint: dict, tmp_path: Path, kwargs: dict, message: str, capsys
) -> None:
    """Item 9: a spec with pretrained/download tried to fetch weights; width_mult=1e6 reached 6.4 GB."""
    path = _edited(checkpoint, tmp_path, lambda c: c["spec"]["kwargs"].update(kwargs))
    image = Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    code, _, err = _cli(["predict", str(path), str(tmp_path / "x.png")], capsys)
    assert code == 2 and "\n" not in err and message in err and str(path) in err, (image, err)


def test_a_stored_data_path_of_a_system_folder_is_not_walked(checkpoint: dict, tmp_path: Path, capsys) -> None:
    """Item 9: a checkpoint whose saved data path is / walked the whole filesystem."""
    path = _edited(checkpoint, tmp_path, lambda c: c.update(config={"data": {"data": "/"}}))
    code, _, err = _cli(["eval", str(path)], capsys)
    assert code == 2 and "names / as its data, a system or home folder" in err and "--data" in err


def test_a_class_folder_linked_to_the_home_folder_is_not_walked(tmp_path: Path, monkeypatch) -> None:
    """Issue 44 item 14: the system-folder check looked only at the data folder itself; class folders linking to /
    were walked. (Home stands in for /: a regression walks a small fake home, not this machine.)"""
    from mobiforge.data import DataConfig, discover

    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "x.png").write_bytes(b"not an image")
    monkeypatch.setattr(Path, "home", lambda: home)
    data = make_split_folder(tmp_path / "data", classes=2, train=2, val=1)
    (data / "train" / "linked").symlink_to(home, target_is_directory=True)
    with pytest.raises(MobiforgeError, match=r"linked links to .*home, a system or home folder") as error:
        discover(DataConfig(data=str(data)))
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------ item 10


MALFORMED = {
    "other widths": (lambda c: c["spec"]["kwargs"].update(width_mult=0.5), "of another shape (e.g. features.0.0"),
    "foreign weights": (lambda c: c.update(state_dict={"x": torch.zeros(1)}), "missing (e.g. features.0.0.weight)"),
    "preprocess": (lambda c: c.update(preprocess={"img_size": "y"}), "malformed 'preprocess'"),
    "preprocess mean": (lambda c: c["preprocess"].update(mean="x"), "malformed 'preprocess'"),
    # issue 44 items 6 and 12: a NaN mean gave a wrong answer; crop_pct 1e-7 a 307 PB resize; None ran at 224 px
    "nan mean": (lambda c: c["preprocess"].update(mean=[float("nan"), 0.5, 0.5]), "must be finite"),
    "inf std": (lambda c: c["preprocess"].update(std=[float("inf"), 0.5, 0.5]), "must be finite"),
    "tiny crop_pct": (lambda c: c["preprocess"].update(crop_pct=1e-7), "crop_pct 1e-07 is outside [0.05, 1]"),
    "no preprocess": (lambda c: c.update(preprocess=None), "it is NoneType, not a dict"),
    "short classes": (lambda c: c.update(classes=["a"]), "3 outputs but 1 class names"),
    "classes type": (lambda c: c.update(classes=7), "'classes' must be a list"),
    "spec": (lambda c: c.update(spec="zzz"), "a model spec is {'name': str, 'kwargs': dict}"),
    "kwargs": (lambda c: c.update(spec={"name": "mobilenet_v1", "kwargs": [1, 2]}), "a model spec is"),
    "unknown model": (lambda c: c["spec"].update(name="resnet9000"), "unknown model 'resnet9000'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_checkpoint_is_one_line_naming_the_file(
    checkpoint: dict, tmp_path: Path, case: str, capsys
) -> None:
    """Item 10: a wrong spec for the state_dict gave a 26-line RuntimeError; bad preprocess or classes, ValueError,
    TypeError, IndexError."""
    edit, message = MALFORMED[case]
    path = _edited(checkpoint, tmp_path, edit)
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    for argv in (["predict", str(path), str(tmp_path / "x.png")], ["eval", str(path)]):
        code, _, err = _cli(argv, capsys)
        assert code == 2 and "\n" not in err and str(path) in err and message in err, err


def test_resuming_from_a_checkpoint_without_training_state_is_one_line(
    checkpoint: dict, data: Path, tmp_path: Path, capsys
) -> None:
    """Item 10: --resume of a checkpoint without config (or optimizer, rng...) ended in KeyError."""
    path = tmp_path / "weights-only.pt"
    saved = {key: value for key, value in checkpoint.items() if key != "config"}
    torch.save(saved, path)
    code, _, err = _cli(["train", "--resume", str(path)], capsys)
    assert code == 2 and "not a resumable training checkpoint (no 'config')" in err and "--init-from" in err
    torch.save({**saved, "config": {"model": "mobilenet_v1", "data": {"data": str(data)}}}, path)
    code, _, err = _cli(["train", "--resume", str(path), "--epochs", "2"], capsys)
    assert code == 2 and "not a resumable training checkpoint" in err and "\n" not in err, err


# ------------------------------------------------------------------------------------------------ item 8


@pytest.mark.parametrize("suffix", [".pte", ".tflite", ".onnx"])
def test_an_artifact_with_a_foreign_header_never_reaches_its_runtime(tmp_path: Path, suffix: str, capsys) -> None:
    """Item 8: 8 bytes plus 200 zeros given to `mobiforge profile` aborted the process inside ExecuTorch."""
    from mobiforge.runtimes import load_runner

    for name, content in (("empty", b""), ("zeros", bytes(208)), ("png", b"\x89PNG\r\n\x1a\n" + bytes(200))):
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(content)
        refused = rf"{path.name}: not a \{suffix} file of .* \((empty|its header is wrong)\)"
        with pytest.raises(MobiforgeError, match=refused):
            load_runner(path)
    code, _, err = _cli(["profile", str(tmp_path / f"zeros{suffix}")], capsys)
    assert code == 2 and "export it again with mobiforge export" in err


# ------------------------------------------------------------------------------------------------ item 11


def test_a_run_folder_made_by_another_kind_of_run_is_refused_before_any_work(tmp_path: Path) -> None:
    """Item 11: train --name on a ship folder overwrote its plots; ship --out on a train run its curves.png."""
    from mobiforge.runs import RUN_FILE, check_run_dir, claim_run_dir

    ship_dir, prune_dir = tmp_path / "ship-x", tmp_path / "pruned"
    claim_run_dir(ship_dir, "ship")
    assert json.loads((ship_dir / RUN_FILE).read_text())["kind"] == "ship"
    with pytest.raises(MobiforgeError, match=r"holds a ship run \(made by `.*`\); write this train run"):
        check_run_dir(ship_dir, "train")
    claim_run_dir(ship_dir, "ship")  # the same kind resumes
    claim_run_dir(prune_dir, "prune")
    claim_run_dir(prune_dir, "train")  # prune's fine-tuning runs in its folder
    assert json.loads((prune_dir / RUN_FILE).read_text())["kind"] == "prune"
    legacy = tmp_path / "old-train"
    legacy.mkdir()
    (legacy / "last.pt").write_bytes(b"")
    with pytest.raises(MobiforgeError, match="holds a train run"):
        check_run_dir(legacy, "ship")
    exported = tmp_path / "exported"  # issue 44 item 13: an export's folder has no run.json
    exported.mkdir()
    for name in ("model.pte", "model.pte.json", "labels.txt"):
        (exported / name).write_text("")
    with pytest.raises(MobiforgeError, match="holds an export run"):
        check_run_dir(exported, "ship")
    (tmp_path / "file").write_text("")
    with pytest.raises(MobiforgeError, match="is a file"):
        check_run_dir(tmp_path / "file", "train")


def test_train_and_ship_refuse_each_others_folders(data: Path, tmp_path: Path) -> None:
    from mobiforge.config import ShipConfig
    from mobiforge.runs import claim_run_dir
    from mobiforge.ship import ship
    from mobiforge.train import train
    from tests.helpers import small_train_config

    claim_run_dir(tmp_path / "ship-run", "ship")
    (tmp_path / "ship-run" / "report.html").write_text("the ship report")
    started = time.monotonic()
    with pytest.raises(MobiforgeError, match="holds a ship run"):
        train(small_train_config(data, tmp_path, name="ship-run", epochs=1))
    assert time.monotonic() - started < 5 and (tmp_path / "ship-run" / "report.html").read_text() == "the ship report"
    claim_run_dir(tmp_path / "train-run", "train")
    with pytest.raises(MobiforgeError, match="holds a train run"):
        ship(ShipConfig(data=str(data), out=str(tmp_path / "train-run")))
    assert not (tmp_path / "train-run" / "ship_state.json").exists()


def test_prune_refuses_a_train_run_folder_before_pruning(checkpoint: dict, tmp_path: Path) -> None:
    """Item 11: prune --name of an existing run was refused only after 79 s of work, leaving a stray pruned.pt."""
    from mobiforge.prune import PruneConfig, prune

    path = save_checkpoint(checkpoint, tmp_path / "model.pt")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "last.pt").write_bytes(b"")
    with pytest.raises(MobiforgeError, match="already holds a run"):
        prune(PruneConfig(checkpoint=str(path), ratio=0.5, name="taken", runs_dir=str(tmp_path / "runs")))
    assert not (tmp_path / "runs" / "taken" / "pruned.pt").exists()


# ------------------------------------------------------------------------------------------------ item 13


def test_rich_markup_in_class_and_file_names_is_printed_as_text(checkpoint: dict, tmp_path: Path, capsys) -> None:
    """Item 13: --name 'x[/]y' crashed the CLI with a MarkupError; class names with [bold] lost text in tables."""
    names = ["[bold]ants", "x[red]y", "c[i]"]  # a class is a folder name: no "/", so no "[/]" here
    data = tmp_path / "d[i]ata"
    for index, name in enumerate(names):
        for split in ("train", "val"):
            (data / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (index * 80, 40, 200)).save(data / split / name / "0.png")
    saved = copy.deepcopy(checkpoint)
    saved["classes"] = names
    path = save_checkpoint(saved, tmp_path / "x[/]y" / "m[b]odel.pt")
    code, out, err = _cli(["eval", str(path), "--data", str(data)], capsys)
    assert code == 0, err
    for text in [*names, "x[/]y/m[b]odel.pt", "[val]"]:
        assert text in out, out


# ------------------------------------------------------------------------------------------------ item 14


def _ship_state(tmp_path: Path):  # type: ignore[no-untyped-def]
    from mobiforge.config import ShipConfig
    from mobiforge.ship.state import ShipState

    config = ShipConfig(data="digits", out=str(tmp_path))
    return (lambda: ShipState(tmp_path, config)), config


def test_a_damaged_ship_state_resumes_from_its_previous_copy(tmp_path: Path) -> None:
    """Item 14: a corrupt ship_state.json blocked resume with a traceback."""
    from mobiforge.ship.state import RESULT, ResultRecord

    new_state, _ = _ship_state(tmp_path)
    state = new_state()
    state.finish(RESULT, ResultRecord("a", "a", None))
    state.finish(RESULT, ResultRecord("b", "b", None))  # the first write is now the backup
    assert (tmp_path / "ship_state.json.bak").exists()
    (tmp_path / "ship_state.json").write_text('{"version": 1, "stag')
    resumed = new_state()
    assert resumed.recovered.endswith("resumed from its previous copy") and resumed.done(RESULT).chosen == "a"
    (tmp_path / "ship_state.json.bak").write_text("")
    with pytest.raises(MobiforgeError, match="is damaged and has no good previous copy; to start over, delete it"):
        new_state()


def test_the_time_spent_is_saved_however_a_ship_run_ends(tmp_path: Path, monkeypatch) -> None:
    """Item 14: time lost to a kill (27-35 s) was not counted against the budget on resume."""
    import mobiforge.ship.state as state_module

    monkeypatch.setattr(state_module, "CLOCK_SECONDS", 0.05)
    from mobiforge.ship.state import RESULT, ResultRecord

    new_state, config = _ship_state(tmp_path)
    state = new_state()
    state.finish(RESULT, ResultRecord(None, None, None))  # a stage done: there is something to resume
    with pytest.raises(KeyboardInterrupt), state.clock():
        time.sleep(0.3)
        saved = json.loads((tmp_path / "ship_state.json").read_text())["elapsed_s"]
        assert saved >= 0.1  # written by the clock while the run went on: a SIGKILL loses at most CLOCK_SECONDS
        raise KeyboardInterrupt
    resumed = new_state()
    assert resumed.elapsed_before >= 0.3
    assert resumed.left() <= config.time_budget_s - 0.3


# ------------------------------------------------------------------------------------------------ item 15


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    folder = tmp_path / "disk"
    folder.mkdir()
    result = subprocess.run([mount, "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tiny_disk: Path) -> None:
    """Item 15: a full disk ended in a double traceback that never said "disk full"."""
    from mobiforge.files import write_atomic

    path = save_checkpoint({"weights": torch.zeros(100)}, tiny_disk / "last.pt")
    with pytest.raises(MobiforgeError, match=r"disk full while writing .*last.pt; the previous copy is kept"):
        save_checkpoint({"weights": torch.zeros(1_000_000)}, path)
    assert torch.load(path, weights_only=True)["weights"].shape == (100,)
    with pytest.raises(MobiforgeError, match=r"disk full while writing .*report.json; nothing was written"):
        write_atomic(tiny_disk / "report.json", "x" * 1_000_000)
    assert sorted(os.listdir(tiny_disk)) == ["last.pt"]  # no temp file left behind


# ------------------------------------------------------------------------------------------------ item 16


def test_predict_streams_in_batches(checkpoint: dict, tmp_path: Path, monkeypatch) -> None:
    """Item 16: predict put every image in one batch (400 photos, 3.3 GB)."""
    import mobiforge.inference as inference

    monkeypatch.setattr(inference, "PREDICT_BATCH", 2)
    path = save_checkpoint(checkpoint, tmp_path / "model.pt")
    images = []
    for index in range(5):
        images.append(str(tmp_path / f"{index}.png"))
        Image.new("RGB", (40, 40), (index * 50, 0, 0)).save(images[-1])
    sizes: list[int] = []
    stack = torch.stack

    def counted(tensors, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(tensors))
        return stack(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "stack", counted)
    results = inference.predict(path, images, top_k=2)
    assert [item["image"] for item in results] == images and sizes == [2, 2, 1]


def test_an_image_too_large_to_decode_is_refused_from_its_header(tmp_path: Path) -> None:
    """Item 16: four 13,000-pixel-square PNGs needed 7.2 GB during the image check."""
    from mobiforge.data import MAX_DECODED_PIXELS, load_rgb

    path = tmp_path / "huge.png"
    Image.new("1", (9000, 8000)).save(path)  # 72 Mpx, a few kB on disk
    assert MAX_DECODED_PIXELS < 9000 * 8000
    with pytest.raises(ValueError, match="9000x8000 pixels is over the 64 megapixels"):
        load_rgb(str(path))


def test_the_bad_file_scans_refuse_an_image_too_large_to_decode(tmp_path: Path) -> None:
    """Issue 44 item 4: the decode scan (eval, train --cache none, --trainable-blocks) decoded an 81 MP image in
    full and the loader then crashed on it with a ValueError traceback; now both scans name it."""
    from mobiforge.data import find_bad_images, find_unreadable

    path = tmp_path / "huge.png"
    Image.new("1", (9000, 9000)).save(path)
    for scan in (find_bad_images, find_unreadable):
        assert "9000x9000 pixels is over the 64 megapixels" in scan([str(path)])[str(path)]
    photo = tmp_path / "phone.jpg"  # a 108 MP phone photo decodes at a reduced scale: it stays usable
    Image.new("RGB", (12000, 9000), (90, 120, 30)).save(photo, quality=50)
    assert find_bad_images([str(photo)]) == {} and find_unreadable([str(photo)]) == {}


def test_a_rejected_models_list_leaves_nothing_that_blocks_the_corrected_rerun(data: Path, tmp_path: Path) -> None:
    """Item 11: a failed `ship --models <bad>` left a state file that refused the corrected command."""
    from mobiforge.config import ShipConfig
    from mobiforge.ship import ship

    with pytest.raises(MobiforgeError, match="--models nosuch: none of the searched families"):
        ship(ShipConfig(data=str(data), out=str(tmp_path / "ship"), models=["nosuch"]))
    assert not (tmp_path / "ship").exists()


def test_resuming_with_fewer_epochs_than_done_changes_nothing(data: Path, tmp_path: Path) -> None:
    """Item 11: `--resume --epochs 1` on a finished run rewrote its config.yaml."""
    from mobiforge.train import TrainConfig, train
    from tests.helpers import small_train_config

    result = train(small_train_config(data, tmp_path, epochs=2))
    config_yaml = (result.run_dir / "config.yaml").read_text()
    with pytest.raises(MobiforgeError, match=r"--epochs 1: .* has already trained 2 epochs"):
        train(TrainConfig(resume=str(result.run_dir / "last.pt"), epochs=1))
    assert (result.run_dir / "config.yaml").read_text() == config_yaml


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_resuming_with_more_epochs_stretches_the_schedule_to_the_new_end(tmp_path: Path, scheduler: str) -> None:
    """A one-cycle run resumed with a higher --epochs failed deep in torch (its schedule had ended); a cosine one
    climbed back up from its floor. The schedule now ends at the new epoch count."""
    from mobiforge.engine import OptimConfig
    from mobiforge.train import TrainConfig, train
    from tests.helpers import make_split_folder, small_train_config

    data = make_split_folder(tmp_path / "data", classes=3, train=16, val=3)  # 6 steps an epoch
    config = small_train_config(data, tmp_path, epochs=2, optim=OptimConfig(lr=0.05, scheduler=scheduler))
    result = train(config)
    resumed = train(TrainConfig(resume=str(result.run_dir / "last.pt"), epochs=4))
    rates = [row["lr"] for row in resumed.history]
    assert len(rates) == 4 and rates[2] > rates[3]  # still decaying towards the new end
    assert rates[3] < 0.05 * 0.1


# ------------------------------------------------------------------------------------------------ item 3


def test_precise_bn_re_estimates_statistics_before_each_evaluation(data: Path, tmp_path: Path, monkeypatch) -> None:
    """Item 3: after a short run from scratch BatchNorm's running averages lag the weights and eval sits at chance;
    precise BN re-estimates them on training images before each evaluation that decides best.pt."""
    from mobiforge import engine
    from mobiforge.train import train
    from tests.helpers import small_train_config

    calls: list[int] = []
    recalibrate = engine.recalibrate_bn

    def counted(model, batches, kept=None):  # type: ignore[no-untyped-def]
        batches = list(batches)
        calls.append(sum(batch.shape[0] for batch in batches))
        return recalibrate(model, batches, kept)

    monkeypatch.setattr(engine, "recalibrate_bn", counted)
    result = train(small_train_config(data, tmp_path, epochs=2, precise_bn=5))
    assert calls == [5, 5]
    norm = next(m for m in Checkpoint.load(result.run_dir / "best.pt").model().modules() if hasattr(m, "running_var"))
    assert norm.momentum == 0.1  # the cumulative average is undone after the estimate
    calls.clear()
    train(small_train_config(data, tmp_path, name="frozen", epochs=1, precise_bn=5, freeze_bn=True))
    assert calls == []  # fixed statistics stay fixed


# ------------------------------------------------------------------------------------------------ item 4


def test_a_budget_nothing_can_meet_stops_the_search_in_time(data: Path, tmp_path: Path, monkeypatch) -> None:
    """Item 4: `--max-latency 0.001ms --time-budget 2m` ran 327 s: the search measured every candidate because none
    fitted. Its share of the budget now holds whether or not one fits."""
    import mobiforge.ship.search as search
    from mobiforge.config import ShipConfig
    from mobiforge.ship import ship
    from mobiforge.ship.state import SEARCH

    monkeypatch.setattr(search, "SEARCH_MIN_SECONDS", 0.0)  # the search's share is spent once the first is measured
    monkeypatch.setattr(search, "SEARCH_SHARE", 0.0)

    def measured(model, candidate, config, workdir, until=None):  # type: ignore[no-untyped-def]
        candidate.artifact_bytes, candidate.latency_ms = 500_000, 1.0  # a real export takes 20 s here

    monkeypatch.setattr(search, "measure_candidate", measured)
    config = ShipConfig(
        data=str(data), out=str(tmp_path / "run"), runtime="onnx", max_latency_ms=1e-6, teacher="none",
        time_budget_s=60, workers=0,
    )  # fmt: skip
    result = ship(config)
    assert result.chosen is None and result.state is not None
    statuses = [c.status for c in result.state.done(SEARCH).candidates]
    assert statuses.count("too slow") == 1  # one measured; then the search's share was spent, so no other was
    skipped = ("not measured (search time)", "too slow (a smaller model already was)", "too large (estimate)")
    assert all(status in skipped for status in statuses if status != "too slow")


def test_predict_on_a_missing_artifact_names_it_as_missing(tmp_path: Path, capsys) -> None:
    code, _, err = _cli(["predict", str(tmp_path / "gone.pte"), str(tmp_path / "x.png")], capsys)
    assert code == 2 and err.endswith("gone.pte does not exist")


def test_an_unusable_folder_exits_2_like_every_other_input_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Issue 44 item 17: read-only and disk-full folders exited 1, the status of a failed check, other user errors 2."""
    import errno

    from mobiforge.cli import build_parser

    def read_only(args) -> int:  # type: ignore[no-untyped-def]  # (as root, chmod cannot make a folder read-only)
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/runs")

    parser = build_parser()
    args = parser.parse_args(["profile", "mobilenet_v1"])
    args.handler = read_only
    monkeypatch.setattr("mobiforge.cli.build_parser", lambda: _Fixed(parser, args))
    code, _, err = _cli(["profile", "mobilenet_v1"], capsys)
    assert code == 2 and "/mnt/ro/runs: Read-only file system" in err


class _Fixed:
    """A parser that hands back the given (patched) arguments."""

    def __init__(self, parser, args) -> None:  # type: ignore[no-untyped-def]
        self.parser, self.args = parser, args

    def parse_args(self, argv):  # type: ignore[no-untyped-def]
        return self.args


# ------------------------------------------------------------------------------------------ issue 44, item 1


def test_a_crafted_pte_that_aborts_executorch_is_one_line_not_a_dead_process(tmp_path: Path, capsys) -> None:
    """`ET` at byte 4, then non-UTF-8 bytes: the header check passed and ExecuTorch aborted the process (rc 134,
    nothing printed). The file is now opened in a child first."""
    pytest.importorskip("executorch")
    path = tmp_path / "b.pte"
    path.write_bytes(b"\0\0\0\0ET\xff\xfe" + bytes(200))
    code, _, err = _cli(["profile", str(path)], capsys)
    assert code == 2 and "\n" not in err and f"{path}: " in err and "crashed reading it (SIGABRT)" in err


def test_a_file_seen_to_load_skips_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from mobiforge import untrusted

    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07" + bytes(64))
    children: list[list[str]] = []

    class Child:  # a child that loads the file without trouble
        returncode = 0

        def __init__(self, argv: list[str], **kwargs) -> None:  # type: ignore[no-untyped-def]
            children.append(argv)

        def wait(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    untrusted.vet(path)
    untrusted.vet(path)  # the same bytes: remembered
    path.write_bytes(b"\x08\x07" + bytes(65))
    untrusted.vet(path)  # other bytes: a child again
    assert len(children) == 2 and children[0][1:3] == ["-m", "mobiforge.untrusted"]
