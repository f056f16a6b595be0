"""Export to ExecuTorch, LiteRT and ONNX, fp32 and int8, each artifact verified in its own runtime."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from mobiforge.backends.executorch import xnnpack_quantizer
from mobiforge.checkpoint import Checkpoint, model_from_checkpoint
from mobiforge.cli import main
from mobiforge.errors import MobiforgeError
from mobiforge.export import ArtifactReport, ExportConfig, export_checkpoint, load_export_data
from mobiforge.train import train
from tests.helpers import make_split_folder, small_train_config

pytest.importorskip("executorch")
pytest.importorskip("litert_torch")
pytest.importorskip("onnxruntime")

SUFFIX = {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}


# The unit tier exports mobilenet_seed (174 graph nodes at 24 px, against mobilenet_v2's 469): its ExecuTorch fp32 and
# int8 exports took 54 s here against mobilenet_v2's 118 s, which keeps this file within the unit suite's budget. It has
# every kind of layer the converters treat differently (depthwise, residual add, stride-2 shortcut, conv+BN and
# conv+bias). mobilenet_v2 (ReLU6), mobilenet_v3_small (hardswish, SE), resnet20 (dense residual blocks, max pool) and
# convpool_s (max pools between dense convs) are checked the same way in the slow tier.
MODELS = {"mobilenet_seed": 0.25, "mobilenet_v2": 0.35, "mobilenet_v3_small": 0.35, "resnet20": 0.5, "convpool_s": 0.5}


def _train_small(root: Path, model: str) -> Path:
    data = make_split_folder(root / "data", classes=3, train=24, val=8)
    config = small_train_config(
        data, root / "runs", img_size=24, batch_size=16, model=model, width_mult=MODELS[model], epochs=2
    )
    return train(config).run_dir / "last.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_small(tmp_path_factory.mktemp("export"), "mobilenet_seed")


def _export(checkpoint: Path, out: Path, fmt: str, int8: str | None = None, **kw) -> ArtifactReport:
    config = ExportConfig(
        str(checkpoint), fmt, int8, out=str(out), val_images=12, calibration_images=16, workers=0,
        latency_seconds=0.05, **kw
    )  # fmt: skip
    return export_checkpoint(config)


@pytest.fixture(scope="module")
def artifacts(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ArtifactReport]:
    """One fp32 and one int8 PTQ artifact per format, shared by the tests that only read them."""
    out = tmp_path_factory.mktemp("artifacts")
    return {
        f"{fmt}-{precision}": _export(checkpoint, out / f"{precision}{SUFFIX[fmt]}", fmt, int8)
        for fmt in SUFFIX
        for precision, int8 in (("fp32", None), ("int8", "ptq"))
    }


def _check_parity(fp32: ArtifactReport, int8: ArtifactReport) -> None:
    assert fp32.precision == "fp32" and fp32.images == 12
    assert fp32.agreement == 100.0 and fp32.max_abs_logit_diff < 1e-3
    assert set(fp32.latency_ms) == {"1", "2"} and fp32.latency_ms["1"]["median"] > 0
    saved = json.loads(Path(f"{fp32.path}.json").read_text())
    assert saved["passed"] and saved["top1"] == fp32.top1 and saved["file_bytes"] == Path(fp32.path).stat().st_size

    assert int8.precision == "int8-ptq"
    assert int8.file_bytes < 0.5 * fp32.file_bytes  # really int8 weights, not a float file
    assert int8.agreement >= 75.0
    if int8.format != "onnx":  # the runtime's integer kernels against PT2E's simulated-int8 reference model
        assert int8.reference_max_abs_diff is not None and int8.reference_top1 is not None
        assert int8.reference_max_abs_diff < 0.25 * max(1.0, int8.max_abs_logit_diff + 1.0)
        assert abs(int8.reference_top1 - int8.top1) <= 100.0 / 12  # at most one of 12 images rounds the other way
    else:
        assert int8.reference_top1 is None


@pytest.mark.parametrize("fmt", ["executorch", "tflite", "onnx"])
def test_fp32_and_int8_artifacts_match_pytorch(artifacts: dict[str, ArtifactReport], fmt: str) -> None:
    _check_parity(artifacts[f"{fmt}-fp32"], artifacts[f"{fmt}-int8"])


def test_the_report_scores_the_reference_model_apart_from_the_runtime(
    artifacts: dict[str, ArtifactReport], checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import mobiforge.export as export

    class AlwaysClass0(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 3).float()

    def write(model, config, data, path):  # type: ignore[no-untyped-def]
        shutil.copy(artifacts["onnx-fp32"].path, path)  # the runtime runs the real model
        return AlwaysClass0(), ""

    monkeypatch.setattr(export, "build_artifact", write)
    config = ExportConfig(str(checkpoint), "onnx", val_images=12, workers=0, latency_seconds=0.01, threads=(1,))
    data = load_export_data(Checkpoint.load(checkpoint), config)
    assert [label for _, label in data.val_samples] == data.val_labels.tolist()  # each image's file, in order
    model = model_from_checkpoint(checkpoint).eval()
    report = export._export_and_verify(model, config, data, tmp_path / "m.onnx")
    assert report.reference_top1 == pytest.approx(100.0 * (data.val_labels == 0).float().mean().item())
    assert report.top1 == artifacts["onnx-fp32"].top1  # the runtime's own score, not the reference's
    # on a subset the logits are still compared, but no top-1 is claimed for images the reference did not see
    seen: list[int] = []

    class Counted(AlwaysClass0):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return super().forward(x)

    def write_counted(model, config, data, path):  # type: ignore[no-untyped-def]
        write(model, config, data, path)
        return Counted(), ""

    monkeypatch.setattr(export, "build_artifact", write_counted)
    subset = export._export_and_verify(
        model, dataclasses.replace(config, reference_images=5), data, tmp_path / "s.onnx"
    )
    assert sum(seen) == 5 and subset.reference_top1 is None and subset.reference_max_abs_diff is not None
    skipped = export._export_and_verify(
        model, dataclasses.replace(config, reference_images=0), data, tmp_path / "k.onnx"
    )
    assert sum(seen) == 5 and skipped.reference_max_abs_diff is None


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mobilenet_v2", "mobilenet_v3_small", "resnet20", "convpool_s"])  # the last 2: #26
@pytest.mark.parametrize("fmt", ["executorch", "tflite", "onnx"])
def test_larger_models_match_pytorch_in_every_runtime(tmp_path: Path, model: str, fmt: str) -> None:
    checkpoint = _train_small(tmp_path, model)
    fp32 = _export(checkpoint, tmp_path / f"m{SUFFIX[fmt]}", fmt)
    _check_parity(fp32, _export(checkpoint, tmp_path / f"q{SUFFIX[fmt]}", fmt, "ptq"))


@pytest.mark.parametrize("suffix", [".pte", ".tflite", ".onnx"])
def test_a_damaged_artifact_is_a_one_line_error(tmp_path: Path, suffix: str, capsys) -> None:
    damaged = tmp_path / f"model{suffix}"
    damaged.write_text("not a model")
    assert main(["profile", str(damaged)]) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("mobiforge profile: error:")]  # not the runtime's logs
    assert "Traceback" not in err and len(ours) == 1 and str(damaged) in ours[0]
    assert "its header is wrong" in ours[0]  # refused before the runtime could read it (issue 25, item 8)


@pytest.mark.parametrize("fmt", ["executorch", "tflite", "onnx"])
def test_profile_times_an_exported_file_in_its_runtime(
    artifacts: dict[str, ArtifactReport], fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    int8 = artifacts[f"{fmt}-int8"]
    capsys.readouterr()  # what the converter printed
    assert main(["profile", int8.path, "--json", "--max-size", "10MB", "--max-latency", "1s"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == fmt and report["input_shape"] == [1, 3, 24, 24] and report["threads"] == 1
    assert report["file_bytes"] == Path(int8.path).stat().st_size and report["latency"]["median_ms"] > 0
    assert [check["name"] for check in report["budgets"]] == ["file size", "median latency"] and report["passed"]
    assert main(["profile", int8.path, "--max-size", "1kB"]) == 1  # over the budget: FAIL and a non-zero exit
    assert "FAIL file size" in capsys.readouterr().out
    assert main(["profile", int8.path, "--img-size", "32"]) == 2
    assert "keeps the input shape it was exported with" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "tflite"])  # each with its own quantizer (litert-torch's for LiteRT)
def test_qat_export_runs_in_its_runtime(checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    report = _export(checkpoint, tmp_path / f"qat{SUFFIX[fmt]}", fmt, "qat", qat_images=32)
    assert report.precision == "int8-qat" and report.reference_max_abs_diff is not None
    # QAT trains a copy: the fp32 model that the report compares with is the checkpoint's, untouched.
    model = model_from_checkpoint(checkpoint)
    data = load_export_data(Checkpoint.load(checkpoint), ExportConfig(str(checkpoint), val_images=12, workers=0))
    with torch.no_grad():
        expected = 100.0 * (model(data.val_images).argmax(1) == data.val_labels).float().mean().item()
    assert report.torch_fp32_top1 == pytest.approx(expected)
    # Same network, same int8 tensors: the QAT file is no larger than the PTQ one (it was 8-10% larger when the
    # BatchNorm tensors folded by convert_pt2e stayed on the module and ExecuTorch serialised them).
    ptq = _export(checkpoint, tmp_path / f"ptq{SUFFIX[fmt]}", fmt, "ptq")
    assert report.file_bytes <= ptq.file_bytes * 1.005


@pytest.mark.parametrize("mode", ["ptq", pytest.param("qat", marks=pytest.mark.slow)])  # QAT: a minute of torchao
def test_converted_graphs_keep_only_the_tensors_they_use(mode: str) -> None:
    from mobiforge import engine, quantize
    from mobiforge.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    if mode == "ptq":
        graph = quantize.ptq_pt2e(model, xnnpack_quantizer(), [images])
    else:
        optim = engine.OptimConfig(lr=1e-3)
        quantizer = xnnpack_quantizer(qat=True)
        graph = quantize.qat_pt2e(model, quantizer, [(images, labels)], images, 1, optim, 1)
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    stored = {name for name, _ in [*graph.named_parameters(), *graph.named_buffers()]}
    assert stored and stored <= used
    assert all(tensor.dtype != torch.float32 or tensor.dim() <= 1 for tensor in graph.buffers())


def test_relu6_is_quantized_after_the_conv_it_clamps() -> None:
    """XNNPACK's own quantizer observed each conv's raw output before ReLU6: half of these channels sit near -50,
    where the clamp makes them 0, and their range took the int8 steps of the [0, 6] that survives (a pruned
    EfficientNet-Lite0 lost 27 top-1 points that way; RESULTS.md#relu6_fusion)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torch import nn
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from mobiforge import quantize
    from mobiforge.backends.litert import litert_quantizer

    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU6())  # noqa: E731
    model = nn.Sequential(block(3, 16), block(16, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    for norm in (model[0][1], model[1][1]):
        norm.bias.data[::2] = -50.0  # always clamped to 0, but only after the conv's output is quantized
    model.eval()
    calibration, images = [torch.randn(16, 3, 12, 12)], torch.randn(16, 3, 12, 12)
    with torch.no_grad():
        fp32 = model(images)

    graph = quantize.ptq_pt2e(model, xnnpack_quantizer(), calibration)
    clamps = [node for node in graph.graph.nodes if node.target in quantize.CLAMPS]
    assert len(clamps) == 2 and all(clamp.args[0].target == torch.ops.aten.conv2d.default for clamp in clamps)
    fused_error = (quantize.pt2e_simulator(model, calibration, images, xnnpack_quantizer)([]) - fp32).abs().max()
    litert_error = (quantize.pt2e_simulator(model, calibration, images, litert_quantizer)([]) - fp32).abs().max()

    plain = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (images,)).module(), plain)
    prepared(calibration[0])
    plain_error = (convert_pt2e(prepared)(images) - fp32).abs().max()
    assert fused_error < plain_error / 4
    assert litert_error < plain_error / 4  # litert-torch's quantizer gets the same fusion


