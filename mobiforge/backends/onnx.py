"""ONNX: ``torch.onnx`` (dynamo, opset 18, dynamic batch) writes the file; int8 is ONNX Runtime's own static QDQ
quantization of the fp32 file (per-channel int8 weights, uint8 activations), and ONNX Runtime runs it.

ONNX gets no QAT: ONNX Runtime quantizes fp32 graphs, and torch's exporter cannot yet write PT2E's
quantize/dequantize ops. On x86 CPUs without VNNI its int8 weights are 7-bit (``onnx_needs_reduce_range``).
"""

from __future__ import annotations

import ast
import functools
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backend_api import AppSnippets, BackendImpl, Int8Job, Interface, Runner, Simulator
from mobiforge.errors import MobiforgeError, missing

INPUT_NAME = "input"
# The app code (ONNX Runtime's Android ``OrtSession`` and Objective-C/Swift ``ORTSession`` APIs)
KOTLIN = """\
// build.gradle: implementation("com.microsoft.onnxruntime:onnxruntime-android:{version}")  // as verified
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import java.nio.FloatBuffer

val env = OrtEnvironment.getEnvironment()
val session = env.createSession(context.assets.open("{file}").readBytes())

fun classify(bitmap: Bitmap): String {{
    val input = OnnxTensor.createTensor(env, FloatBuffer.wrap(toInput(bitmap)), longArrayOf(1, 3, {size}, {size}))
    session.run(mapOf("input" to input)).use {{ result ->
        val logits = (result[0].value as Array<FloatArray>)[0]
        return CLASSES[logits.indices.maxBy {{ logits[it] }}]
    }}
}}
"""
SWIFT = """\
// CocoaPods: pod 'onnxruntime-objc'
import onnxruntime_objc

let env = try ORTEnv(loggingLevel: .warning)
let session = try ORTSession(env: env, modelPath: Bundle.main.path(forResource: "{stem}", ofType: "{ext}")!,
                             sessionOptions: nil)

func classify(rgba: [UInt8]) throws -> String {{
    var input = toInput(rgba: rgba)
    let data = NSMutableData(bytes: &input, length: input.count * MemoryLayout<Float>.size)
    let tensor = try ORTValue(tensorData: data, elementType: .float, shape: [1, 3, {size}, {size}])
    let outputs = try session.run(withInputs: ["input": tensor], outputNames: ["logits"], runOptions: nil)
    let bytes = try outputs["logits"]!.tensorData() as Data
    let scores = bytes.withUnsafeBytes {{ Array($0.bindMemory(to: Float.self)) }}
    return classes[scores.indices.max {{ scores[$0] < scores[$1] }}!]
}}
"""


def onnx_static_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Sequence[torch.Tensor],
    input_name: str,
    float_modules: Sequence[str] = (),
    reduce_range: bool = False,
    preprocessed: bool = False,
    scopes: dict[str, set[str]] | None = None,
) -> Path:
    """ONNX Runtime static quantization: QDQ format, per-channel int8 weights, uint8 activations; the nodes exported
    from the modules named in ``float_modules`` (and everything inside them) are left in float. ``reduce_range``
    quantizes the weights to 7 bits (see ``onnx_needs_reduce_range``). ``preprocessed``: ``fp32_path`` already went
    through ``onnx_preprocess``, and ``scopes`` are its nodes' module paths from before (``onnx_name_scopes``)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise missing("onnxruntime") from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch.numpy()}

    if scopes is None and float_modules and not preprocessed:
        scopes = onnx_name_scopes(fp32_path)
    prepared = (
        fp32_path if preprocessed else onnx_preprocess(fp32_path, out_path.with_name(out_path.stem + ".pre.onnx"))
    )
    try:
        excluded = onnx_nodes_of(prepared, float_modules, scopes or {}) if float_modules else []
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            reduce_range=reduce_range,
        )
    finally:
        if not preprocessed:
            prepared.unlink(missing_ok=True)
    return out_path


def onnx_preprocess(fp32_path: Path, out_path: Path) -> Path:
    """Shape inference and graph optimisation before quantization, as ONNX Runtime's quantization guide recommends;
    ``out_path`` may be ``fp32_path``."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise missing("onnxruntime") from None

    staged = out_path.with_name(out_path.stem + ".staged.onnx")
    try:
        quant_pre_process(str(fp32_path), str(staged))
        return staged.replace(out_path)
    finally:
        staged.unlink(missing_ok=True)  # left only when pre-processing failed


