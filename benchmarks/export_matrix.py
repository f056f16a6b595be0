"""fp32 vs int8 PTQ vs int8 QAT in ExecuTorch, LiteRT and ONNX Runtime, for one checkpoint, measured in each runtime.

Every artifact is written by `mobiforge.export.export_checkpoint` and verified there: top-1 through the runtime on
the val split, agreement with PyTorch fp32, file size, batch-1 latency (median) on 1 and 2 threads. The table and
the issue-6 targets (PTQ within 1.0 point of fp32, QAT within 0.5, int8 files <= 0.3x fp32, int8 faster than fp32
in the same runtime, the fastest runtime's fp32 at least 2x better than PyTorch eager) go to benchmarks/RESULTS.md.

    python -m benchmarks.export_matrix --checkpoint runs/NAME/best.pt --section export_cifar10 [--qat-images 5000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.backend_api import BACKENDS
from mobiforge.checkpoint import load_checkpoint
from mobiforge.errors import MobiforgeError
from mobiforge.export import ArtifactReport, ExportConfig, export_checkpoint

ONNX_QAT = "n/a (ONNX Runtime quantizes fp32 graphs only; `--int8 qat` stops with that message)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--section", required=True)
    parser.add_argument("--out-dir", default=None, help="artifacts (default: next to the checkpoint)")
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--qat-images", type=int, default=None)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument("--qat-freeze-bn", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--qat-distill", type=float, default=0.5, help="weight of the fp32 model's soft targets")
    parser.add_argument("--formats", nargs="+", default=list(BACKENDS))
    parser.add_argument("--int8-modes", nargs="+", default=["fp32", "ptq", "qat"], help="which to (re)run")
    parser.add_argument(
        "--ptq-max-drop", type=float, default=1.0, help="PTQ gate; an artifact over it retries with float layers"
    )
    parser.add_argument(
        "--qat-max-drop", type=float, default=0.5, help="QAT gate (the issue's QAT target), same retry as PTQ's"
    )
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the JSON reports only")
    args = parser.parse_args()

    checkpoint = Path(args.checkpoint)
    out_dir = Path(args.out_dir) if args.out_dir else checkpoint.parent / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = load_checkpoint(checkpoint)["spec"]
    reports, started = {}, time.time()
    for fmt in [] if args.table_only else args.formats:
        for label in args.int8_modes:
            int8 = None if label == "fp32" else label
            config = ExportConfig(
                str(checkpoint),
                fmt,
                int8,
                out=str(out_dir / f"{checkpoint.stem}-{label}{BACKENDS[fmt].suffix}"),
                val_images=args.val_images,
                calibration_images=args.calibration_images,
                qat_images=args.qat_images,
                qat_epochs=args.qat_epochs,
                qat_lr=args.qat_lr,
                qat_freeze_bn=args.qat_freeze_bn,
                qat_distill=args.qat_distill,
                max_drop={"ptq": args.ptq_max_drop, "qat": args.qat_max_drop}.get(label),
            )
            try:
                report = export_checkpoint(config)
            except MobiforgeError as error:
                print(f"{fmt} {label}: {error}", flush=True)
                continue
            print(
                f"{fmt} {label}: top-1 {report.top1:.2f}% (fp32 PyTorch {report.torch_fp32_top1:.2f}%), "
                f"{report.file_bytes / 1e6:.2f} MB, {report.latency_ms['1']['median']:.2f} ms",
                flush=True,
            )

    # The table holds every report found next to the artifacts: this run's formats and those of earlier runs of
    # this script with other --formats (each JSON records its own measurement).
    for fmt in BACKENDS:
        for label in ("fp32", "ptq", "qat"):
            path = out_dir / f"{checkpoint.stem}-{label}{BACKENDS[fmt].suffix}.json"
            if path.is_file():
                reports[(fmt, label)] = ArtifactReport.from_json(path)
    first = next(iter(reports.values()))
    lines = [
        f"## Export and int8 of `{spec['name']}` ({checkpoint.parent.name}): every artifact run in its own runtime",
        "",
        f"Val images: {first.images}; PyTorch fp32 top-1 {first.torch_fp32_top1:.2f}%. int8 calibration: "
        f"{args.calibration_images} training images; QAT: {args.qat_epochs} epoch(s) on "
        f"{args.qat_images or 'all'} training images, SGD lr {args.qat_lr} cosine"
        f"{', BN statistics frozen' if args.qat_freeze_bn else ''}"
        f"{f', distilled from the fp32 model (alpha {args.qat_distill})' if args.qat_distill else ''}. "
        f"Gates: PTQ {args.ptq_max_drop}, QAT {args.qat_max_drop} points; an int8 "
        "artifact over its gate is retried with its most sensitive layer groups left in float (the better one "
        "through the runtime is kept; last column). PT2E reference: the simulated-int8 model the ExecuTorch and "
        "LiteRT files were converted from, on the same images (- where there is none, or the report predates it). "
        "Latency: batch 1, median (p90) "
        "in the runtime; PyTorch eager fp32 in the same run for comparison. Each row is read from the JSON report "
        f"that `mobiforge export` wrote next to its artifact in `{out_dir}` (runs of this script with other "
        "`--formats`/`--int8-modes` add or replace rows; each JSON has its own config).",
        "",
        "| runtime | precision | top-1 | PT2E reference top-1 | drop vs fp32 | agreement | file | size vs fp32 "
        "| 1 thread | 2 threads | left in float |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (fmt, label), report in reports.items():
        fp32 = reports.get((fmt, "fp32"))
        ratio = f"{report.file_bytes / fp32.file_bytes:.2f}x" if fp32 else "-"
        lat = report.latency_ms
        reference = "-" if report.reference_top1 is None else f"{report.reference_top1:.2f}%"
        lines.append(
            f"| {fmt} | {label} | {report.top1:.2f}% | {reference} | {report.drop:+.2f} | {report.agreement:.1f}% "
            f"| {report.file_bytes / 1e6:.2f} MB | {ratio} | {lat['1']['median']:.2f} ({lat['1']['p90']:.2f}) ms "
            f"| {lat['2']['median']:.2f} ({lat['2']['p90']:.2f}) ms | {', '.join(report.float_modules) or '-'} |"
        )
    if (out_dir / f"{checkpoint.stem}-fp32.onnx").is_file():
        lines.append(f"| onnx | qat | {ONNX_QAT} | | | | | | | | |")
    eager = first.torch_latency_ms
    fp32_runs = {fmt: r for (fmt, label), r in reports.items() if label == "fp32"}
    fastest = min(fp32_runs.items(), key=lambda item: item[1].latency_ms["1"]["median"])
    speedup = eager["1"]["median"] / fastest[1].latency_ms["1"]["median"]
    lines += [
        "",
        f"PyTorch eager fp32 (channels_last): {eager['1']['median']:.2f} ms (1 thread), "
        f"{eager['2']['median']:.2f} ms (2 threads). Fastest fp32 runtime: {fastest[0]}, "
        f"{speedup:.1f}x faster than eager on 1 thread (target 2x: {'met' if speedup >= 2 else 'MISSED'}).",
        "",
        "Targets: "
        + "; ".join(_verdicts(reports))
        + ("." if args.table_only else f". Whole script: {(time.time() - started) / 60:.1f} min."),
    ]
    write_section(args.section, "\n".join(lines))
    print("\n".join(lines))


def _verdicts(reports: dict) -> list[str]:
    out = []
    for (fmt, label), report in reports.items():
        if label == "fp32":
            continue
        fp32 = reports.get((fmt, "fp32"))
        limit = 1.0 if label == "ptq" else 0.5
        ok_drop = report.drop <= limit
        ok_size = fp32 is not None and report.file_bytes <= 0.3 * fp32.file_bytes
        ok_speed = fp32 is not None and report.latency_ms["1"]["median"] < fp32.latency_ms["1"]["median"]
        out.append(
            f"{fmt} {label}: drop {'met' if ok_drop else 'MISSED'} (<= {limit}), size {'met' if ok_size else 'MISSED'}"
            f" (<= 0.3x), faster than fp32 {'yes' if ok_speed else 'NO'}"
        )
    return out


if __name__ == "__main__":
    main()