@pytest.mark.parametrize("runtime", ["executorch", "litert"])
def test_layers_named_float_stay_float(runtime: str, checkpoint: Path, tmp_path: Path) -> None:
    """Both PT2E runtimes' quantizers honour the float layers, litert-torch's though it has no filter of its own."""
    from mobiforge import quantize
    from mobiforge.backends.litert import litert_quantizer

    quantizer = {"executorch": xnnpack_quantizer, "litert": litert_quantizer}[runtime]
    model = model_from_checkpoint(checkpoint).eval()
    calibration = [torch.randn(4, 3, 24, 24)]
    graph = quantize.ptq_pt2e(model, quantizer(float_modules=["classifier"]), calibration)
    linear = next(node for node in graph.graph.nodes if node.target == torch.ops.aten.linear.default)
    assert linear.args[1].op == "get_attr"  # a float weight, not the output of a dequantize node
    tensors = dict([*graph.named_parameters(), *graph.named_buffers()])
    assert tensors[linear.args[1].target].dtype == torch.float32
    convs = [node for node in graph.graph.nodes if node.target == torch.ops.aten.conv2d.default]
    assert all(conv.args[1].op == "call_function" for conv in convs)  # the rest is int8: dequantized weights
    with pytest.raises(MobiforgeError, match=r"no such module; its layer groups: features\.0"):
        _export(checkpoint, tmp_path / "m.pte", "executorch", "ptq", float_modules=("head",))
    with pytest.raises(MobiforgeError, match="applies to int8 exports"):
        _export(checkpoint, tmp_path / "m.onnx", "onnx", float_modules=("classifier",))


