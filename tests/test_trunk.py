"""The engines of the frozen trunk's cache pass: ONNX Runtime computes what eager PyTorch does, ``auto`` chooses by
measured speed only where the pass is long, and its choice is read back so a later run finds the same cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import mobiforge.trunk as trunk_engines
from mobiforge import create_model
from mobiforge.checkpoint import model_checkpoint, save_checkpoint
from mobiforge.engine import resolve_device
from mobiforge.errors import MobiforgeError
from mobiforge.train import train
from mobiforge.transfer import TrunkModule
from mobiforge.trunk import TrunkPass, choose_trunk_pass, eager_pass, onnxruntime_pass, recorded_speed
from tests.helpers import MessageLog, make_split_folder, small_train_config

HAS_ONNXRUNTIME = all(importlib.util.find_spec(name) for name in ("onnxruntime", "onnxscript"))
needs_onnxruntime = pytest.mark.skipif(not HAS_ONNXRUNTIME, reason="onnxruntime/onnxscript not installed ([export])")


def _trunk(cut: int | None = 3) -> TrunkModule:
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True).eval()
    return TrunkModule(model, cut).eval()


@needs_onnxruntime
def test_onnxruntime_computes_what_eager_fp32_does_to_the_caches_fp16() -> None:
    trunk, images = _trunk(), torch.randn(5, 3, 16, 16)
    expected = eager_pass(trunk, None).run(images)
    exported = onnxruntime_pass(trunk, 16)
    assert exported.label == "onnxruntime fp32" and exported.dtype is None  # the cache key of eager fp32
    got = exported.run(images)
    assert got.shape == expected.shape
    assert torch.allclose(got.half().float(), expected.half().float(), rtol=2e-3, atol=2e-3)
    assert exported.run(images[:1]).shape[0] == 1  # any batch size


def test_auto_stays_eager_for_a_short_pass_and_leaves_a_longer_one_its_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports: list[int] = []
    monkeypatch.setattr(trunk_engines, "onnxruntime_pass", lambda *a: exports.append(1))
    memo = tmp_path / "engine.json"
    chosen = choose_trunk_pass(_trunk(), 16, "auto", "none", passes=50, memo=memo)
    assert chosen.label == "eager fp32" and not exports  # 50 passes take far under TRIAL_MIN_SECONDS
    assert not memo.exists()


def test_a_trunk_that_cannot_go_to_onnxruntime_is_recorded_as_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_exportable(*args: object) -> TrunkPass:
        raise MobiforgeError("this trunk does not export to ONNX")

    monkeypatch.setattr(trunk_engines, "onnxruntime_pass", not_exportable)
    monkeypatch.setattr(trunk_engines, "images_per_second", lambda p, size, batch=32: 10.0)
    memo = tmp_path / "engine.json"
    assert choose_trunk_pass(_trunk(), 16, "auto", "none", passes=10_000, memo=memo).label == "eager fp32"
    assert json.loads(memo.read_text())["engine"] == "eager fp32"  # the next run does not try the export again


def test_auto_takes_the_faster_engine_and_a_later_run_reads_its_choice_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = TrunkPass("onnxruntime", None, lambda images: torch.zeros(len(images), 4))
    monkeypatch.setattr(trunk_engines, "onnxruntime_pass", lambda *a: fake)
    speeds = {"eager": 10.0, "onnxruntime": 25.0}
    monkeypatch.setattr(trunk_engines, "images_per_second", lambda p, size, batch=32: speeds[p.engine])
    memo = tmp_path / "engine.json"
    chosen = choose_trunk_pass(_trunk(), 16, "auto", "none", passes=10_000, memo=memo)  # 1,000 s eager: worth a trial
    assert chosen is fake
    recorded = json.loads(memo.read_text())
    assert recorded["engine"] == "onnxruntime fp32"
    assert recorded["images_per_second"] == {"eager fp32": 10.0, "onnxruntime fp32": 25.0}
    assert recorded_speed(memo) == 25.0 and recorded_speed(tmp_path / "none.json") is None  # what ship plans with

    def no_trial(*args: object, **kwargs: object) -> float:
        raise AssertionError("the recorded choice is read back, not measured again")

    monkeypatch.setattr(trunk_engines, "images_per_second", no_trial)
    assert choose_trunk_pass(_trunk(), 16, "auto", "none", passes=10_000, memo=memo) is fake

    speeds["onnxruntime"] = 5.0  # slower than eager: eager stays
    monkeypatch.setattr(trunk_engines, "images_per_second", lambda p, size, batch=32: speeds[p.engine])
    other = tmp_path / "other.json"
    assert choose_trunk_pass(_trunk(), 16, "auto", "none", passes=10_000, memo=other).engine == "eager"


def test_an_unknown_engine_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MobiforgeError, match="--trunk-engine must be one of auto, eager, onnxruntime"):
        choose_trunk_pass(_trunk(), 16, "tensorrt", "none", passes=1, memo=tmp_path / "m.json")


@needs_onnxruntime
def test_a_tail_run_caches_through_onnxruntime(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "data", classes=3, train=8, val=3)
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    start = save_checkpoint(model_checkpoint(model, classes=["class0", "class1", "class2"]), tmp_path / "start.pt")
    config = small_train_config(data, tmp_path / "runs", model="mobilenet_seed", init_from=str(start), epochs=1)
    config.trainable_blocks, config.views, config.trunk_engine, config.amp = 1, 1, "onnxruntime", "none"
    config.cache_dir = str(tmp_path / "cache")
    reporter = MessageLog()
    result = train(config, reporter)
    assert len(result.history) == 1
    assert any(line.startswith("train cache: 24 trunk passes computed (onnxruntime fp32)") for line in reporter.lines)

    # eager fp32 shares the cache key: its run reads ONNX Runtime's passes back instead of computing them
    config.trunk_engine, config.name, reporter = "eager", "again", MessageLog()
    train(config, reporter)
    assert any(line.startswith("train cache: 0 trunk passes computed (eager fp32), 24 read") for line in reporter.lines)


def test_a_trunk_that_does_not_export_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAS_ONNXRUNTIME:
        pytest.skip("onnxruntime/onnxscript not installed ([export])")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("deep inside torch.export")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(MobiforgeError, match=r"does not export to or load in ONNX Runtime .*--trunk-engine eager"):
        onnxruntime_pass(_trunk(), 16).run(torch.randn(1, 3, 16, 16))


@needs_onnxruntime
def test_a_teacher_reads_its_trunk_passes_back_on_its_own_engine_whatever_the_students(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mobiforge import engine
    from mobiforge.config import DistillConfig

    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)  # eager runs in bf16, another cache key
    monkeypatch.setattr(trunk_engines, "TRIAL_MIN_SECONDS", 0.0)  # every pass gets its trial
    speeds = {"eager": 10.0, "onnxruntime": 25.0}
    monkeypatch.setattr(trunk_engines, "images_per_second", lambda p, size, batch=32: speeds[p.engine])
    data = make_split_folder(tmp_path / "data", classes=3, train=8, val=3)
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    start = save_checkpoint(model_checkpoint(model, classes=["class0", "class1", "class2"]), tmp_path / "start.pt")
    config = small_train_config(data, tmp_path / "runs", model="mobilenet_seed", init_from=str(start), epochs=1)
    config.trainable_blocks, config.views, config.cache_dir = 0, 1, str(tmp_path / "cache")
    probe = train(config)  # its trial chose ONNX Runtime (fp32)

    speeds["onnxruntime"] = 5.0  # the student's own trunk is faster in eager bf16
    config.trainable_blocks, config.name, reporter = 2, "student", MessageLog()
    config.distill = DistillConfig(teacher=str(probe.run_dir / "best.pt"), alpha=0.5, temperature=2.0)
    train(config, reporter)
    assert any(line.startswith("train cache: 24 trunk passes computed (eager bf16)") for line in reporter.lines)
    teacher_line = next(line for line in reporter.lines if line.startswith("teacher cache"))
    assert teacher_line.startswith("teacher cache: 0 trunk passes computed (onnxruntime fp32), 24 read"), teacher_line


def test_auto_takes_int8_where_its_features_hold_to_fp32s_and_fp32_where_they_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = TrunkPass("onnxruntime", None, lambda images: torch.zeros(len(images), 4))
    int8 = TrunkPass("onnxruntime", torch.qint8, lambda images: torch.zeros(len(images), 4), "int8 calibrated abc")
    monkeypatch.setattr(trunk_engines, "onnxruntime_pass", lambda *a: fp32)
    monkeypatch.setattr(trunk_engines, "onnxruntime_int8_pass", lambda *a: int8)
    speeds = {None: 25.0, torch.qint8: 60.0, torch.bfloat16: 10.0}
    monkeypatch.setattr(trunk_engines, "images_per_second", lambda p, size, batch=32: speeds[p.dtype])
    calibration = lambda: [torch.zeros(2, 3, 16, 16)] * 3  # noqa: E731
    fidelity = {"cosine": 0.995}
    monkeypatch.setattr(trunk_engines, "int8_fidelity", lambda *a: fidelity["cosine"])
    memo = tmp_path / "engine.json"
    chosen = choose_trunk_pass(_trunk(), 16, "auto", "bf16", 10_000, memo, calibration)
    assert chosen is int8 and chosen.label == "onnxruntime int8"
    recorded = json.loads(memo.read_text())
    assert recorded["engine"] == "onnxruntime int8" and recorded["int8_cosine"] == 0.995
    assert choose_trunk_pass(_trunk(), 16, "auto", "bf16", 10_000, memo, calibration) is int8  # read back

    fidelity["cosine"] = 0.9  # int8 points elsewhere: not kept, however fast
    other = tmp_path / "other.json"
    assert choose_trunk_pass(_trunk(), 16, "auto", "bf16", 10_000, other, calibration) is fp32
    assert "onnxruntime int8" not in json.loads(other.read_text())["images_per_second"]
    without = tmp_path / "without.json"  # no images to calibrate on: int8 is not tried
    assert choose_trunk_pass(_trunk(), 16, "auto", "bf16", 10_000, without) is fp32


@needs_onnxruntime
def test_an_int8_trunk_is_keyed_by_its_calibration_and_quantized_only_when_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trunk, images = _trunk(None), torch.randn(4, 3, 16, 16)
    calibration = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    exports: list[int] = []
    real_export = trunk_engines._exported
    monkeypatch.setattr(trunk_engines, "_exported", lambda *a: exports.append(1) or real_export(*a))
    int8 = trunk_engines.onnxruntime_int8_pass(trunk, 16, lambda: calibration)
    assert not exports  # a pass whose rows are all cached never quantizes
    again = trunk_engines.onnxruntime_int8_pass(trunk, 16, lambda: calibration)
    other = trunk_engines.onnxruntime_int8_pass(trunk, 16, lambda: calibration[::-1])
    assert int8.variant == again.variant != other.variant and int8.variant.startswith("int8 calibrated")
    assert int8.label == "onnxruntime int8" and int8.dtype == torch.qint8
    got, expected = int8.run(images), eager_pass(trunk, None).run(images)
    assert exports and got.shape == expected.shape
    assert trunk_engines.int8_fidelity(int8, eager_pass(trunk, None), images) > 0.9


def test_device_auto_runs_the_trunk_on_this_ranks_gpu_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the GPU pass itself is stubbed; what is tested is which device and pass ``--device`` picks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(MobiforgeError, match=r"--device cuda: no CUDA device is available here; use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)  # torchrun's rank 1 on this node
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device("cuda:0") == torch.device("cuda", 1)  # under torchrun a rank keeps to its own GPU

    gpu = TrunkPass("cuda", torch.float16, lambda images: images)
    monkeypatch.setattr(trunk_engines, "cuda_pass", lambda trunk, device: gpu)
    memo = Path("never-written.json")
    for engine in ("auto", "eager"):  # no CPU trial, no memo: the CPU engines are not a GPU's rivals
        assert choose_trunk_pass(_trunk(), 16, engine, "none", 10**6, memo, device=torch.device("cuda", 1)) is gpu
    assert gpu.label == "cuda fp16" and not memo.exists()  # fp16: its own cache key, apart from the CPU's
    on_cpu = choose_trunk_pass(_trunk(), 16, "eager", "none", 1, memo, device=torch.device("cpu"))
    assert on_cpu.label == "eager fp32"


def test_the_gpu_pass_copies_the_trunk_and_brings_float_rows_back(recwarn: pytest.WarningsRecorder) -> None:
    """The GPU pass's own steps, run on the CPU (no GPU here; its fp16 autocast is then off): the caller's trunk
    stays where it was, and the rows come back as float32 on the CPU, as eager fp32 computes them."""
    trunk, images = _trunk(), torch.randn(4, 3, 16, 16)
    gpu_like = trunk_engines.cuda_pass(trunk, torch.device("cpu"))
    got = gpu_like.run(images)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got, eager_pass(trunk, None).run(images))
    assert next(trunk.parameters()).is_contiguous()  # the caller's trunk: not converted in place
