"""What the commands print for people: rich tables and verdict lines (``--json`` prints the data instead)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mobiforge.units import format_bytes


def _console() -> Console:
    """Class names, run names and paths are the user's text: printed as they are, never read as rich markup."""
    return Console(markup=False, highlight=False)


def _verdict(passed: bool) -> Text:
    return Text("PASS", style="green") if passed else Text("FAIL", style="red")


def run_result(result: Any) -> int:
    """The last epoch of a train or distill run; the exit status (130 when interrupted)."""
    if not result.history:
        return 130 if result.interrupted else 0
    last = result.last
    print(
        f"done: val top-1 {last['val_top1']:.2f}% (best {result.best_top1:.2f}%), top-5 {last['val_top5']:.2f}% "
        f"after {last['epoch']} epochs; checkpoints in {result.run_dir}"
    )
    return 130 if result.interrupted else 0


def prune_table(checkpoint: str, result: Any, finetune_epochs: int) -> None:
    table = Table(title=f"pruning {checkpoint} -> {result.checkpoint}")
    for column in ("model", "params", "MACs", "latency (ms, batch 1)", "val top-1"):
        table.add_column(column, justify="right" if column != "model" else "left")
    rows = [("original", result.before), ("pruned", result.pruned)]
    if result.after is not None:
        rows.append((f"pruned + {finetune_epochs} epoch fine-tuning", result.after))
    for label, figures in rows:
        table.add_row(
            label,
            f"{figures.params / 1e6:.3f}M",
            f"{figures.macs / 1e6:.1f}M",
            f"{figures.latency_ms:.2f}",
            f"{figures.top1:.2f}%" if figures.top1 is not None else "-",
        )
    _console().print(table)


def export_report(report: Any) -> None:
    table = Table(title=f"{report.path} ({report.format}, {report.precision}), {report.images} val images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    where = f"in {report.format}" if report.ran_in_runtime else "in PyTorch as the file computes (not run here)"
    rows = [
        ("file size", format_bytes(report.file_bytes)),
        (f"top-1 {where}", f"{report.top1:.2f}%"),
        ("top-1 PyTorch fp32", f"{report.torch_fp32_top1:.2f}%"),
        ("top-1 agreement with PyTorch", f"{report.agreement:.2f}%"),
        ("max abs logit difference", f"{report.max_abs_logit_diff:.4g}"),
    ]
    if report.float_modules:
        rows.append(("left in float", ", ".join(report.float_modules)))
    if report.reference_top1 is not None:
        rows.append(("top-1 PT2E reference (simulated int8)", f"{report.reference_top1:.2f}%"))
    if report.reference_max_abs_diff is not None:
        rows.append(("max abs diff vs PT2E reference", f"{report.reference_max_abs_diff:.4g}"))
    if report.sdk_top1 is not None:
        agreement = f"{report.sdk_top1:.2f}% (same top-1 as {report.format} on {report.sdk_agreement:.2f}%)"
        rows.append((f"top-1 in {report.sdk}", agreement))
        if report.sdk_app_top1 is not None:
            rows.append(("top-1 as an app runs it", f"{report.sdk_app_top1:.2f}% (full-size images, the SDK resizes)"))
    elif report.sdk:
        rows.append(("mobile SDK", report.sdk))
    for threads, stats in report.latency_ms.items():
        eager = report.torch_latency_ms[threads]
        rows.append(
            (
                f"latency batch 1, {threads} thread(s): median / p90",
                f"{stats['median']:.2f} / {stats['p90']:.2f} ms (PyTorch eager {eager['median']:.2f} ms)",
            )
        )
    for label, value in rows:
        table.add_row(label, value)
    console = _console()
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    if report.sdk_clear_disagreements:
        clear = report.sdk_clear_disagreements
        console.print(_verdict(False), f"{report.sdk} disagrees with {report.format} on {clear} images that are not "
                      f"near ties; report: {report.path}.json")  # fmt: skip
    if report.max_drop is not None and report.precision != "fp32":
        console.print(
            _verdict(report.passed),
            f"int8 top-1 drop {report.drop:.2f} points (limit {report.max_drop}{gate_resolution(report)}); "
            f"report: {report.path}.json",
        )


def gate_resolution(report: Any) -> str:
    """On a small val set one image can be worth more than the whole limit: say so, or a one-image flip of a near
    tie reads like a broken quantization."""
    one_image = 100.0 / report.images
    if report.max_drop >= one_image:
        return ""
    return f"; one of {report.images} val images is {one_image:.2f} points here, so the limit allows no net lost image"


def eval_report(checkpoint: str, report: Any) -> None:
    result = report.result
    console = _console()
    console.print(
        f"{checkpoint} on {report.data} [{report.split}], {result.images} images: "
        f"top-1 {result.top1:.2f}%, top-5 {result.top5:.2f}%, loss {result.loss:.4f}"
    )
    table = Table(title="per class")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("top-1", justify="right")
    for name, total, accuracy in zip(report.classes, result.confusion.sum(1).tolist(), result.per_class, strict=True):
        table.add_row(name, str(total), f"{accuracy:.1f}%" if total else "-")
    console.print(table)


def predictions(results: list[dict[str, Any]]) -> None:
    for item in results:
        ranked = ", ".join(f"{entry['class']} {100 * entry['probability']:.1f}%" for entry in item["top"])
        print(f"{item['image']}: {ranked}")


def models_table(rows: list[dict[str, Any]], img_size: int) -> None:
    table = Table(title=f"mobiforge models (MACs at {img_size} px, 1000 classes)")
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for row in rows:
        table.add_row(row["name"], f"{row['params'] / 1e6:.2f}M", f"{row['macs'] / 1e6:.0f}M")
    _console().print(table)


def weights_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="pretrained weights (use --pretrained [TAG]; TAG is the part after the dot)")
    for column in ("weights", "ImageNet top-1", "local file", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["weights"], f"{row['top1']:.1f}", row["available"] or "-", row["source"])
    _console().print(table)