def test_onnx_layers_named_float_stay_float(checkpoint: Path, tmp_path: Path) -> None:
    import onnx

    report = _export(checkpoint, tmp_path / "m.onnx", "onnx", "ptq", float_modules=("classifier",))
    assert report.float_modules == ["classifier"] and "left in float: classifier" in report.notes[0]
    graph = onnx.load(report.path).graph
    produced_by = {output: node for node in graph.node for output in node.output}
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    weight = gemm.input[1]  # a float initializer, not the output of a DequantizeLinear node
    assert weight not in produced_by and any(init.name == weight for init in graph.initializer)
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert all(produced_by[conv.input[1]].op_type == "DequantizeLinear" for conv in convs)  # the rest is int8


def _three_block_model() -> torch.nn.Module:
    from torch import nn

    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
    model = nn.Sequential()
    model.features = nn.Sequential(block(3, 8), block(8, 8), block(8, 8))
    model.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.classifier = nn.Linear(8, 4)
    return model.eval()


@pytest.mark.slow  # over 15 s: the unit suite keeps under 10 minutes (make test-all runs it)
def test_the_float_search_tries_every_group_then_adds_the_best_until_the_drop_fits() -> None:
    from mobiforge import quantize

    model = _three_block_model()
    calibration = [torch.randn(8, 3, 12, 12)]
    images = torch.randn(16, 3, 12, 12)
    with torch.no_grad():
        labels = model(images).argmax(1)
    assert quantize.layer_groups(model) == ["features.0", "features.1", "features.2", "classifier"]

    # A drop that is never small enough: every group alone (most helpful first), then the best two, three.
    simulator = quantize.pt2e_simulator(model, calibration, images, xnnpack_quantizer)
    strict = quantize.search_float_modules(model, images, labels, max_drop=-1.0, max_groups=3, int8_logits=simulator)
    singles = strict.trials[:4]
    assert strict.fp32_top1 == 100.0 and sorted(len(t.float_modules) for t in singles) == [1, 1, 1, 1]
    assert [t.logit_mse for t in singles] == sorted(t.logit_mse for t in singles)
    assert singles[0].logit_mse < singles[-1].logit_mse  # the filter really changes what is quantized
    assert [t.float_modules for t in strict.trials[4:]] == [
        singles[0].float_modules + singles[1].float_modules,
        singles[0].float_modules + singles[1].float_modules + singles[2].float_modules,
    ]
    assert strict.float_modules == strict.trials[-1].float_modules


