"""Training the tail of a frozen network on cached trunk outputs (`train --trainable-blocks N`): the run is a normal
run of the whole network, the cache resumes after a kill, and a cache of other weights or settings is never read."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

import mobiforge.transfer as transfer
from mobiforge import create_model
from mobiforge.callbacks import Event, RunView
from mobiforge.checkpoint import Checkpoint, load_checkpoint, model_checkpoint, save_checkpoint
from mobiforge.config import DistillConfig
from mobiforge.data import DataConfig, ImageSamples, discover, eval_transform
from mobiforge.errors import MobiforgeError
from mobiforge.inference import evaluate_checkpoint
from mobiforge.progress import SilentReporter
from mobiforge.train import train
from mobiforge.trunk import trunk_dtype
from tests.helpers import MessageLog, make_split_folder, small_train_config


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_split_folder(tmp_path / "data", classes=3, train=16, val=6)


@pytest.fixture
def start(tmp_path: Path) -> Path:
    """A starting checkpoint (random weights, the data's classes), so the trunk's weights are known."""
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    return save_checkpoint(model_checkpoint(model, classes=["class0", "class1", "class2"]), tmp_path / "start.pt")


def _config(data: Path, runs: Path, start: Path, blocks: int, **overrides):  # type: ignore[no-untyped-def]
    config = small_train_config(data, runs, model="mobilenet_seed", init_from=str(start), epochs=3)
    config.trainable_blocks, config.views = blocks, 2
    config.optim.lr = 0.01
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_the_tail_trains_on_cached_outputs_and_the_run_holds_the_whole_network(
    data: Path, start: Path, tmp_path: Path
) -> None:
    result = train(_config(data, tmp_path / "runs", start, blocks=2))
    run = result.run_dir
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png"):
        assert (run / name).exists(), name
    assert len(result.history) == 3 and 0 <= result.best_top1 <= 100
    before, after = load_checkpoint(start)["state_dict"], load_checkpoint(run / "last.pt")["state_dict"]
    cut = len(create_model("mobilenet_seed", width_mult=0.25).features) - 2
    trunk = [key for key in before if key.startswith("features.") and int(key.split(".")[1]) < cut]
    tail = [key for key in before if key not in trunk and key.endswith("weight")]
    assert trunk and all(torch.equal(before[key], after[key]) for key in trunk)  # frozen
    assert any(not torch.equal(before[key], after[key]) for key in tail)  # trained
    # the cached fp16 outputs and the whole fp32 network agree on the val images (to one image of six)
    evaluated = evaluate_checkpoint(run / "best.pt", workers=0)
    assert abs(evaluated.result.top1 - result.best_top1) <= 100 / 6 + 1e-6


def test_the_linear_probe_trains_the_classifier_alone(data: Path, start: Path, tmp_path: Path) -> None:
    result = train(_config(data, tmp_path / "runs", start, blocks=0))
    before, after = load_checkpoint(start)["state_dict"], load_checkpoint(result.run_dir / "last.pt")["state_dict"]
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith("classifier.") for key in changed)


def test_a_killed_cache_resumes_from_its_finished_chunks(
    data: Path, start: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "CHUNK_IMAGES", 8)  # 48 train images x 2 views: 12 chunks, then 3 for val
    compute, calls = transfer._assemble_chunk, []

    def killed_after_five(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(transfer, "_assemble_chunk", killed_after_five)
    config = _config(data, tmp_path / "runs", start, blocks=1)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert len(list((tmp_path / "runs" / "run" / "cache").glob("*.pt"))) == 5

    calls.clear()
    monkeypatch.setattr(transfer, "_assemble_chunk", lambda *a, **kw: calls.append(1) or compute(*a, **kw))
    result = train(config)  # the same command again
    assert len(calls) == 12 - 5 + 3 and len(result.history) == 3


def test_a_cache_of_other_weights_or_settings_is_never_read(data: Path, tmp_path: Path) -> None:
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True).eval()
    samples = [(str(path), 0) for path in sorted((data / "train" / "class0").iterdir())]
    folder, reporter = tmp_path / "cache", SilentReporter()

    def activations(model, **settings):  # type: ignore[no-untyped-def]
        config = DataConfig(data=str(data), img_size=settings.get("img_size", 16))
        preprocess = model.preprocess.__class__(img_size=config.img_size, crop_pct=1.0)
        plan = transfer.plan_cache(model, 3, preprocess, config, 2, 0, samples, folder, 0)
        return plan.key, transfer.cached_activations(model, 3, samples, plan, folder, "train", 0, reporter)[0]

    key, first = activations(model)
    assert torch.equal(activations(model)[1], first)  # read back
    assert activations(model, img_size=24)[0] != key  # another resolution: another cache
    changed = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True).eval()
    assert activations(changed)[0] != key  # other weights: another cache

    chunk = next(folder.glob(f"*-{key[:24]}-v0-*.pt"))
    stored = torch.load(chunk, weights_only=True)
    torch.save({**stored, "key": "someone else's"}, chunk)
    with pytest.warns(UserWarning, match="cached for other weights, data or settings"):
        assert torch.equal(activations(model)[1], first)


def test_repainted_pixels_and_overwritten_chunks_are_never_served(data: Path, tmp_path: Path) -> None:
    """Issue 44 item 9: a photo repainted with its size and mtime kept reused its stale features (the key was the
    path, size and mtime); 128 overwritten bytes of a chunk loaded without a warning."""
    import os

    from PIL import Image

    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True).eval()
    samples = [(str(path), 0) for path in sorted((data / "train" / "class0").iterdir())]
    folder, reporter = tmp_path / "cache", SilentReporter()
    config = DataConfig(data=str(data), img_size=16)
    preprocess = model.preprocess.__class__(img_size=16, crop_pct=1.0)

    def activations():  # type: ignore[no-untyped-def]
        plan = transfer.plan_cache(model, 3, preprocess, config, 1, 0, samples, folder, 0)
        return plan.key, transfer.cached_activations(model, 3, samples, plan, folder, "train", 0, reporter)[0]

    key, first = activations()
    photo = Path(samples[0][0])
    stat = photo.stat()
    before = photo.read_bytes()
    Image.open(photo).transpose(Image.Transpose.ROTATE_180).save(photo)  # other pixels
    photo.write_bytes(photo.read_bytes()[: len(before)].ljust(len(before), b"\0"))  # the same size
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime
    assert photo.stat().st_size == stat.st_size and photo.stat().st_mtime_ns == stat.st_mtime_ns
    assert activations()[0] != key  # a new key: the features are computed again
    photo.write_bytes(before)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert activations()[0] == key  # the same bytes again: the first cache serves

    chunk = next(folder.glob(f"*-{key[:24]}-v0-*.pt"))
    stored = torch.load(chunk, weights_only=True)
    stored["features"][0, :64] = 7.0  # 128 bytes of fp16, overwritten
    torch.save(stored, chunk)
    with pytest.warns(UserWarning, match="damaged cache chunk"):  # computed again (in a batch of its own: rounding)
        assert torch.allclose(activations()[1].float(), first.float(), rtol=1e-2, atol=1e-2)


def test_photos_added_or_moved_reuse_the_rows_already_cached(data: Path, tmp_path: Path) -> None:
    """Issue 44 item 9: the cache was keyed on the whole file list, so one photo added to the folder computed every
    trunk pass again. Rows are named by their file's bytes: only the new photo's views are computed, and the rows
    of the others (their augmented views included) are the ones computed before."""
    from PIL import Image

    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True).eval()
    samples = [(str(path), 0) for path in sorted((data / "train" / "class0").iterdir())]
    folder, log = tmp_path / "cache", MessageLog()
    config = DataConfig(data=str(data), img_size=16)
    preprocess = model.preprocess.__class__(img_size=16, crop_pct=1.0)

    def activations(listed):  # type: ignore[no-untyped-def]
        plan = transfer.plan_cache(model, 3, preprocess, config, 2, 0, listed, folder, 0)
        return transfer.cached_activations(model, 3, listed, plan, folder, "train", 0, log)

    first, _ = activations(samples)
    added = tmp_path / "added.png"
    Image.open(samples[0][0]).transpose(Image.Transpose.ROTATE_90).save(added)
    grown = [(str(added), 0), *samples]  # the new photo first: every other one moves one place down
    features, labels = activations(grown)
    assert "2 trunk passes computed" in log.lines[-1]  # one new photo, two views
    count = len(samples)
    assert torch.equal(features[1 : count + 1], first[:count])  # view 0, the rows computed before
    assert torch.equal(features[count + 2 :], first[count:])  # view 1 (augmented): the same crops as before

    moved = [(path, 1 if index == 3 else label) for index, (path, label) in enumerate(grown)]
    features, labels = activations(moved)  # a photo moved to another class: no pass, its new label
    assert "0 trunk passes computed" in log.lines[-1] and labels[3] == 1


def test_bad_tail_settings_are_one_line_errors(data: Path, start: Path, tmp_path: Path) -> None:
    with pytest.raises(MobiforgeError, match="--trainable-blocks must be between 0 and"):
        train(_config(data, tmp_path / "runs", start, blocks=99))
    with pytest.raises(MobiforgeError, match="--resume"):
        train(_config(data, tmp_path / "runs", start, blocks=1, resume=str(start)))
    shufflenet = small_train_config(data, tmp_path / "runs", model="shufflenet_v2_x0_5", width_mult=None, name="s")
    shufflenet.trainable_blocks = 2
    with pytest.raises(MobiforgeError, match="no block sequence to cut; use --trainable-blocks 0"):
        train(shufflenet)


def test_a_cache_that_does_not_fit_on_disk_keeps_fewer_views_or_says_what_it_needs(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True).eval()
    samples = [(str(path), 0) for path in sorted((data / "train" / "class0").iterdir())]
    config = DataConfig(data=str(data), img_size=16)
    shape = transfer.plan_cache(model, 3, model.preprocess, config, 1, 0, samples, tmp_path, 0).item_shape
    one_view = transfer.CachePlan("", [None], shape, len(samples)).bytes  # type: ignore[list-item]
    monkeypatch.setattr(transfer, "disk_room", lambda folder: 2 * one_view)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = transfer.plan_cache(model, 3, model.preprocess, config, 4, 0, samples, tmp_path, 0)
    assert len(plan.transforms) == 2 and "holds 2 of the 4 views asked for (disk)" in str(caught[0].message)
    assert not plan.mapped  # two views fit in memory
    monkeypatch.setattr(transfer, "disk_room", lambda folder: one_view // 2)
    with pytest.raises(MobiforgeError, match=r"the feature cache needs .* for one view of 16 images .* --cache-dir"):
        transfer.plan_cache(model, 3, model.preprocess, config, 4, 0, samples, tmp_path, 0)


def test_a_run_whose_cache_kept_fewer_views_records_the_views_it_trained_on(
    data: Path, start: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ship's report says what each rung trained on: the views the disk held, beside the views asked for."""
    planned = transfer.plan_cache

    def disk_for_two(*args, **kwargs):  # type: ignore[no-untyped-def]
        plan = planned(*args, **kwargs)
        return dataclasses.replace(plan, transforms=plan.transforms[:2])

    monkeypatch.setattr(transfer, "plan_cache", disk_for_two)
    result = train(_config(data, tmp_path / "runs", start, blocks=1, views=4, epochs=1))
    cached = Checkpoint.load(result.run_dir / "last.pt").extra["transfer"]
    assert cached["views"] == 2 and cached["views_asked"] == 4
    assert cached["images"] == len(discover(DataConfig(data=str(data))).train)  # what ship's report shows


def test_a_cache_larger_than_memory_is_memory_mapped_and_trains_as_if_it_were_in_memory(
    data: Path, start: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "CHUNK_IMAGES", 8)  # rows of a batch come from several chunks
    given = _spy_tail_data(monkeypatch)
    in_memory = train(_config(data, tmp_path / "runs", start, blocks=1, name="in-memory", views=3))

    loads: list[tuple[str, bool]] = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, **kw: loads.append((str(f), kw.get("mmap", False))) or load(f, **kw))
    monkeypatch.setattr(transfer, "memory_budget", lambda: 1024)  # no view fits: all of it stays on disk
    reporter = MessageLog()
    mapped = train(_config(data, tmp_path / "runs", start, blocks=1, name="mapped", views=3), reporter)

    assert isinstance(given[1].train[0], transfer.ChunkedRows) and isinstance(given[1].val[0], transfer.ChunkedRows)
    chunks = [mmap for path, mmap in loads if Path(path).parent.name == "cache"]
    assert chunks and all(chunks)  # every chunk, computed or read back, is memory-mapped
    train_line = next(line for line in reporter.lines if line.startswith("train cache"))
    assert "memory-mapped from" in train_line, train_line
    assert torch.equal(given[1].train[0][list(range(len(given[0].train[0])))], given[0].train[0])
    # the same rows in the same batches: the same training, epoch by epoch
    assert [row["train_loss"] for row in mapped.history] == [row["train_loss"] for row in in_memory.history]
    assert [row["val_top1"] for row in mapped.history] == [row["val_top1"] for row in in_memory.history]


