"""int8 quantization: the PT2E flow of torchao (ExecuTorch, LiteRT) and ONNX Runtime's static QDQ quantization.

MobileNet-aware defaults everywhere: weights per output channel (per-tensor int8 collapses depthwise convs), BN
folded into the convs by the flow, symmetric int8 weights, activations calibrated on real training images
(eval preprocessing). ``torch.ao.quantization``'s eager mode is deprecated in this torch and not used.

- ``ptq_pt2e``: ``torch.export`` -> ``prepare_pt2e`` -> calibration -> ``convert_pt2e``.
- ``qat_pt2e``: ``prepare_qat_pt2e`` -> fine-tuning with ``engine.train_one_epoch`` -> ``convert_pt2e``.
- ONNX Runtime's static QDQ int8 (``onnxruntime.quantization.quantize_static``, per-channel) is written by the ONNX
  backend itself (``backends/onnx.py``); this module holds what every runtime shares.
- ``search_float_modules``: which layer groups to leave in float when int8 loses too much (export's fallback), for
  PT2E graphs and ONNX Runtime's QDQ files alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mobiforge import engine
from mobiforge.backend_api import Simulator

PT2E_NOTE = "PT2E: per-channel symmetric int8 weights, static int8 activations, BN folded"


def mobilenet_quantizer(base: Any, config: Any, float_modules: Sequence[str] = ()) -> Any:
    """A runtime's PT2E quantizer (``base``, annotating with ``config``), made right for MobileNets; the one PT2E
    helper every PT2E runtime shares, each bringing its own quantizer (ExecuTorch XNNPACK's, LiteRT litert-torch's).

    - ReLU6 is quantized after the conv it clamps (``annotate_fused_clamps``), before ``base`` annotates the rest.
    - Everything inside the modules named in ``float_modules`` is left in float: their annotations are removed once
      ``base`` has annotated, so a quantizer without a filter of its own (litert-torch's) honours them too.
    """
    from torchao.quantization.pt2e.quantizer import Quantizer
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    inside = [get_module_name_filter(name) for name in float_modules]

    def quantized(node: torch.fx.Node) -> bool:
        return not any(test(node) for test in inside)

    class MobileNetQuantizer(Quantizer):  # type: ignore[misc]
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return base.transform_for_annotation(model)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            annotate_fused_clamps(model, config, quantized)
            base.annotate(model)
            for node in model.graph.nodes:
                if not quantized(node):
                    node.meta.pop(Q_ANNOTATION_KEY, None)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            base.validate(model)

    return MobileNetQuantizer()


CLAMPS = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
CLAMPED_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def annotate_fused_clamps(
    model: torch.fx.GraphModule, config: Any, quantized: Callable[[torch.fx.Node], bool]
) -> torch.fx.GraphModule:
    """Annotates conv -> ReLU6 (and linear -> ReLU6) as one quantized op, the way XNNPACK and TFLite run it.

    Neither XNNPACK's quantizer nor litert-torch's fuses ReLU6 (hardtanh): XNNPACK's put an int8 observer on the
    conv's raw output, before the clamp, so every ReLU6 network (MobileNetV2, EfficientNet-Lite) was requantized
    twice, its pre-activation range spent on values the clamp throws away. Annotated here first, the conv's output
    is observed only after the clamp, in [0, 6]; ExecuTorch's XNNPACK backend fuses the clamp into the conv
    (FuseActivationPass), TFLite's converter into the conv's fused activation. The runtime's quantizer runs after
    this and skips the nodes annotated here.
    """
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    for clamp in [node for node in model.graph.nodes if node.op == "call_function" and node.target in CLAMPS]:
        op = clamp.args[0]
        if not _fusable(op, clamp, Q_ANNOTATION_KEY) or not (quantized(clamp) and quantized(op)):
            continue
        qspecs = {op.args[0]: get_input_act_qspec(config), op.args[1]: get_weight_qspec(config)}
        if len(op.args) > 2 and isinstance(op.args[2], torch.fx.Node) and get_bias_qspec(config) is not None:
            qspecs[op.args[2]] = get_bias_qspec(config)  # XNNPACK's config quantizes the bias, litert-torch's not
        op.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=qspecs, _annotated=True)
        output = get_output_act_qspec(config)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=output, _annotated=True)
        for parameter in list(qspecs)[1:]:
            parameter.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
    return model


def _fusable(op: Any, clamp: torch.fx.Node, key: str) -> bool:
    """A conv or linear whose only user is the clamp, not yet annotated (by ``key``)."""
    return (
        isinstance(op, torch.fx.Node)
        and op.op == "call_function"
        and op.target in CLAMPED_OPS
        and len(op.users) == 1
        and all(isinstance(arg, torch.fx.Node) for arg in op.args[:2])
        and key not in op.meta
        and key not in clamp.meta
    )


def layer_groups(model: nn.Module) -> list[str]:
    """The units a sensitivity search may leave in float: each block with weights of a top-level ``nn.Sequential``
    (stem, inverted-residual blocks, head conv) and every other top-level module with weights (the classifier)."""
    groups = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 1:
            groups += [f"{name}.{index}" for index, block in enumerate(child) if _has_weights(block)]
        elif _has_weights(child):
            groups.append(name)
    return groups


def _has_weights(module: nn.Module) -> bool:
    """Pooling, flatten and dropout hold no weights: leaving them float changes little and costs a trial."""
    return any(True for _ in module.parameters())


@dataclass
class FallbackTrial:
    float_modules: list[str]
    top1: float  # simulated int8 (PT2E reference model) on the labelled search images
    logit_mse: float  # against the fp32 model's logits on the same images


@dataclass
class FloatFallback:
    """What the search left in float and why: every trial it ran, the single group whose float copy helped most
    first."""

    float_modules: list[str]
    fp32_top1: float
    trials: list[FallbackTrial]


def search_float_modules(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    max_drop: float,
    max_groups: int,
    int8_logits: Simulator,
) -> FloatFallback:
    """Which layer groups to leave in float so that int8 loses at most ``max_drop`` top-1 points.

    Each group is tried alone in float (the rest int8, calibrated as for the artifact); the groups whose float copy
    brings the logits closest to fp32 are then left in float one more at a time, up to ``max_groups``, until the
    drop on ``images`` (training images, not the val split the gate reports on) is within ``max_drop``.
    ``int8_logits`` quantizes with the given groups in float and returns the logits on ``images``: PT2E's simulated
    int8 (``pt2e_simulator``) or ONNX Runtime running the QDQ file (``onnx_simulator``).
    """
    with torch.no_grad():
        fp32_logits = model.eval()(images)
    fp32_top1 = top1_percent(fp32_logits, labels)

    def trial(float_modules: list[str]) -> FallbackTrial:
        logits = int8_logits(float_modules)
        return FallbackTrial(float_modules, top1_percent(logits, labels), (logits - fp32_logits).pow(2).mean().item())

    singles = sorted((trial([group]) for group in layer_groups(model)), key=lambda result: result.logit_mse)
    trials, chosen = list(singles), [singles[0]]
    for single in singles[1:max_groups]:
        if fp32_top1 - chosen[-1].top1 <= max_drop:
            break
        chosen.append(trial([*chosen[-1].float_modules, *single.float_modules]))
        trials.append(chosen[-1])
    return FloatFallback(chosen[-1].float_modules, fp32_top1, trials)


def pt2e_simulator(
    model: nn.Module,
    calibration: Sequence[torch.Tensor],
    images: torch.Tensor,
    quantizer: Callable[[Sequence[str]], Any],
) -> Simulator:
    """PT2E simulated int8 with a runtime's quantizer (``quantizer(float_modules)``); the model is exported once,
    each trial quantizes a copy."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = _export_dynamic_batch(model.eval(), calibration[0])

    def int8_logits(float_modules: list[str]) -> torch.Tensor:
        prepared = prepare_pt2e(copy.deepcopy(graph), quantizer(float_modules))
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
            return convert_pt2e(prepared)(images)

    return int8_logits


def top1_percent(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


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


def fold_batchnorms(model: nn.Module, modules: Sequence[str]) -> nn.Module:
    """A copy of ``model`` in which every Conv2d-BatchNorm2d pair inside ``modules`` is folded into one conv.

    QAT's prepare rewrites every conv-BN pair of the graph into its simulated-fold pattern, and convert folds back
    only the pairs it quantized: a pair left in float stayed a conv on a weight computed in the graph, which
    ExecuTorch's XNNPACK partitioner does not delegate (EfficientNet-Lite0 with its stem in float ran 3.4x slower,
    RESULTS.md#export_hymenoptera_amd). Folding first is exact while BN is on its running statistics, as QAT fine-tunes
    by default.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for name in modules:
        for block in [m for m in model.get_submodule(name).modules() if isinstance(m, nn.Sequential)]:
            for index in range(len(block) - 1):
                conv, norm = block[index], block[index + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    block[index], block[index + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return model


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
    freeze_bn: bool = True,
    loss_fn: engine.LossFn | None = None,
) -> nn.Module:
    """Quantization-aware fine-tuning: fake-quantized training graph trained with the train command's loop.

    ``freeze_bn`` fine-tunes with BatchNorm on its running statistics (and dropout off), as torchvision's QAT
    recipe does after its first epochs: the simulated BN fold then matches the fold of the converted graph.
    ``loss_fn`` (``engine.train_one_epoch``'s) defaults to cross-entropy on the labels."""
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
            (move_exported_model_to_train if mode and not freeze_bn else move_exported_model_to_eval)(self.graph)
            return self

    graph = _export_dynamic_batch(copy.deepcopy(model).train(), example)  # export shares the weights
    prepared = TrainModeSwitch(prepare_qat_pt2e(graph, quantizer))
    optimizer = engine.build_optimizer(prepared, optim)
    scheduler = engine.build_scheduler(optimizer, optim, epochs, steps_per_epoch)
    loss_fn = loss_fn or engine.cross_entropy_loss(label_smoothing)
    for epoch in range(epochs):
        engine.train_one_epoch(prepared, train_loader, optimizer, scheduler, loss_fn, epoch=epoch)
    prepared.train(False)
    return without_unused_tensors(convert_pt2e(prepared.graph, fold_quantize=fold_quantize))