def test_the_onnx_simulator_preprocesses_once_for_all_its_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.quantization import shape_inference

    from mobiforge.backends.onnx import OnnxRuntime, onnx_simulator

    model, images = _three_block_model(), torch.randn(6, 3, 12, 12)
    fp32 = OnnxRuntime().write(model, images[:1], tmp_path / "search-fp32.onnx")
    preprocess, calls = shape_inference.quant_pre_process, []
    monkeypatch.setattr(shape_inference, "quant_pre_process", lambda *a, **kw: calls.append(a) or preprocess(*a, **kw))

    simulator = onnx_simulator(fp32, [torch.randn(4, 3, 12, 12)], images, "input", reduce_range=False)
    all_int8, float_head = simulator([]), simulator(["classifier"])
    assert len(calls) == 1  # ~20 trials of a real search used to pre-process ~20 times
    assert all_int8.shape == float_head.shape == (6, 4) and not torch.equal(all_int8, float_head)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["search-fp32.onnx"]  # no trial or staging files


@pytest.mark.parametrize(
    ("fmt", "int8"),
    [
        pytest.param("executorch", "ptq", marks=pytest.mark.slow),
        pytest.param("executorch", "qat", marks=pytest.mark.slow),
        pytest.param("onnx", "ptq", marks=pytest.mark.slow),  # ONNX Runtime quantizes and runs every trial
    ],
)
def test_an_int8_artifact_missing_the_gate_is_retried_with_float_layers(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, int8: str
) -> None:
    import mobiforge.export as export

    verify = export._export_and_verify

    def all_int8_loses_badly(model, config, data, path):  # type: ignore[no-untyped-def]
        report = verify(model, config, data, path)
        if not config.float_modules:
            report.top1 -= 50.0
        return report

    monkeypatch.setattr(export, "_export_and_verify", all_int8_loses_badly)
    out = tmp_path / f"m{SUFFIX[fmt]}"
    report = _export(checkpoint, out, fmt, int8, max_drop=0.0, float_fallback_groups=2, qat_images=32)
    assert 1 <= len(report.float_modules) <= 2 and report.path == str(out)
    assert report.precision == f"int8-{int8}"
    assert f"left in float: {', '.join(report.float_modules)}" in report.notes[0]
    assert any("all-int8 lost" in note for note in report.notes)
    saved = json.loads(Path(f"{out}.json").read_text())
    assert saved["float_modules"] == report.float_modules
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted([out.name, f"{out.name}.json", "labels.txt"])  # no trial files left


