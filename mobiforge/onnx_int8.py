"""ONNX Runtime's static int8 quantization (QDQ, per-channel weights): the exporter's int8 ONNX files
(``backends.onnx``) and the int8 trunk of the feature cache (``trunk``) both go through it.
"""

from __future__ import annotations

import ast
import functools
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mobiforge.errors import MobiforgeError, missing


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


@functools.cache
def cpu_needs_reduce_range() -> bool:  # the CPU does not change while the process runs: read its flags once
    return onnx_needs_reduce_range()
