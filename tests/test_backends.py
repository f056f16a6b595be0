"""One place per runtime: a runtime added as one module and one table row reaches export, its verification, the
gate's QAT check, profile and the CLI's choices, with no other edit. The test registers a fake one: torch.export's
own ExportedProgram files, run by torch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mobiforge.backend_api import (
    BACKENDS,
    AppSnippets,
    Backend,
    BackendImpl,
    backend_for,
    get_backend,
    register_backend,
    unregister_backend,
)
from mobiforge.cli import build_parser, main
from mobiforge.errors import MobiforgeError
from mobiforge.export import ExportConfig, export_checkpoint
from mobiforge.runtimes import input_shape, load_runner
from mobiforge.train import train
from tests.helpers import make_split_folder, small_train_config


class TorchExportRuntime(BackendImpl):
    """A whole runtime in a few methods: ``torch.export.save`` writes the file, ``torch.export.load`` runs it."""

    def write(self, model: nn.Module, example: torch.Tensor, path: Path, interface: Any = None) -> Path:
        program = torch.export.export(model.eval(), (example,))
        torch.export.save(program, path, extra_files={"shape": json.dumps(list(example.shape))})
        return path

    def write_int8(self, model: nn.Module, job: Any, path: Path) -> tuple[None, str]:
        raise AssertionError("not reached: the fake backend is fp32 only in this test")

    def int8_simulator(self, model: nn.Module, job: Any, images: torch.Tensor, scratch: Path) -> Any:
        raise AssertionError("not reached")

    def runner(self, path: Path, threads: int, interface: Any = None) -> Any:
        module = torch.export.load(path).module()

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(batch)).numpy()

        return run

    def input_shape(self, path: Path) -> tuple[int, ...]:
        extra = {"shape": ""}
        torch.export.load(path, extra_files=extra)
        return tuple(json.loads(extra["shape"]))

    def app_snippets(self, pixels: bool) -> AppSnippets:
        return AppSnippets(kotlin="// torch.export has no Android runtime", swift="// nor an iOS one", preprocess=False)


FAKE = Backend(
    name="torchexport",
    suffix=".pt2",
    title="torch.export ExportedProgram (a test runtime)",
    package="torch",
    modules=("torch.export",),
    implementation=TorchExportRuntime(),
    supports_qat=False,
    no_qat_reason="the test runtime has no int8 path",
)


@pytest.fixture
def fake() -> Iterator[Backend]:
    register_backend(FAKE)
    try:
        yield FAKE
    finally:
        unregister_backend(FAKE.name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("backends")
    data = make_split_folder(root / "data", classes=3, train=12, val=6)
    return train(small_train_config(data, root / "runs", epochs=1)).run_dir / "last.pt"


def test_the_built_in_rows_name_their_suffixes_and_capabilities() -> None:
    assert {name: b.suffix for name, b in BACKENDS.items()} == {
        "executorch": ".pte",
        "tflite": ".tflite",
        "onnx": ".onnx",
        "coreml": ".mlpackage",
        "web": ".web",  # a folder of any name, known by the page.json in it
    }
    assert [b.name for b in BACKENDS.values() if not b.supports_qat] == ["onnx", "coreml"]
    assert [b.name for b in BACKENDS.values() if not b.runs_here] == ["coreml"]
    assert backend_for("model.tflite").name == "tflite"
    with pytest.raises(MobiforgeError, match=r"model\.bin: unknown artifact type; expected one of \.pte, "):
        backend_for("model.bin")
    with pytest.raises(MobiforgeError, match="unknown runtime 'tensorrt'; choose one of executorch, tflite, onnx, "):
        get_backend("tensorrt")
    with pytest.raises(ValueError, match="clashes"):
        register_backend(Backend("other", ".pte", "", "", (), FAKE.implementation))


def test_a_registered_backend_exports_verifies_and_profiles(fake: Backend, checkpoint: Path, tmp_path: Path) -> None:
    config = ExportConfig(str(checkpoint), fake.name, out=str(tmp_path / "m.pt2"), workers=0, latency_seconds=0.05)
    report = export_checkpoint(config)
    assert report.format == fake.name and Path(report.path).stat().st_size == report.file_bytes
    assert report.agreement == 100.0 and report.max_abs_logit_diff < 1e-4  # run by its own runner on the val images
    assert input_shape(report.path) == (1, 3, 16, 16)
    assert load_runner(report.path)(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 3)

    with pytest.raises(MobiforgeError, match=r"needs the suffix \.pt2"):
        export_checkpoint(ExportConfig(str(checkpoint), fake.name, out=str(tmp_path / "m.onnx")))
    with pytest.raises(MobiforgeError, match="--int8 qat is not available for torchexport: the test runtime has no"):
        export_checkpoint(ExportConfig(str(checkpoint), fake.name, int8="qat"))


def test_the_cli_offers_a_registered_backend(
    fake: Backend, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    args = parser.parse_args(["export", str(checkpoint), "--format", fake.name])
    assert args.format == fake.name
    assert parser.parse_args(["ship", "--runtime", fake.name]).runtime == fake.name
    out = tmp_path / "cli.pt2"
    assert main(["export", str(checkpoint), "-f", fake.name, "-o", str(out), "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["profile", str(out), "--json"]) == 0
    profiled = json.loads(capsys.readouterr().out)
    assert profiled["runtime"] == fake.name and profiled["input_shape"] == [1, 3, 16, 16]


def test_the_executorch_runtime_prints_no_native_log_lines(tmp_path: Path) -> None:
    """ExecuTorch's runtime writes ``[cpuinfo_utils.cpp]`` and ``[threadpool.cpp]`` lines to file descriptor 2 when
    it loads a program or resizes its thread pool, and torch warns about torchao's pytree Enum: none of it is the
    user's business. A fresh process, so that the once-per-process lines are seen."""
    import subprocess
    import sys

    script = f"""
import numpy as np, torch
from pathlib import Path
from mobiforge.backends.executorch import ExecuTorch
et = ExecuTorch()
path = et.write(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8), Path({str(tmp_path / "m.pte")!r}))
for threads in (1, 2):
    et.runner(path, threads)(np.zeros((1, 3, 8, 8), np.float32))
print(et.input_shape(path))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 3, 8, 8)"
    for noise in ("threadpool.cpp", "cpuinfo_utils.cpp", "KernelPreference"):
        assert noise not in done.stderr


def test_onnx_float_layers_are_found_after_ort_rewrites_the_graph(tmp_path: Path) -> None:
    """ORT's pre-processing splits MobileNetV3's hard-swish and drops every node's module record: ship's float-layer
    retry then failed (`no ONNX node was exported from features.0, features.1`). Nodes keep their names, and the
    records of the file torch wrote find them."""
    pytest.importorskip("onnxruntime")
    import onnx

    from mobiforge import create_model
    from mobiforge.backends.onnx import OnnxRuntime
    from mobiforge.onnx_int8 import onnx_static_int8

    model = create_model("mobilenet_v3_small", num_classes=3, width_mult=0.25, small_input=True).eval()
    example = torch.randn(1, 3, 32, 32)
    fp32 = OnnxRuntime().write(model, example, tmp_path / "model.fp32.onnx")
    out = onnx_static_int8(fp32, tmp_path / "model.onnx", [torch.randn(4, 3, 32, 32)], "input", ["features.0"])
    graph = onnx.load(str(out)).graph
    first_conv = next(node for node in graph.node if node.op_type == "Conv")
    quantized_inputs = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    assert first_conv.input[1] not in quantized_inputs  # features.0's weights stayed float
    assert any(node.op_type == "Conv" and node.input[1] in quantized_inputs for node in graph.node)  # the rest: int8


def test_every_runtime_implements_the_interface_as_a_type_checker_sees_it(tmp_path: Path) -> None:
    """``BackendImpl`` is checked by mypy, not only described: each runtime's methods match its signatures (and an
    implementation that drifts from them is an error). Imports are skipped, so it checks mobiforge's own types."""
    api = pytest.importorskip("mypy.api")
    root = Path(__file__).resolve().parents[1]
    drifted = tmp_path / "drifted.py"
    drifted.write_text(
        "from pathlib import Path\n"
        "from mobiforge.backends.onnx import OnnxRuntime\n"
        "class Drifted(OnnxRuntime):\n"
        "    def input_shape(self, path: Path, threads: int) -> list[str]:\n"
        "        return []\n"
    )
    flags = ["--follow-imports=skip", "--ignore-missing-imports", "--no-error-summary", "--cache-dir", str(tmp_path)]
    implementations = sorted((root / "mobiforge" / "backends").glob("*.py"))
    modules = [str(root / "mobiforge" / "backend_api.py"), *map(str, implementations)]
    out, err, status = api.run([*flags, *modules, str(Path(__file__))])
    assert status == 0, out + err
    out, _, status = api.run([*flags, *modules, str(drifted)])
    assert status == 1 and 'Signature of "input_shape" incompatible with supertype' in out