def test_a_failing_float_search_keeps_the_all_int8_artifact(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mobiforge.export as export

    verify = export._export_and_verify

    def all_int8_loses_badly(model, config, data, path):  # type: ignore[no-untyped-def]
        report = verify(model, config, data, path)
        report.top1 -= 50.0
        return report

    def broken_search(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("deep inside torch.export\nmore lines")

    monkeypatch.setattr(export, "_export_and_verify", all_int8_loses_badly)
    monkeypatch.setattr(export, "search_float_modules", broken_search)
    report = _export(checkpoint, tmp_path / "m.onnx", "onnx", "ptq", max_drop=0.0)
    assert not report.passed and report.float_modules == [] and (tmp_path / "m.onnx").is_file()
    assert any("float-layer search failed (RuntimeError: deep inside torch.export" in n for n in report.notes)


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


def _int8_report() -> ArtifactReport:
    """An int8 report that lost 10 points, against a gate of 1."""
    return ArtifactReport(
        path="m.pte", format="executorch", precision="int8-ptq", file_bytes=1, images=10, top1=80.0,
        torch_fp32_top1=90.0, agreement=85.0, max_abs_logit_diff=1.0, reference_max_abs_diff=0.1,
        latency_ms={"1": {"median": 1.0, "p90": 1.0}}, torch_latency_ms={"1": {"median": 2.0, "p90": 2.0}},
        max_drop=1.0,
    )  # fmt: skip


def test_the_gate_fails_an_int8_artifact_that_drops_too_much(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    report = _int8_report()
    assert report.drop == pytest.approx(10.0) and not report.passed
    assert ArtifactReport(**{**report.__dict__, "max_drop": None}).passed
    assert ArtifactReport(**{**report.__dict__, "top1": 89.5}).passed
    import mobiforge.export

    monkeypatch.setattr(mobiforge.export, "export_checkpoint", lambda config: report)
    assert main(["quantize", "ckpt.pt", "--max-drop", "1"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL int8 top-1 drop 10.00 points (limit 1.0; one of 10 val images is 10.00 points here" in out
    report.images = 1000  # one image is 0.1 points: the limit resolves images, nothing to warn about
    assert main(["quantize", "ckpt.pt", "--max-drop", "1"]) == 1
    assert "(limit 1.0); report" in " ".join(capsys.readouterr().out.split())


def test_cli_export_json(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.onnx"
    args = ["export", str(checkpoint), "-f", "onnx", "-o", str(out), "--val-images", "6", "-j", "0", "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == "onnx" and printed["images"] == 6 and out.is_file()
    assert torch.load(checkpoint, weights_only=True)["spec"]["name"] == "mobilenet_seed"


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_qat_with_frozen_bn_keeps_the_running_statistics(monkeypatch: pytest.MonkeyPatch, freeze_bn: bool) -> None:
    from mobiforge import engine, quantize
    from mobiforge.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    unchanged = []
    train_one_epoch = engine.train_one_epoch

    class Trained(Exception):
        """Stops qat_pt2e after its epoch: converting costs a minute of torchao's pattern tracing, untested here."""

    def spy(prepared, *args, **kwargs):  # type: ignore[no-untyped-def]
        before = {name: b.clone() for name, b in prepared.named_buffers() if name.endswith("running_mean")}
        train_one_epoch(prepared, *args, **kwargs)
        after = dict(prepared.named_buffers())
        unchanged.append(bool(before) and all(torch.equal(before[name], after[name]) for name in before))
        raise Trained

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    optim = engine.OptimConfig(lr=1e-3)
    with pytest.raises(Trained):
        quantize.qat_pt2e(
            model, xnnpack_quantizer(qat=True), [(images, labels)], images, 1, optim, 1, freeze_bn=freeze_bn
        )
    assert unchanged == [freeze_bn]


def test_cli_qat_freezes_bn_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    import mobiforge.export

    seen: list[ExportConfig] = []
    monkeypatch.setattr(mobiforge.export, "export_checkpoint", lambda config: seen.append(config) or _int8_report())
    main(["quantize", "ckpt.pt", "--method", "qat"])
    main(["quantize", "ckpt.pt", "--method", "qat", "--no-qat-freeze-bn"])
    assert [config.qat_freeze_bn for config in seen] == [True, False]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_qat_distills_from_the_fp32_model(checkpoint: Path, monkeypatch: pytest.MonkeyPatch, alpha: float) -> None:
    import torch.nn.functional as F

    import mobiforge.export as export

    config = ExportConfig(str(checkpoint), "executorch", "qat", qat_distill=alpha, calibration_images=4, workers=0)
    data = load_export_data(Checkpoint.load(checkpoint), config)
    seen = {}
    monkeypatch.setattr(export, "qat_pt2e", lambda *args, **kwargs: seen.update(kwargs))
    model = model_from_checkpoint(checkpoint).eval()
    export.qat_model(model, None, data, config, fold=True)
    if alpha == 0.0:
        assert seen["loss_fn"] is None  # qat_pt2e's own cross-entropy on the labels
        return
    images, labels = data.calibration[0], data.calibration_labels[:4]
    with torch.no_grad():
        fp32_logits = model(images)
        hard = F.cross_entropy(fp32_logits, labels, label_smoothing=0.1)
        # logits equal to the fp32 model's: the soft term is zero, what is left is the labels' share
        assert seen["loss_fn"](fp32_logits, labels, images).item() == pytest.approx(0.5 * hard.item(), rel=1e-5)
        assert seen["loss_fn"](torch.zeros_like(fp32_logits), labels, images) > 0.5 * F.cross_entropy(
            torch.zeros_like(fp32_logits), labels, label_smoothing=0.1
        )


def test_cli_qat_distill_reaches_the_config(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import mobiforge.export

    seen: list[ExportConfig] = []
    monkeypatch.setattr(mobiforge.export, "export_checkpoint", lambda config: seen.append(config) or _int8_report())
    main(["quantize", "ckpt.pt", "--method", "qat"])
    main(["quantize", "ckpt.pt", "--method", "qat", "--qat-distill", "0"])
    assert [config.qat_distill for config in seen] == [0.5, 0.0]
    with pytest.raises(MobiforgeError, match=r"--qat-distill must be in \[0, 1\], got 1.5"):
        export_checkpoint(ExportConfig("ckpt.pt", int8="qat", qat_distill=1.5))


def test_qat_folds_the_batchnorms_of_its_float_layers(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mobiforge.export as export
    from mobiforge import quantize

    model = model_from_checkpoint(checkpoint).eval()
    folded = quantize.fold_batchnorms(model, ["features.0"])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.features[0].modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.features[1].modules())  # only where asked
    images = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-4)
    seen = {}
    monkeypatch.setattr(export, "qat_pt2e", lambda graph, *args, **kwargs: seen.update(graph=graph))
    config = ExportConfig(str(checkpoint), "executorch", "qat", float_modules=("features.0",), workers=0)
    data = load_export_data(Checkpoint.load(checkpoint), dataclasses.replace(config, calibration_images=4))
    export.qat_model(model, None, data, config, fold=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in seen["graph"].features[0].modules())


@pytest.mark.slow
def test_the_float_layers_of_a_folded_qat_graph_run_in_xnnpack() -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from mobiforge import engine, quantize
    from mobiforge.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=3, width_mult=0.35).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    # Unfolded, the float stem stayed a conv on a weight computed in the graph, run outside XNNPACK.
    quantizer = xnnpack_quantizer(qat=True, float_modules=["features.0"])
    folded = quantize.fold_batchnorms(model, ["features.0"])
    graph = quantize.qat_pt2e(folded, quantizer, [(images, labels)], images, 1, engine.OptimConfig(lr=1e-3), 1)
    lowered = to_edge_transform_and_lower(torch.export.export(graph, (images[:1],)), partitioner=[XnnpackPartitioner()])
    left = [str(n.target) for n in lowered.exported_program().graph.nodes if n.op == "call_function"]
    assert not any("convolution" in target for target in left)


def test_onnx_weights_take_7_bits_where_the_cpu_would_saturate(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from mobiforge.onnx_int8 import onnx_needs_reduce_range

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert onnx_needs_reduce_range("flags\t: fpu sse avx2 fma\n")  # AVX2 without VNNI: vpmaddubsw saturates
    assert not onnx_needs_reduce_range("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert not onnx_needs_reduce_range("flags\t: fpu avx2 avx_vnni\n")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert not onnx_needs_reduce_range("flags\t: fpu avx2\n")


@pytest.mark.slow
@pytest.mark.parametrize("reduce_range", [False, True])
def test_onnx_reduce_range_writes_7_bit_weights(checkpoint: Path, tmp_path: Path, reduce_range: bool) -> None:
    import onnx
    from onnx import numpy_helper

    report = _export(checkpoint, tmp_path / "m.onnx", "onnx", "ptq", onnx_reduce_range=reduce_range)
    weights = [numpy_helper.to_array(t) for t in onnx.load(report.path).graph.initializer if t.data_type == 3]
    largest = max(int(abs(w.astype("int32")).max()) for w in weights)  # int8 initializers: the conv weights
    assert (largest <= 64) == reduce_range
    assert ("7-bit weights" in report.notes[0]) == reduce_range


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_predict_and_eval_run_an_exported_file_in_its_runtime(
    artifacts: dict[str, ArtifactReport], checkpoint: Path, fmt: str, capsys
) -> None:
    """Issue 24, items 2 and 4: labels.txt beside every artifact; `predict model.pte photo.jpg` ran torch.load on
    it and suggested the unsafe weights_only=False."""
    fp32 = Path(artifacts[f"{fmt}-fp32"].path)
    classes = json.loads(Path(f"{fp32}.json").read_text())["classes"]
    assert (fp32.parent / "labels.txt").read_text().splitlines() == classes == ["class0", "class1", "class2"]
    data = checkpoint.parent.parent.parent / "data"
    images = sorted(str(path) for path in (data / "val").rglob("*.png"))[:3]
    capsys.readouterr()
    assert main(["predict", str(fp32), *images, "--json"]) == 0
    in_runtime = json.loads(capsys.readouterr().out)
    assert main(["predict", str(checkpoint), *images, "--json"]) == 0
    in_torch = json.loads(capsys.readouterr().out)
    for ours, theirs in zip(in_runtime, in_torch, strict=True):
        assert ours["top"][0]["class"] == theirs["top"][0]["class"]
        assert abs(ours["top"][0]["probability"] - theirs["top"][0]["probability"]) < 1e-3
    int8 = artifacts[f"{fmt}-int8"]
    assert main(["eval", int8.path, "--data", str(data), "--json", "-j", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 24 and sum(map(sum, result["confusion"])) == 24
    # Issue 42: without --data, the data, split and val subset its export verified it on, to the image
    assert main(["eval", int8.path, "--json", "-j", "0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["images"] == int8.images and again["confusion"] == int8.confusion


def test_the_report_has_per_class_figures_of_the_file_in_its_runtime(artifacts: dict[str, ArtifactReport]) -> None:
    """Issue 24, item 5: the report's confusion matrix was the fp32 model's, with no per-class precision or recall."""
    int8 = artifacts["tflite-int8"]
    assert int8.classes == ["class0", "class1", "class2"] and list(int8.per_class) == int8.classes
    assert sum(map(sum, int8.confusion)) == sum(map(sum, int8.fp32_confusion)) == int8.images
    correct = sum(int8.confusion[i][i] for i in range(3))
    assert abs(100.0 * correct / int8.images - int8.top1) < 1e-6  # the runtime's own predictions
    assert all(0 <= figures["f1-score"] <= 1 for figures in int8.per_class.values())
    assert sum(figures["support"] for figures in int8.per_class.values()) == int8.images
    assert len(int8.confident_mistakes) == min(10, int8.images - correct)
    confidences = [mistake["confidence"] for mistake in int8.confident_mistakes]
    assert confidences == sorted(confidences, reverse=True)
    assert all(mistake["label"] != mistake["predicted"] for mistake in int8.confident_mistakes)


def _io(path: str) -> tuple[list[int], str, str]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return source["shape"].tolist(), source["dtype"].__name__, target["dtype"].__name__


def test_a_tflite_file_drops_into_mediapipe_tasks(
    artifacts: dict[str, ArtifactReport], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 24, item 1: the .tflite input was NCHW float32 with no metadata or labels, which MediaPipe Tasks'
    ImageClassifier and ML Kit refuse. Now: NHWC, labels and normalisation in TFLite metadata, probabilities out,
    and with --uint8-input (ship's default) uint8 RGB pixels in, classified by MediaPipe in export's gate."""
    pytest.importorskip("mediapipe")
    from mobiforge.backends.litert import read_labels

    classes = ["class0", "class1", "class2"]
    fp32 = artifacts["tflite-fp32"]
    assert _io(fp32.path) == ([1, 24, 24, 3], "float32", "float32") and read_labels(Path(fp32.path)) == classes
    # MediaPipe takes one mean and std for all channels: a float file normalised per channel is refused there, and
    # the report says so (the runtime's own figures stand)
    assert fp32.sdk and "refuses this file" in fp32.sdk and fp32.sdk_top1 is None and fp32.passed

    int8 = _export(checkpoint, tmp_path / "app.tflite", "tflite", "ptq", pixel_input=True, license="Apache-2.0",
                   model_name="shapes", model_version="2.1")  # fmt: skip
    assert _io(int8.path) == ([1, 24, 24, 3], "uint8", "float32") and read_labels(Path(int8.path)) == classes
    assert int8.sdk and int8.sdk.startswith("MediaPipe Tasks ImageClassifier")
    assert int8.sdk_app_top1 is not None  # and as an app runs it: the SDK resizing the image files themselves
    general = _general_metadata(Path(int8.path))  # issue 42, item 6: the card's facts in the file's own metadata
    assert (general["name"], general["version"], general["license"]) == ("shapes", "2.1", "Apache-2.0")
    assert general["description"].startswith("Image classifier: one of 3 classes (class0, class1, class2)")
    assert int8.sdk_clear_disagreements == 0 and int8.passed
    # top-1 in MediaPipe differs from LiteRT's by no more than the share of images they disagree on
    assert int8.sdk_agreement is not None and abs(int8.sdk_top1 - int8.top1) <= 100.0 - int8.sdk_agreement + 1e-6
    assert int8.agreement >= 75.0 and int8.reference_max_abs_diff is not None
    # predict reads the normalisation from the sidecar to give the file its pixels
    images = sorted(str(p) for p in (checkpoint.parent.parent.parent / "data" / "val").rglob("*.png"))[:2]
    capsys.readouterr()
    assert main(["predict", int8.path, *images, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(abs(sum(t["probability"] for t in row["top"]) - 1.0) < 1e-3 for row in rows)
    with pytest.raises(MobiforgeError, match="--uint8-input is not available for executorch; use --format tflite"):
        _export(checkpoint, tmp_path / "app.pte", "executorch", pixel_input=True)

    # issue 42, item 7: a .tflite copied alone runs from its own metadata (labels, normalisation, input size)
    alone = tmp_path / "alone" / "copied.tflite"
    alone.parent.mkdir()
    alone.write_bytes(Path(int8.path).read_bytes())
    assert main(["predict", str(alone), *images, "--json"]) == 0
    assert [row["top"] for row in json.loads(capsys.readouterr().out)] == [row["top"] for row in rows]


def _general_metadata(path: Path) -> dict:
    from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer

    return json.loads(MetadataDisplayer.with_model_file(str(path)).get_metadata_json())


def test_a_core_ml_package_is_written_read_back_and_said_not_run_here(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 24, item 3: Core ML for iOS. coremltools converts on Linux but cannot run the package: the report
    says so plainly and records what can be checked here (its input, its labels, its 8-bit weights, and the PyTorch
    model computing as it does)."""
    pytest.importorskip("coremltools")
    from mobiforge.backends.coreml import read_back

    half = _export(checkpoint, tmp_path / "m.mlpackage", "coreml")
    int8 = _export(checkpoint, tmp_path / "q.mlpackage", "coreml", "ptq", license="MIT", model_version="3")
    assert Path(int8.path).is_dir() and not half.ran_in_runtime and not int8.ran_in_runtime
    assert (half.precision, int8.precision) == ("fp16", "int8-ptq") and int8.latency_ms == {}
    assert int8.file_bytes < half.file_bytes  # 8-bit weights against 16-bit
    declared = read_back(Path(int8.path))
    assert declared.labels == ["class0", "class1", "class2"] and declared.image == "24x24 RGB"
    assert declared.specification == 7 and declared.int8_tensors > 0  # iOS 16; some weights really in 8 bits
    assert read_back(Path(half.path)).int8_tensors == 0
    import coremltools as ct  # issue 42, item 6: the card's facts in the package's description (Xcode shows them)

    spec = ct.utils.load_spec(int8.path)
    assert (spec.description.metadata.license, spec.description.metadata.versionString) == ("MIT", "3")
    assert spec.description.metadata.shortDescription.startswith("Image classifier: one of 3 classes")
    notes = " | ".join(int8.notes)
    assert "not run on this host" in notes and "image input 24x24 RGB" in notes and "iOS 16" in notes
    assert int8.agreement >= 75.0 and half.agreement >= 90.0 and int8.passed
    saved = json.loads(Path(f"{int8.path}.json").read_text())
    assert saved["ran_in_runtime"] is False and saved["classes"] == ["class0", "class1", "class2"]
    capsys.readouterr()
    image = next((checkpoint.parent.parent.parent / "data" / "val").rglob("*.png"))
    assert main(["predict", int8.path, str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not run on this host: Core ML runs only on Apple platforms" in err[0]
    with pytest.raises(MobiforgeError, match="--int8 qat is not available for coreml"):
        _export(checkpoint, tmp_path / "x.mlpackage", "coreml", "qat")


def test_the_sdk_gate_forgives_near_ties_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """On hymenoptera, LiteRT scored one image 0.51/0.49 that MediaPipe scored as an exact 0.50/0.50 tie: two correct
    int8 executions may round a near tie either way. Any other disagreement fails the gate."""
    import numpy as np

    import mobiforge.backends.litert as litert
    import mobiforge.export as export
    from mobiforge.config import DataConfig

    logits = torch.log(torch.tensor([[0.51, 0.49], [0.9, 0.1], [0.2, 0.8]]))
    data = export.ExportData(torch.zeros(3, 3, 4, 4), torch.tensor([0, 0, 1]), [], None, DataConfig(), [],
                             classes=["a", "b"])  # fmt: skip
    config = ExportConfig("ckpt", "tflite", pixel_input=True)
    near_tie_flips = ("SDK", np.array([1, 0, 1]))
    monkeypatch.setattr(litert.LiteRT, "sdk_top1", lambda self, path, pixels: near_tie_flips)
    tie = export.sdk_figures(Path("m.tflite"), config, data, logits)
    assert tie["sdk_clear_disagreements"] == 0 and tie["sdk_agreement"] == pytest.approx(200 / 3)
    clear_one_flips = ("SDK", np.array([0, 1, 1]))
    monkeypatch.setattr(litert.LiteRT, "sdk_top1", lambda self, path, pixels: clear_one_flips)
    assert export.sdk_figures(Path("m.tflite"), config, data, logits)["sdk_clear_disagreements"] == 1


def test_predict_takes_folders_and_answers_a_non_image_in_one_sentence(
    artifacts: dict[str, ArtifactReport], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 42, item 7: `predict model.onnx photos/` refused a folder; a non-image got Python's repr of a stream."""
    onnx = artifacts["onnx-fp32"].path
    val = checkpoint.parent.parent.parent / "data" / "val"
    capsys.readouterr()
    assert main(["predict", onnx, str(val), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(row["image"] for row in rows) == sorted(str(path) for path in val.rglob("*.png"))
    note = tmp_path / "notes.jpg"
    note.write_text("not a photo")
    assert main(["predict", onnx, str(note)]) == 2
    error = capsys.readouterr().err
    assert f"image {note}: not an image mobiforge can read" in error and "<_io" not in error
    (tmp_path / "empty").mkdir()
    assert main(["predict", onnx, str(tmp_path / "empty")]) == 2 and "no image files" in capsys.readouterr().err
    # a file moved away from its data: eval asks for --data in one line, no traceback
    moved = tmp_path / "moved" / "far" / "m.onnx"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(Path(onnx).read_bytes())
    Path(f"{moved}.json").write_text(Path(f"{onnx}.json").read_text())
    assert main(["eval", str(moved)]) == 2
    assert "which is not there from here" in capsys.readouterr().err
    # a report from before issue 42 records no data: eval asks for it in one line
    old = tmp_path / "old.onnx"
    old.write_bytes(Path(onnx).read_bytes())
    report = json.loads(Path(f"{onnx}.json").read_text())
    report.pop("data")
    Path(f"{old}.json").write_text(json.dumps(report))
    assert main(["eval", str(old)]) == 2 and "pass --data FOLDER" in capsys.readouterr().err


def test_litert_int8_needs_no_executorch(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 45: LiteRT's int8 is annotated by litert-torch's own quantizer through the shared PT2E helper; with
    ExecuTorch unimportable, a LiteRT int8 file is still written and verified."""
    for name in [name for name in sys.modules if name == "executorch" or name.startswith("executorch.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    report = _export(checkpoint, tmp_path / "m.tflite", "tflite", "ptq", float_fallback=False)
    assert report.precision == "int8-ptq" and report.ran_in_runtime
    assert not any(name.startswith("executorch.") for name in sys.modules)


def test_the_gate_leaves_out_the_val_images_listed_and_eval_repeats_it(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 46: ``--exclude-val FILE`` (ship's --dedupe-val: the val photos with a copy in train) leaves those images
    out of the gate; the file's report records them, so ``eval`` of the file judges on the same images."""
    data = checkpoint.parent.parent.parent / "data"
    left_out = sorted((data / "val").rglob("*.png"))[::3]
    listed = tmp_path / "leaked.txt"
    listed.write_text(
        "# the doctor's leaked val photos\n" + "".join(f"{p.relative_to(data).as_posix()}\n" for p in left_out)
    )
    out = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), "-f", "onnx", "-o", str(out), "--exclude-val", str(listed), "-j", "0"]) == 0
    report = json.loads(Path(f"{out}.json").read_text())
    assert report["images"] == 24 - len(left_out)
    assert report["data"]["excluded_val"] == [p.relative_to(data).as_posix() for p in left_out]
    capsys.readouterr()
    assert main(["eval", str(out), "--json", "-j", "0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["images"] == report["images"] and again["confusion"] == report["confusion"]
    assert main(["export", str(checkpoint), "-f", "onnx", "--exclude-val", str(tmp_path / "missing.txt")]) == 2
    assert "--exclude-val" in capsys.readouterr().err
    listed.write_text(f"{left_out[0]}\n")  # an absolute path: not how the data names it
    assert main(["export", str(checkpoint), "-f", "onnx", "-o", str(out), "--exclude-val", str(listed)]) == 2
    assert "not in the val split" in capsys.readouterr().err
