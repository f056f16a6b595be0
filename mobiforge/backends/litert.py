"""LiteRT (TensorFlow Lite): litert-torch converts the PyTorch graph to ``.tflite``; ai-edge-litert runs it.

int8 graphs are annotated by XNNPACK's quantizer, as for ExecuTorch: litert-torch 0.10's own annotator was measured
to lose 32 top-1 points on a CIFAR-10 MobileNetV2 (benchmarks/RESULTS.md) and its QAT variant fails on this torch.
litert-torch still does the conversion, told by its quantizer config that the graph is statically quantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backends import Int8Job, Runner
from mobiforge.errors import missing
from mobiforge.quantize import PT2E_NOTE, Simulator, pt2e_simulator, xnnpack_quantizer


def write(model: nn.Module, example: torch.Tensor, path: Path, quantizer: Any = None) -> Path:
    try:
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig
    except ImportError:
        raise missing("litert-torch") from None
    quant_config = QuantConfig(pt2e_quantizer=quantizer) if quantizer is not None else None
    litert_torch.convert(model, (example,), quant_config=quant_config).export(str(path))
    return path


def write_int8(model: nn.Module, job: Int8Job, path: Path) -> tuple[nn.Module, str]:
    reference = job.pt2e(xnnpack_quantizer(qat=job.qat, float_modules=job.float_modules), False)  # it folds itself
    write(reference, job.example, path, litert_quantizer())
    return reference, PT2E_NOTE


def litert_quantizer() -> Any:
    """litert-torch's PT2E quantizer config for static int8 (tells its converter how the graph was quantized)."""
    try:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    except ImportError:
        raise missing("litert-torch") from None
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    return PT2EQuantizer().set_global(config)


def int8_simulator(model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
    return pt2e_simulator(model, job.calibration[:1], images)


def runner(path: Path, threads: int) -> Runner:
    """Float32 in and out whatever the file's own input types: an int8 model with int8 inputs gets its input
    quantized and its output dequantized with the scales stored in the file, exactly as an app would do it."""
    interpreter = _interpreter(path, threads)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = source["quantization"]
    out_scale, out_zero = target["quantization"]

    def run(batch: np.ndarray) -> Any:
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


def input_shape(path: Path) -> tuple[int, ...]:
    return tuple(int(side) for side in _interpreter(path, 1).get_input_details()[0]["shape"])


def _interpreter(path: Path, threads: int) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise missing("ai-edge-litert") from None
    return Interpreter(model_path=str(path), num_threads=threads)
