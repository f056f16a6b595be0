"""ExecuTorch: ``torch.export`` -> edge dialect -> XNNPACK delegate -> ``.pte``; run by ExecuTorch's runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backends import Int8Job, Interface, Runner
from mobiforge.errors import missing
from mobiforge.log import native_stderr_silenced
from mobiforge.quantize import PT2E_NOTE, Simulator, pt2e_simulator, xnnpack_quantizer


def write(model: nn.Module, example: torch.Tensor, path: Path, interface: Interface | None = None) -> Path:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise missing("executorch") from None
    program = torch.export.export(model, (example,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)
    return path


def write_int8(model: nn.Module, job: Int8Job, path: Path) -> tuple[nn.Module, str]:
    reference = job.pt2e(xnnpack_quantizer(qat=job.qat, float_modules=job.float_modules), True)
    write(reference, job.example, path)
    return reference, PT2E_NOTE


def int8_simulator(model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
    return pt2e_simulator(model, job.calibration[:1], images)


def runner(path: Path, threads: int) -> Runner:
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


def input_shape(path: Path) -> tuple[int, ...]:
    try:
        from executorch.runtime import Runtime
    except ImportError:
        raise missing("executorch") from None
    with native_stderr_silenced():
        program = Runtime.get().load_program(path)
    return tuple(program.metadata("forward").input_tensor_meta(0).sizes())
