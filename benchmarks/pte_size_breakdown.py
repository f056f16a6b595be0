"""Where the bytes of an ExecuTorch (XNNPACK) .pte or a LiteRT .tflite go, fp32 against int8, for one checkpoint.

Issue 6 asks for int8 files at most 0.3x the fp32 ones. Per-channel int8 stores, beside one byte per weight, three
4-byte numbers per output channel (the weight scale, the int32 bias and the bias scale: XNNPACK's int32 bias is
per-channel quantized too); a narrow network has few weights per channel, so these and the fixed parts of the file
(the XNNPACK graph, the program) weigh more against its weights. LiteRT's flatbuffer keeps the quantization
parameters beside the tensors instead: a float32 scale and an int64 zero point per channel, for the weights and for
the int32 biases. This script reads the files `mobiforge export` wrote and splits them into those parts, next to the
counts of the model's weights and output channels.

    python -m benchmarks.pte_size_breakdown --checkpoint runs/NAME/best.pt --fp32 runs/NAME/export/best-fp32.pte \
        --int8 runs/NAME/export/best-ptq.pte     # or the two .tflite files
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from benchmarks.results import write_section
from mobiforge.checkpoint import model_from_checkpoint


def weight_counts(model: nn.Module) -> tuple[int, int]:
    """Conv/linear weights and output channels (BatchNorm folds into the convs)."""
    layers = [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    return sum(layer.weight.numel() for layer in layers), sum(layer.weight.shape[0] for layer in layers)


def pte_parts(path: Path) -> dict[str, int]:
    """Bytes of the file: constant data (weights, biases, scales), inline XNNPACK graph blobs, everything else."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    data = path.read_bytes()
    pte = deserialize_pte_binary(data)
    constants = sum(len(buffer) for buffer in pte.named_data.buffers) if pte.named_data else 0
    constants += sum(len(buffer.storage) for buffer in pte.program.constant_buffer)
    graphs = sum(len(blob.data) for blob in pte.program.backend_delegate_data)
    return {"file": len(data), "constants": constants, "graph": graphs, "rest": len(data) - constants - graphs}


def tflite_parts(path: Path) -> dict[str, int]:
    """Bytes of the file: tensor buffers (weights, biases), quantization parameters, everything else."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    buffers = sum(len(buffer.data) for buffer in model.buffers if buffer.data is not None)
    quantized = [tensor.quantization for graph in model.subgraphs for tensor in graph.tensors if tensor.quantization]
    scales = sum(len(q.scale) for q in quantized if q.scale is not None)
    zero_points = sum(len(q.zeroPoint) for q in quantized if q.zeroPoint is not None)
    params = 4 * scales + 8 * zero_points  # the schema's scale: [float], zero_point: [long]
    return {"file": len(data), "constants": buffers, "graph": params, "rest": len(data) - buffers - params,
            "scales": scales}  # fmt: skip


PARTS = {
    ".pte": ("ExecuTorch", pte_parts, "XNNPACK graph", "program and container"),
    ".tflite": ("LiteRT", tflite_parts, "quantization parameters (scale, zero point)", "graph and container"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--section", default="pte_size_breakdown")
    args = parser.parse_args()
    weights, channels = weight_counts(model_from_checkpoint(args.checkpoint))
    runtime, parts, graph_label, rest_label = PARTS[args.int8.suffix]
    fp32, int8 = parts(args.fp32), parts(args.int8)
    kib = 1024

    def row(label: str, key: str) -> str:
        return f"| {label} | {fp32[key] / kib:.1f} | {int8[key] / kib:.1f} | {int8[key] / fp32['file']:.3f}x |"

    lines = [
        f"## Bytes of the {runtime} files of `{args.checkpoint.parent.name}`: fp32 against int8",
        "",
        f"Model: {weights:,} conv/linear weights in {channels:,} output channels ({weights / channels:.0f} weights "
        f"per channel). Files: `{args.fp32.name}`, `{args.int8.name}`.",
        "",
        "| part | fp32 (KiB) | int8 (KiB) | int8 part / fp32 file |",
        "|---|---:|---:|---:|",
        row("constant data (weights, biases" + (", scales)" if runtime == "ExecuTorch" else ")"), "constants"),
        row(graph_label, "graph"),
        row(rest_label, "rest"),
        row("file", "file"),
        "",
        *_explained(runtime, weights, channels, fp32, int8),
    ]
    print("\n".join(lines))
    write_section(args.section, "\n".join(lines))


def _explained(runtime: str, weights: int, channels: int, fp32: dict[str, int], int8: dict[str, int]) -> list[str]:
    kib = 1024
    if runtime == "ExecuTorch":
        expected = weights + 12 * channels
        return [
            f"int8 constant data expected from the counts: {weights:,} weight bytes + 12 bytes x {channels:,} "
            f"channels (weight scale, int32 bias, bias scale) = {expected / kib:.1f} KiB, measured "
            f"{int8['constants'] / kib:.1f} KiB. The weight bytes alone are {weights / fp32['file']:.3f}x the fp32 "
            f"file; with the per-channel numbers {expected / fp32['file']:.3f}x."
        ]
    return [
        f"int8 buffers: {weights:,} weight bytes + 4 bytes x {channels:,} int32 biases = "
        f"{(weights + 4 * channels) / kib:.1f} KiB expected, {int8['constants'] / kib:.1f} KiB measured "
        f"({int8['constants'] / fp32['file']:.3f}x the fp32 file). Quantization parameters: {int8['scales']:,} "
        f"per-channel entries (weights' and biases' channels, activations one each) at 12 bytes (float32 scale, "
        f"int64 zero point) = {int8['graph'] / fp32['file']:.3f}x the fp32 file."
    ]


if __name__ == "__main__":
    main()
