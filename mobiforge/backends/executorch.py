"""ExecuTorch: ``torch.export`` -> edge dialect -> XNNPACK delegate -> ``.pte``; run by ExecuTorch's runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backend_api import AppSnippets, BackendImpl, Int8Job, Interface, Runner, Simulator
from mobiforge.errors import missing
from mobiforge.log import native_stderr_silenced
from mobiforge.quantize import PT2E_NOTE, mobilenet_quantizer, pt2e_simulator

# The app code (ExecuTorch's Android ``org.pytorch.executorch`` and Swift ``ExecuTorch`` package APIs)
KOTLIN = """\
// build.gradle: implementation("org.pytorch:executorch-android:{version}")  // the version that exported it
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

val module = Module.load(context.filesDir.resolve("{file}").absolutePath)  // copy the asset to files/ first

fun classify(bitmap: Bitmap): String {{
    val input = Tensor.fromBlob(toInput(bitmap), longArrayOf(1, 3, {size}, {size}))
    val logits = module.forward(EValue.from(input))[0].toTensor().dataAsFloatArray
    return CLASSES[logits.indices.maxBy {{ logits[it] }}]
}}
"""
SWIFT = """\
// Swift Package: https://github.com/pytorch/executorch, products ExecuTorch + XNNPACK backend
import ExecuTorch

let module = Module(filePath: Bundle.main.path(forResource: "{stem}", ofType: "{ext}")!)

func classify(rgba: [UInt8]) throws -> String {{
    let input = Tensor<Float>(toInput(rgba: rgba), shape: [1, 3, {size}, {size}])
    let logits: Tensor<Float> = try module.forward(input)[0].tensor()!
    let scores = logits.scalars()
    return classes[scores.indices.max {{ scores[$0] < scores[$1] }}!]
}}
"""


def xnnpack_quantizer(float_modules: Sequence[str] = (), qat: bool = False) -> Any:
    """ExecuTorch's XNNPACK quantizer: per-channel symmetric int8 weights, static int8 activations; with ReLU6
    fused and ``float_modules`` left in float (``quantize.mobilenet_quantizer``)."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError:
        raise missing("executorch") from None
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    return mobilenet_quantizer(XNNPACKQuantizer().set_global(config), config, float_modules)


class ExecuTorch(BackendImpl):
    def write(self, model: nn.Module, example: torch.Tensor, path: Path, interface: Interface | None = None) -> Path:
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
        except ImportError:
            raise missing("executorch") from None
        program = torch.export.export(model, (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(lowered.buffer)
        return path

    def write_int8(self, model: nn.Module, job: Int8Job, path: Path) -> tuple[nn.Module, str]:
        reference = job.pt2e(xnnpack_quantizer(job.float_modules, qat=job.qat), True)
        self.write(reference, job.example, path)
        return reference, PT2E_NOTE

    def int8_simulator(self, model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
        return pt2e_simulator(model, job.calibration[:1], images, xnnpack_quantizer)

    def runner(self, path: Path, threads: int, interface: Interface | None = None) -> Runner:
        try:
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
        except ImportError:
            raise missing("executorch") from None
        with native_stderr_silenced():
            portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool is process-wide
            method = Runtime.get().load_program(path).load_method("forward")

        def run(batch: np.ndarray) -> Any:
            return method.execute([torch.from_numpy(batch)])[0].numpy()

        return run

    def input_shape(self, path: Path) -> tuple[int, ...]:
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise missing("executorch") from None
        with native_stderr_silenced():
            program = Runtime.get().load_program(path)
        return tuple(program.metadata("forward").input_tensor_meta(0).sizes())

    def app_snippets(self, pixels: bool) -> AppSnippets:
        return AppSnippets(KOTLIN, SWIFT)
