"""LiteRT int8 top-1 through the LiteRT runtime with each PT2E annotator, on the same checkpoint, calibration and
val images: ExecuTorch XNNPACK's quantizer (what LiteRT used until issue 45), litert-torch's own as it comes, and
litert-torch's own with mobiforge's ReLU6 fusion (``quantize.mobilenet_quantizer``, what LiteRT uses now).

litert-torch converts all three (told by its own quantizer config that the graph is statically quantized); only
the annotation of the graph differs. With ``--int8 qat`` each fine-tunes the same images first (export's QAT);
LiteRT's QAT folds every BatchNorm first (litert-torch's own conv-BN QAT patterns fail on torch 2.14).

    python -m benchmarks.litert_annotators runs/rps-lite0/best.pt --data ../shared/datasets/rps
    python -m benchmarks.litert_annotators runs/cifar-mnv2/last.pt --data ../shared/datasets/cifar10 --int8 qat \
        --qat-images 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.results import write_section
from mobiforge.backends.executorch import xnnpack_quantizer
from mobiforge.backends.litert import LiteRT, litert_own_quantizer, litert_quantizer
from mobiforge.checkpoint import Checkpoint
from mobiforge.export import ExportConfig, load_export_data, qat_model
from mobiforge.quantize import ptq_pt2e, top1_percent


def litert_as_it_comes(qat: bool) -> Any:
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


# name -> (the quantizer for qat, whether QAT folds every BatchNorm first)
ANNOTATORS: dict[str, tuple[Callable[[bool], Any], bool]] = {
    "ExecuTorch XNNPACK's + ReLU6 fusion (before)": (lambda qat: xnnpack_quantizer(qat=qat), False),
    "litert-torch's own, as it comes": (litert_as_it_comes, False),
    "litert-torch's own + ReLU6 fusion (now)": (lambda qat: litert_quantizer(qat=qat), True),
}


def quantized(model: torch.nn.Module, name: str, data: Any, config: ExportConfig) -> torch.nn.Module:
    quantizer, fold_every_bn = ANNOTATORS[name]
    if config.int8 == "ptq":
        return ptq_pt2e(model, quantizer(False), data.calibration, fold_quantize=False)
    return qat_model(model, quantizer(True), data, config, False, fold_every_bn)


def runtime_logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    run = LiteRT().runner(path, threads=2)
    return torch.cat([torch.from_numpy(np.asarray(run(batch.numpy()))) for batch in images.split(1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-images", type=int, default=None, help="evenly spaced; default all")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--int8", choices=("ptq", "qat"), default="ptq")
    parser.add_argument("--qat-images", type=int, default=ExportConfig.qat_images)
    args = parser.parse_args()

    checkpoint = Checkpoint.load(args.checkpoint)
    config = ExportConfig(
        checkpoint=args.checkpoint, int8=args.int8, data=args.data, val_images=args.val_images,
        calibration_images=args.calibration_images, qat_images=args.qat_images,
    )  # fmt: skip
    data = load_export_data(checkpoint, config)
    model = checkpoint.model().eval()
    with torch.no_grad():
        fp32_logits = model(data.val_images)
    fp32 = top1_percent(fp32_logits, data.val_labels)
    rows = [f"| fp32 PyTorch | {fp32:.2f}% | | | |"]
    figures: dict[str, Any] = {"fp32_top1": fp32}
    for name in ANNOTATORS:
        started = time.time()
        try:
            graph = quantized(model, name, data, config)
        except Exception as error:  # litert-torch's own QAT patterns on this torch: recorded, not hidden
            rows.append(f"| int8 {args.int8}, {name} | fails: {type(error).__name__}: {str(error)[:90]} | | | |")
            print(f"{name}: {type(error).__name__}: {error}")
            continue
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "model.tflite"
            LiteRT().write(graph, data.val_images[:1], path, None, litert_own_quantizer(args.int8 == "qat"))
            logits = runtime_logits(path, data.val_images)
            size = path.stat().st_size
        top1 = top1_percent(logits, data.val_labels)
        agreement = 100.0 * (logits.argmax(1) == fp32_logits.argmax(1)).float().mean().item()
        rows.append(
            f"| int8 {args.int8}, {name} | {top1:.2f}% | {fp32 - top1:+.2f} | {agreement:.1f}% | {size / 1e6:.3f} MB |"
        )
        figures[name] = {"top1": top1, "agreement": agreement, "bytes": size}
        seconds = time.time() - started
        print(f"{name}: top-1 {top1:.2f}% (fp32 {fp32:.2f}%), agreement {agreement:.1f}%, {seconds:.0f} s")
    spec = checkpoint.spec or {}
    body = "\n".join(
        [
            "## LiteRT int8: which PT2E annotator",
            "",
            f"Checkpoint: `{spec.get('name', model.__class__.__name__)}` "
            f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), {len(data.val_labels)} val images "
            f"of `{Path(args.data).name}`, {args.calibration_images} calibration images"
            + (f", QAT 1 epoch on {args.qat_images or 'all'} training images" if args.int8 == "qat" else "")
            + "; top-1 through the LiteRT "
            "runtime (ai-edge-litert), agreement with fp32 PyTorch's top-1.",
            "",
            "| annotator | val top-1 | drop (points) | agreement | file |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    write_section(f"litert_annotators_{spec.get('name', 'model')}_{args.int8}", body, figures)


if __name__ == "__main__":
    main()
