"""int8 top-1 through ExecuTorch with XNNPACK's own PT2E quantizer against mobiforge's, which quantizes each ReLU6
after the conv it clamps (``quantize.annotate_fused_clamps``), on the same checkpoint, calibration and val images.

XNNPACK's quantizer fuses ReLU into the conv before it but not ReLU6 (hardtanh): it observes the conv's raw output,
so a ReLU6 network (MobileNetV2, EfficientNet-Lite) spends its int8 steps on the pre-activation range the clamp
throws away.

    python -m benchmarks.relu6_fusion runs/relu6/student.pt --data runs/proxy-cifar224 --val-images 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.results import write_section
from mobiforge.backends.executorch import ExecuTorch, xnnpack_quantizer
from mobiforge.checkpoint import Checkpoint
from mobiforge.export import ExportConfig, load_export_data
from mobiforge.quantize import ptq_pt2e, top1_percent


def xnnpack_own_quantizer() -> object:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def runtime_top1(path: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    run = ExecuTorch().runner(path, threads=2)
    logits = torch.cat([torch.from_numpy(np.asarray(run(batch.numpy()))) for batch in images.split(1)])
    return top1_percent(logits, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-images", type=int, default=None, help="evenly spaced; default all")
    parser.add_argument("--calibration-images", type=int, default=256)
    args = parser.parse_args()

    checkpoint = Checkpoint.load(args.checkpoint)
    config = ExportConfig(
        checkpoint=args.checkpoint, int8="ptq", data=args.data, val_images=args.val_images,
        calibration_images=args.calibration_images,
    )  # fmt: skip
    data = load_export_data(checkpoint, config)
    model = checkpoint.model().eval()
    with torch.no_grad():
        fp32 = top1_percent(model(data.val_images), data.val_labels)
    rows = [f"| fp32 PyTorch | {fp32:.2f}% | | |"]
    for name, quantizer in (("XNNPACK's quantizer", xnnpack_own_quantizer()), ("mobiforge", xnnpack_quantizer())):
        started = time.time()
        graph = ptq_pt2e(model, quantizer, data.calibration)
        with tempfile.TemporaryDirectory() as scratch:
            path = ExecuTorch().write(graph, data.val_images[:1], Path(scratch) / "model.pte")
            top1 = runtime_top1(path, data.val_images, data.val_labels)
            size = path.stat().st_size
        rows.append(f"| int8, {name} | {top1:.2f}% | {fp32 - top1:+.2f} | {size / 1e6:.3f} MB |")
        print(f"{name}: top-1 {top1:.2f}% (fp32 {fp32:.2f}%), {size / 1e6:.3f} MB, {time.time() - started:.0f} s")
    spec = checkpoint.spec or {}
    body = "\n".join(
        [
            "## int8 with ReLU6 quantized after its conv (ExecuTorch)",
            "",
            f"Checkpoint: `{spec.get('name', checkpoint.model().__class__.__name__)}` "
            f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), {len(data.val_labels)} val images "
            f"of `{args.data}`, {args.calibration_images} calibration images; top-1 through the ExecuTorch runtime.",
            "",
            "| model | val top-1 | drop (points) | file |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    write_section("relu6_fusion", body)


if __name__ == "__main__":
    main()