def onnx_needs_reduce_range(cpuinfo: str | None = None) -> bool:
    """Whether ONNX Runtime's int8 kernels on this CPU need 7-bit weights: on x86 without VNNI they multiply uint8
    activations by int8 weights with instructions whose 16-bit pair sums saturate, and ONNX Runtime's quantization
    guide recommends ``reduce_range`` there (EfficientNet-Lite0 on an AVX2 CPU: 7x less logit error,
    RESULTS.md#export_hymenoptera_amd). VNNI and AMX CPUs, and ARM, do not saturate."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False  # no way to tell: keep ONNX Runtime's default
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return not any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def onnx_nodes_of(path: Path, modules: Sequence[str], recorded: dict[str, set[str]]) -> list[str]:
    """The nodes of an ONNX file that torch's exporter wrote for ``modules`` (or anything inside them): it records
    each node's module path (``pkg.torch.onnx.name_scopes``). ORT's pre-processing drops those records when its
    optimizer rewrites the graph (MobileNetV3's hard-swish is split in two), and keeps the nodes' names: a node
    without its own record takes the one ``recorded`` for its name in the file as torch wrote it."""
    import onnx

    wanted, nodes = set(modules), []
    for node in onnx.load(str(path)).graph.node:
        scopes = _name_scopes_of(node) or recorded.get(node.name, set())
        if wanted & scopes:
            nodes.append(node.name)
    if not nodes:
        names = ", ".join(modules)
        raise MobiforgeError(f"{path}: no ONNX node was exported from {names}; name layer groups with weights")
    return nodes


def _name_scopes_of(node: Any) -> set[str]:
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
    return set(ast.literal_eval(scopes))


def onnx_name_scopes(path: Path) -> dict[str, set[str]]:
    """Each named node's module paths, as torch's exporter recorded them in ``path``."""
    import onnx

    return {node.name: _name_scopes_of(node) for node in onnx.load(str(path)).graph.node if node.name}


def onnx_simulator(
    fp32_path: Path, calibration: Sequence[torch.Tensor], images: torch.Tensor, input_name: str, reduce_range: bool
) -> Simulator:
    """ONNX Runtime's static QDQ quantization of ``fp32_path``, run by ONNX Runtime itself. ``fp32_path`` (a file
    written for the search) is pre-processed in place once, not once per trial."""
    ort = _onnxruntime()
    scopes = onnx_name_scopes(fp32_path)  # before pre-processing drops them
    onnx_preprocess(fp32_path, fp32_path)

    def int8_logits(float_modules: Sequence[str]) -> torch.Tensor:
        trial = fp32_path.with_name(fp32_path.stem + ".trial.onnx")
        try:
            onnx_static_int8(
                fp32_path, trial, calibration, input_name, float_modules, reduce_range, preprocessed=True, scopes=scopes
            )
            session = ort.InferenceSession(str(trial), providers=["CPUExecutionProvider"])
            return torch.from_numpy(session.run(None, {input_name: images.numpy()})[0])
        finally:
            trial.unlink(missing_ok=True)

    return int8_logits


@functools.cache
def cpu_needs_reduce_range() -> bool:  # the CPU does not change while the process runs: read its flags once
    return onnx_needs_reduce_range()


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise missing("onnxruntime") from None
    return onnxruntime


class OnnxRuntime(BackendImpl):
    def write(self, model: nn.Module, example: torch.Tensor, path: Path, interface: Interface | None = None) -> Path:
        """ONNX opset 18 with a dynamic batch dimension, weights inside the file."""
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise missing("onnx and onnxscript") from None
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            opset_version=18,
            external_data=False,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=["logits"],
            verbose=False,
        )
        return path

    def write_int8(self, model: nn.Module, job: Int8Job, path: Path) -> tuple[None, str]:
        reduce_range = job.reduce_range if job.reduce_range is not None else cpu_needs_reduce_range()
        fp32 = self.write(model, job.example, path.with_name(path.stem + ".fp32.onnx"))
        try:
            onnx_static_int8(fp32, path, job.calibration, INPUT_NAME, job.float_modules, reduce_range)
        finally:
            fp32.unlink(missing_ok=True)
        weights = "7-bit weights (reduce_range)" if reduce_range else "int8 weights"
        return None, f"ONNX Runtime static QDQ: per-channel {weights}, uint8 activations"

    def int8_simulator(self, model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
        """ONNX Runtime quantizes and runs each trial: its rounding is the one shipped."""
        reduce_range = job.reduce_range if job.reduce_range is not None else cpu_needs_reduce_range()
        self.write(model, job.example, scratch)
        return onnx_simulator(scratch, job.calibration, images, INPUT_NAME, reduce_range)

    def runner(self, path: Path, threads: int, interface: Interface | None = None) -> Runner:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(batch: np.ndarray) -> Any:
            return session.run(None, {name: batch})[0]

        return run

    def input_shape(self, path: Path) -> tuple[int, ...]:
        shape = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        return tuple(side if isinstance(side, int) else 1 for side in shape)

    def app_snippets(self, pixels: bool) -> AppSnippets:
        return AppSnippets(KOTLIN, SWIFT)
