"""ONNX: ``torch.onnx`` (dynamo, opset 18, dynamic batch) writes the file; int8 is ONNX Runtime's own static QDQ
quantization of the fp32 file (per-channel int8 weights, uint8 activations), and ONNX Runtime runs it.

ONNX gets no QAT: ONNX Runtime quantizes fp32 graphs, and torch's exporter cannot yet write PT2E's
quantize/dequantize ops. On x86 CPUs without VNNI its int8 weights are 7-bit (``onnx_needs_reduce_range``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backend_api import AppSnippets, BackendImpl, Int8Job, Interface, Runner, Simulator
from mobiforge.errors import missing
from mobiforge.onnx_int8 import cpu_needs_reduce_range, onnx_name_scopes, onnx_preprocess, onnx_static_int8

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
