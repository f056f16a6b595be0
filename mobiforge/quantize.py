"""int8 quantization: the PT2E flow of torchao (ExecuTorch, LiteRT) and ONNX Runtime's static QDQ quantization.

MobileNet-aware defaults everywhere: weights per output channel (per-tensor int8 collapses depthwise convs), BN
folded into the convs by the flow, symmetric int8 weights, activations calibrated on real training images
(eval preprocessing). ``torch.ao.quantization``'s eager mode is deprecated in this torch and not used.

- ``ptq_pt2e``: ``torch.export`` -> ``prepare_pt2e`` -> calibration -> ``convert_pt2e``.
- ``qat_pt2e``: ``prepare_qat_pt2e`` -> fine-tuning with ``engine.train_one_epoch`` -> ``convert_pt2e``.
- ``onnx_static_int8``: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel) on an fp32 ONNX file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiforge import engine
from mobiforge.errors import MobiforgeError

EXPORT_EXTRA = "pip install 'mobiforge[export]'"


def missing(package: str) -> MobiforgeError:
    return MobiforgeError(f"this needs {package}, which is not installed: {EXPORT_EXTRA}")


def xnnpack_quantizer(qat: bool = False) -> Any:
    """ExecuTorch's XNNPACK quantizer: per-channel symmetric int8 weights, static int8 activations."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError:
        raise missing("executorch") from None
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


def litert_quantizer() -> Any:
    """litert-torch's PT2E quantizer config for static int8 (tells its converter how the graph was quantized)."""
    try:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    except ImportError:
        raise missing("litert-torch") from None
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    return PT2EQuantizer().set_global(config)


def _export_dynamic_batch(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``torch.export`` with a dynamic batch dimension (calibration and QAT batches differ in size)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()


def ptq_pt2e(
    model: nn.Module, quantizer: Any, calibration: Sequence[torch.Tensor], fold_quantize: bool = True
) -> nn.Module:
    """Post-training static int8: observers calibrated on ``calibration`` batches, then converted."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = _export_dynamic_batch(model.eval(), calibration[0])
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return without_unused_tensors(convert_pt2e(prepared, fold_quantize=fold_quantize))


def without_unused_tensors(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop the parameters and buffers no graph node reads any more.

    ``convert_pt2e`` leaves the float weights (and, after QAT, the BatchNorm tensors it folded) on the module.
    ExecuTorch kept the QAT leftovers in the program: its .pte came out 8-10% larger than PTQ's for the same net.
    """
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name in [name for name, _ in [*graph.named_parameters(), *graph.named_buffers()] if name not in used]:
        owner, _, attribute = name.rpartition(".")
        delattr(graph.get_submodule(owner), attribute)
    return graph


def qat_pt2e(
    model: nn.Module,
    quantizer: Any,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    example: torch.Tensor,
    epochs: int,
    optim: engine.OptimConfig,
    steps_per_epoch: int,
    label_smoothing: float = 0.1,
    fold_quantize: bool = True,
) -> nn.Module:
    """Quantization-aware fine-tuning: fake-quantized training graph trained with the train command's loop."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    class TrainModeSwitch(nn.Module):
        """Exported graphs refuse ``.train()``; torchao's helpers switch their BN and dropout instead."""

        def __init__(self, graph: nn.Module) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.graph(x)

        def train(self, mode: bool = True) -> TrainModeSwitch:
            (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
            return self

    graph = _export_dynamic_batch(copy.deepcopy(model).train(), example)  # export shares the weights
    prepared = TrainModeSwitch(prepare_qat_pt2e(graph, quantizer))
    optimizer = engine.build_optimizer(prepared, optim)
    scheduler = engine.build_scheduler(optimizer, optim, epochs, steps_per_epoch)
    loss_fn = engine.cross_entropy_loss(label_smoothing)
    for epoch in range(epochs):
        engine.train_one_epoch(prepared, train_loader, optimizer, scheduler, loss_fn, epoch=epoch)
    prepared.train(False)
    return without_unused_tensors(convert_pt2e(prepared.graph, fold_quantize=fold_quantize))


def onnx_static_int8(fp32_path: Path, out_path: Path, calibration: Sequence[torch.Tensor], input_name: str) -> Path:
    """ONNX Runtime static quantization: QDQ format, per-channel int8 weights, uint8 activations."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise missing("onnxruntime") from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch.numpy()}

    prepared = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph optimisation, as ORT recommends
    try:
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return out_path
