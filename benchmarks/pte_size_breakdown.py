"""Where the bytes of an ExecuTorch (XNNPACK) .pte go, fp32 against int8, for one exported checkpoint.

Issue 6 asks for int8 files at most 0.3x the fp32 ones. Per-channel int8 stores, beside one byte per weight, three
4-byte numbers per output channel (the weight scale, the int32 bias and the bias scale: XNNPACK's int32 bias is
per-channel quantized too); a narrow network has few weights per channel, so these and the fixed parts of the file
(the XNNPACK graph, the program) weigh more against its weights. This script reads the files `mobiforge export`
wrote and splits them into those parts, next to the counts of the model's weights and output channels.

    python benchmarks/pte_size_breakdown.py --checkpoint runs/NAME/best.pt --fp32 runs/NAME/export/best-fp32.pte \
        --int8 runs/NAME/export/best-ptq.pte
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--section", default="pte_size_breakdown")
    args = parser.parse_args()
    weights, channels = weight_counts(model_from_checkpoint(args.checkpoint))
    fp32, int8 = pte_parts(args.fp32), pte_parts(args.int8)
    kib = 1024

    def row(label: str, key: str) -> str:
        return f"| {label} | {fp32[key] / kib:.1f} | {int8[key] / kib:.1f} | {int8[key] / fp32['file']:.3f}x |"

    expected = weights + 12 * channels
    lines = [
        f"## Bytes of the ExecuTorch files of `{args.checkpoint.parent.name}`: fp32 against int8",
        "",
        f"Model: {weights:,} conv/linear weights in {channels:,} output channels ({weights / channels:.0f} weights "
        f"per channel). Files: `{args.fp32.name}`, `{args.int8.name}`.",
        "",
        "| part | fp32 (KiB) | int8 (KiB) | int8 part / fp32 file |",
        "|---|---:|---:|---:|",
        row("constant data (weights, biases, scales)", "constants"),
        row("XNNPACK graph", "graph"),
        row("program and container", "rest"),
        row("file", "file"),
        "",
        f"int8 constant data expected from the counts: {weights:,} weight bytes + 12 bytes x {channels:,} channels "
        f"(weight scale, int32 bias, bias scale) = {expected / kib:.1f} KiB, measured {int8['constants'] / kib:.1f} "
        f"KiB. The weight bytes alone are {weights / fp32['file']:.3f}x the fp32 file; with the per-channel numbers "
        f"{expected / fp32['file']:.3f}x.",
    ]
    print("\n".join(lines))
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