def test_chunked_rows_gather_any_rows_in_the_order_asked() -> None:
    chunks = [torch.arange(0, 5), torch.arange(5, 8), torch.arange(8, 20)]
    rows = transfer.ChunkedRows([chunk.reshape(-1, 1).repeat(1, 2) for chunk in chunks])
    assert len(rows) == 20 and rows.shape == (20, 2)
    asked = [19, 0, 7, 5, 4, 8, 12, 0]
    assert torch.equal(rows[asked][:, 0], torch.tensor(asked))
    assert torch.equal(torch.cat(rows.parts(4))[:, 1], torch.arange(20))


@pytest.mark.parametrize("mapped", [False, True], ids=["in-memory", "memory-mapped"])
def test_a_student_distils_from_cached_teacher_logits_reading_the_teachers_trunk_passes_back(
    data: Path, start: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    if mapped:
        monkeypatch.setattr(transfer, "memory_budget", lambda: 1024)
    shared = str(tmp_path / "shared-cache")
    probe = train(_config(data, tmp_path / "runs", start, blocks=0, name="probe", cache_dir=shared))
    teacher = str(probe.run_dir / "best.pt")

    seen: list[torch.Tensor] = []
    kd = transfer.kd_loss
    monkeypatch.setattr(transfer, "kd_loss", lambda s, t, temp: seen.append(t) or kd(s, t, temp))
    given = _spy_tail_data(monkeypatch)
    reporter = MessageLog()
    # one view, the plain crop: the probe cached it, and its logits can be checked image by image
    config = _config(data, tmp_path / "runs", start, blocks=2, name="student", cache_dir=shared, views=1)
    config.distill = DistillConfig(teacher=teacher, alpha=0.7, temperature=2.0)
    result = train(config, reporter)
    assert len(result.history) == 3
    # the teacher's pooled features come back from the probe's cache: no teacher pass is computed again
    teacher_line = next(line for line in reporter.lines if line.startswith("teacher cache"))
    assert teacher_line.startswith("teacher cache: 0 trunk passes computed"), teacher_line
    assert ("memory-mapped from" in teacher_line) == mapped, teacher_line  # its logits come from the mapped chunks

    # the cached logits are the probe's own predictions, image by image in the student's order, and the loss used them
    probe = Checkpoint.load(teacher).model()
    samples = discover(DataConfig(data=str(data), img_size=16)).train
    images = torch.stack([image for image, _ in ImageSamples(samples, eval_transform(probe.preprocess))])
    dtype = trunk_dtype("auto")
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        pooled = transfer.trunk_output(probe, None, images)
    with torch.inference_mode():
        expected = probe.get_classifier()(pooled.half().float())
    _, labels, logits = given[0].train
    assert torch.equal(labels, torch.tensor([label for _, label in samples]))
    assert logits.shape == expected.shape and torch.allclose(logits, expected, atol=1e-3)
    assert seen and all(any(torch.equal(row, known) for known in logits) for row in torch.cat(seen)[:5])


def test_more_views_reuse_the_views_already_cached(data: Path, start: Path, tmp_path: Path) -> None:
    shared = str(tmp_path / "shared-cache")
    train(_config(data, tmp_path / "runs", start, blocks=1, name="two", cache_dir=shared))
    reporter = MessageLog()
    train(_config(data, tmp_path / "runs", start, blocks=1, name="three", cache_dir=shared, views=3), reporter)
    train_line = next(line for line in reporter.lines if line.startswith("train cache"))
    assert train_line.startswith("train cache: 48 trunk passes computed"), train_line  # view 3 only, of 48 images
    assert "96 read back" in train_line


def test_a_teacher_with_other_preprocessing_is_a_one_line_error(data: Path, start: Path, tmp_path: Path) -> None:
    other = small_train_config(data, tmp_path / "runs", name="other", img_size=24, epochs=1)
    teacher = train(other).run_dir / "best.pt"
    config = _config(data, tmp_path / "runs", start, blocks=1, name="student")
    config.distill = DistillConfig(teacher=str(teacher))
    with pytest.raises(MobiforgeError, match="needs the teacher's input size and normalisation"):
        train(config)


def test_a_tail_run_re_planned_after_its_first_epoch_ends_its_schedule_at_the_new_length(
    data: Path, start: Path, tmp_path: Path
) -> None:
    import yaml

    epochs_seen: list[int] = []

    def longer(run: RunView) -> None:
        if run.epoch == 1:
            run.set_epochs(5)

    config = _config(data, tmp_path / "runs", start, blocks=1)  # 3 epochs planned, cosine
    result = train(config, callbacks={Event.EPOCH_END: [longer, lambda run: epochs_seen.append(run.epoch)]})
    assert len(result.history) == 5 and epochs_seen == [1, 2, 3, 4, 5]
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["epochs"] == 5  # a resume follows the plan
    lrs = [row["lr"] for row in result.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.1 * lrs[0]  # one cosine curve, ending at the new end


def _spy_tail_data(monkeypatch: pytest.MonkeyPatch) -> list[transfer.TailData]:
    """The cached tensors each tail run trains on, as ``prepare_tail`` made them."""
    given: list[transfer.TailData] = []
    made = transfer.tail_data

    def spy(train: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, torch.Tensor]) -> transfer.TailData:
        given.append(made(train, val))
        return given[-1]

    monkeypatch.setattr(transfer, "tail_data", spy)
    return given


def test_ranks_share_the_cache_pass_and_a_dead_ranks_chunks_are_computed_on_the_next_start(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun each rank computes every world-th chunk into the shared folder, then reads the others' back.
    Here rank 1 of 2 runs alone, as if rank 0 had died: its chunks are written, the missing ones are a one-line
    error naming rank 0, and a later start computes only those; the rows equal a single process's."""
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True).eval()
    samples = [(str(path), label) for label, name in enumerate(("class0", "class1"))
               for path in sorted((data / "train" / name).iterdir())]  # fmt: skip
    monkeypatch.setattr(transfer, "CHUNK_IMAGES", 4)  # 32 images: 8 chunks a view

    def activations(folder: Path, reporter: MessageLog | None = None) -> torch.Tensor:
        config = DataConfig(data=str(data), img_size=16)
        preprocess = model.preprocess.__class__(img_size=16, crop_pct=1.0)
        plan = transfer.plan_cache(model, 3, preprocess, config, 2, 0, samples, folder, 0)
        return transfer.cached_activations(model, 3, samples, plan, folder, "train", 0, reporter or MessageLog())[0]

    alone = activations(tmp_path / "alone")
    monkeypatch.setattr(transfer, "shard", lambda: (1, 2))
    monkeypatch.setattr(transfer.dist, "barrier", lambda: None)
    with pytest.raises(MobiforgeError, match=r"rank 0 did not write its chunk .* run the same command again"):
        activations(tmp_path / "shared")
    assert sorted(int(path.stem[-5:]) for path in (tmp_path / "shared").glob("*-v0-*.pt")) == [1, 3, 5, 7]
    monkeypatch.setattr(transfer, "shard", lambda: (0, 1))
    reporter = MessageLog()
    assert torch.equal(activations(tmp_path / "shared", reporter), alone)
    assert reporter.lines[-1].startswith("train cache: 48 trunk passes computed")  # half a view, then the second


@pytest.mark.slow
def test_torchrun_two_ranks_share_the_cache_pass_and_write_what_one_process_does(data: Path, tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None

    def command(name: str, cache: Path) -> list[str]:
        return ["-m", "mobiforge", "train", "--model", "mobilenet_seed", "--width-mult", "0.25", "--data",
                str(data), "--img-size", "16", "--trainable-blocks", "1", "--views", "2", "--epochs", "2",
                "--cache-dir", str(cache), "--runs-dir", str(tmp_path / "runs"), "--name", name, "--workers", "0",
                "--threads", "1", "--no-tensorboard", "--trunk-engine", "eager", "--amp", "none"]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *command("ranks", tmp_path / "shared")],
                           capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    alone = subprocess.run([sys.executable, *command("alone", tmp_path / "single")], capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-2000:]
    chunks = sorted(path.name for path in (tmp_path / "single").glob("*.pt"))
    assert chunks and chunks == sorted(path.name for path in (tmp_path / "shared").glob("*.pt"))
    for name in chunks:  # the same key, the same rows
        one = torch.load(tmp_path / "single" / name, weights_only=True)
        two = torch.load(tmp_path / "shared" / name, weights_only=True)
        assert torch.equal(one["features"], two["features"]) and torch.equal(one["rows"], two["rows"])
    assert (tmp_path / "runs" / "ranks" / "last.pt").exists()  # rank 0 trained the tail
