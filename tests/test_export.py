"""Export to ExecuTorch, LiteRT and ONNX, fp32 and int8, each artifact verified in its own runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_split_folder, small_train_config

from mobiforge.checkpoint import load_checkpoint, model_from_checkpoint
from mobiforge.cli import main
from mobiforge.errors import MobiforgeError
from mobiforge.export import ArtifactReport, ExportConfig, export_checkpoint, load_export_data
from mobiforge.train import train

pytest.importorskip("executorch")
pytest.importorskip("litert_torch")
pytest.importorskip("onnxruntime")

SUFFIX = {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    data = make_split_folder(root / "data", classes=3, train=24, val=8)
    config = small_train_config(
        data, root / "runs", img_size=24, batch_size=16, model="mobilenet_v2", width_mult=0.35, epochs=2
    )
    return train(config).run_dir / "last.pt"


def _export(checkpoint: Path, out: Path, fmt: str, int8: str | None = None, **kw) -> ArtifactReport:
    config = ExportConfig(
        str(checkpoint), fmt, int8, out=str(out), val_images=12, calibration_images=16, workers=0,
        latency_seconds=0.05, **kw
    )  # fmt: skip
    return export_checkpoint(config)


@pytest.mark.parametrize("fmt", ["executorch", "tflite", "onnx"])
def test_fp32_and_int8_artifacts_match_pytorch(checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    fp32 = _export(checkpoint, tmp_path / f"m{SUFFIX[fmt]}", fmt)
    assert fp32.precision == "fp32" and fp32.images == 12
    assert fp32.agreement == 100.0 and fp32.max_abs_logit_diff < 1e-3
    assert set(fp32.latency_ms) == {"1", "2"} and fp32.latency_ms["1"]["median"] > 0
    saved = json.loads(Path(f"{fp32.path}.json").read_text())
    assert saved["passed"] and saved["top1"] == fp32.top1 and saved["file_bytes"] == Path(fp32.path).stat().st_size

    int8 = _export(checkpoint, tmp_path / f"q{SUFFIX[fmt]}", fmt, "ptq")
    assert int8.precision == "int8-ptq"
    assert int8.file_bytes < 0.5 * fp32.file_bytes  # really int8 weights, not a float file
    assert int8.agreement >= 75.0
    if fmt != "onnx":  # the runtime's integer kernels against PT2E's simulated-int8 reference model
        assert int8.reference_max_abs_diff is not None
        assert int8.reference_max_abs_diff < 0.25 * max(1.0, int8.max_abs_logit_diff + 1.0)


@pytest.mark.slow
def test_qat_export_runs_in_executorch(checkpoint: Path, tmp_path: Path) -> None:
    report = _export(checkpoint, tmp_path / "qat.pte", "executorch", "qat", qat_images=32)
    assert report.precision == "int8-qat" and report.reference_max_abs_diff is not None
    # QAT trains a copy: the fp32 model that the report compares with is the checkpoint's, untouched.
    model = model_from_checkpoint(checkpoint)
    data = load_export_data(load_checkpoint(checkpoint), ExportConfig(str(checkpoint), val_images=12, workers=0))
    with torch.no_grad():
        expected = 100.0 * (model(data.val_images).argmax(1) == data.val_labels).float().mean().item()
    assert report.torch_fp32_top1 == pytest.approx(expected)
    # Same network, same int8 tensors: the QAT file is no larger than the PTQ one (it was 8-10% larger when the
    # BatchNorm tensors folded by convert_pt2e stayed on the module and ExecuTorch serialised them).
    ptq = _export(checkpoint, tmp_path / "ptq.pte", "executorch", "ptq")
    assert report.file_bytes <= ptq.file_bytes * 1.005


def test_converted_graphs_keep_only_the_tensors_they_use() -> None:
    from mobiforge import engine, quantize
    from mobiforge.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=3, width_mult=0.35, small_input=True)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    optim = engine.OptimConfig(lr=1e-3)
    ptq = quantize.ptq_pt2e(model, quantize.xnnpack_quantizer(), [images])
    qat = quantize.qat_pt2e(model, quantize.xnnpack_quantizer(qat=True), [(images, labels)], images, 1, optim, 1)
    for graph in (ptq, qat):
        used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
        stored = {name for name, _ in [*graph.named_parameters(), *graph.named_buffers()]}
        assert stored and stored <= used
        assert all(tensor.dtype != torch.float32 or tensor.dim() <= 1 for tensor in graph.buffers())


def test_export_errors(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(MobiforgeError, match="not available for onnx"):
        _export(checkpoint, tmp_path / "m.onnx", "onnx", "qat")
    with pytest.raises(MobiforgeError, match=r"needs the suffix \.pte"):
        _export(checkpoint, tmp_path / "m.onnx", "executorch")
    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    with pytest.raises(MobiforgeError, match=r"mobiforge\[export\]"):
        _export(checkpoint, tmp_path / "m.pte", "executorch")
    assert main(["export", str(checkpoint), "--format", "onnx", "--int8", "qat", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "not available for onnx" in capsys.readouterr().err


def test_the_gate_fails_an_int8_artifact_that_drops_too_much(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    report = ArtifactReport(
        path="m.pte", format="executorch", precision="int8-ptq", file_bytes=1, images=10, top1=80.0,
        torch_fp32_top1=90.0, agreement=85.0, max_abs_logit_diff=1.0, reference_max_abs_diff=0.1,
        latency_ms={"1": {"median": 1.0, "p90": 1.0}}, torch_latency_ms={"1": {"median": 2.0, "p90": 2.0}},
        max_drop=1.0,
    )  # fmt: skip
    assert report.drop == pytest.approx(10.0) and not report.passed
    assert ArtifactReport(**{**report.__dict__, "max_drop": None}).passed
    assert ArtifactReport(**{**report.__dict__, "top1": 89.5}).passed
    import mobiforge.export

    monkeypatch.setattr(mobiforge.export, "export_checkpoint", lambda config: report)
    assert main(["quantize", "ckpt.pt", "--max-drop", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_export_json(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.onnx"
    args = ["export", str(checkpoint), "-f", "onnx", "-o", str(out), "--val-images", "6", "-j", "0", "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == "onnx" and printed["images"] == 6 and out.is_file()
    assert torch.load(checkpoint, weights_only=True)["spec"]["name"] == "mobilenet_v2"
