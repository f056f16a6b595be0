"""Run an exported artifact in its own runtime: ExecuTorch (XNNPACK), LiteRT, ONNX Runtime.

``load_runner(path, threads)`` returns a callable that takes a float32 NCHW batch (normalised as the checkpoint's
preprocessing says) and returns float32 logits as numpy arrays, whatever the artifact's own input types: an int8
LiteRT model with int8 inputs gets its input quantized and its output dequantized with the scales stored in the
file, exactly as an app would do it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobiforge.errors import MobiforgeError, missing
from mobiforge.profile import BudgetCheck, LatencyStats, Verdicts, budget_checks, measure_latency

Runner = Callable[[np.ndarray], np.ndarray]
SUFFIXES = {".pte": "executorch", ".tflite": "tflite", ".onnx": "onnx"}


def runtime_of(path: Path) -> str:
    try:
        return SUFFIXES[path.suffix]
    except KeyError:
        raise MobiforgeError(f"{path}: unknown artifact type; expected one of {', '.join(SUFFIXES)}") from None


def executorch_runner(path: Path, threads: int) -> Runner:
    try:
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
    except ImportError:
        raise missing("executorch") from None
    portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool is process-wide
    method = Runtime.get().load_program(path).load_method("forward")

    def run(batch: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(batch)])[0].numpy()

    return run


def tflite_runner(path: Path, threads: int) -> Runner:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise missing("ai-edge-litert") from None
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = source["quantization"]
    out_scale, out_zero = target["quantization"]

    def run(batch: np.ndarray) -> np.ndarray:
        if source["dtype"] != np.float32:  # int8 I/O: quantize with the file's own scale and zero point
            info = np.iinfo(source["dtype"])
            batch = np.clip(np.round(batch / in_scale + in_zero), info.min, info.max).astype(source["dtype"])
        interpreter.set_tensor(source["index"], batch)
        interpreter.invoke()
        output = interpreter.get_tensor(target["index"])
        if target["dtype"] != np.float32:
            output = (output.astype(np.float32) - out_zero) * out_scale
        return output.copy()

    return run


def onnx_runner(path: Path, threads: int) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing("onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: batch})[0]

    return run


def _unreadable(path: Path, runtime: str, error: Exception) -> MobiforgeError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return MobiforgeError(f"{path}: {runtime} cannot load this file ({reason}); export it again with mobiforge export")


def input_shape(path: str | Path) -> tuple[int, ...]:
    """The input shape the artifact was exported with, read from the file itself (a dynamic batch reads as 1)."""
    path = Path(path)
    if not path.is_file():
        raise MobiforgeError(f"{path} does not exist")
    runtime = runtime_of(path)
    try:
        return _input_shape(path, runtime)
    except (ImportError, MobiforgeError):
        raise
    except Exception as error:  # a damaged or foreign file: each runtime raises its own exception type
        raise _unreadable(path, runtime, error) from None


def _input_shape(path: Path, runtime: str) -> tuple[int, ...]:
    if runtime == "executorch":
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise missing("executorch") from None
        return tuple(Runtime.get().load_program(path).metadata("forward").input_tensor_meta(0).sizes())
    if runtime == "tflite":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise missing("ai-edge-litert") from None
        return tuple(int(side) for side in Interpreter(model_path=str(path)).get_input_details()[0]["shape"])
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing("onnxruntime") from None
    shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    return tuple(side if isinstance(side, int) else 1 for side in shape)


def load_runner(path: str | Path, threads: int = 1) -> Runner:
    """A callable running ``path`` in its runtime with ``threads`` threads (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MobiforgeError(f"{path} does not exist")
    runtime = runtime_of(path)
    loader = {"executorch": executorch_runner, "tflite": tflite_runner, "onnx": onnx_runner}[runtime]
    try:
        return loader(path, threads)
    except MobiforgeError:
        raise
    except Exception as error:  # a damaged or foreign file: each runtime raises its own exception type
        raise _unreadable(path, runtime, error) from None


@dataclass
class ArtifactProfile(Verdicts):
    """An exported artifact timed in its own runtime (``mobiforge profile model.pte``)."""

    path: str
    runtime: str
    file_bytes: int
    input_shape: list[int]
    threads: int
    latency: LatencyStats
    budgets: list[BudgetCheck] = field(default_factory=list)


def profile_artifact(
    path: str | Path,
    threads: int = 1,
    max_size_bytes: int | None = None,
    max_latency_ms: float | None = None,
    min_seconds: float = 1.0,
) -> ArtifactProfile:
    """Time an ExecuTorch, LiteRT or ONNX file at batch 1 in its runtime on ``threads`` threads, with the input shape
    stored in the file. ``max_size_bytes`` is checked against the file size (here the file is what ships)."""
    path = Path(path)
    runner = load_runner(path, threads)
    shape = input_shape(path)
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    latency = measure_latency(lambda: runner(batch), min_seconds=min_seconds)
    return ArtifactProfile(
        path=str(path),
        runtime=runtime_of(path),
        file_bytes=path.stat().st_size,
        input_shape=list(shape),
        threads=threads,
        latency=latency,
        budgets=budget_checks("file size", path.stat().st_size, max_size_bytes, latency, max_latency_ms),
    )