def artifact_profile(report: Any) -> None:
    console = _console()
    latency = report.latency
    console.print(
        f"{report.path} ({report.runtime}): {format_bytes(report.file_bytes)}, input {list(report.input_shape)}, "
        f"{report.threads} thread{'s' if report.threads > 1 else ''}: median {latency.median_ms:.2f} ms, "
        f"p90 {latency.p90_ms:.2f} ms ({latency.runs} runs)"
    )
    budgets(console, report.budgets)


def model_profile(report: Any) -> None:
    table = Table(
        title=f"{report.model} at {report.img_size} px, batch {report.batch_size}, "
        f"{report.threads} thread{'s' if report.threads > 1 else ''}"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    latency = report.latency
    for label, value in (
        ("parameters", f"{report.params / 1e6:.3f}M"),
        ("MACs", f"{report.macs / 1e6:.1f}M"),
        ("fp32 weights", format_bytes(report.fp32_weight_bytes)),
        ("int8 weights", format_bytes(report.int8_weight_bytes)),
        ("serialized (state_dict)", format_bytes(report.serialized_bytes)),
        ("latency median", f"{latency.median_ms:.2f} ms"),
        ("latency p90", f"{latency.p90_ms:.2f} ms"),
        ("timed runs / layout", f"{latency.runs} / {report.layout}"),
        ("peak memory", format_bytes(report.peak_memory_bytes)),
    ):
        table.add_row(label, value)
    console = _console()
    console.print(table)
    budgets(console, report.budgets)


def budgets(console: Console, checks: list[Any]) -> None:
    for check in checks:
        shown = (
            (format_bytes(check.value), format_bytes(check.limit))
            if check.unit == "bytes"
            else (f"{check.value:.2f} ms", f"{check.limit:.2f} ms")
        )
        console.print(_verdict(check.passed), f"{check.name}: {shown[0]} (budget {shown[1]})")
