"""How ship's cost grows with the folder: CIFAR-10 at 224 px from 1,000, 5,000, 20,000 and 50,000 training images,
each shipped in the same budget (issue 47). Per size: the time of each stage, the images and views each rung and
student trained on, and the shipped top-1.

    python -m benchmarks.cost_growth [--sizes 1000,5000,20000] [--budget 30] [--shared ../shared/datasets]
        [--scratch /tmp/cost-growth]

Each size's folder links the first n/10 training photos of every class of the battery's 224 px build (the 1,000
test photos are the val split of every size), and is shipped by ``mobiforge ship`` in a fresh process, as the
battery runs its rows. Each size is recorded as ``cost_growth_<n>`` when it ends; the summary table
(``cost_growth``) is written from every size's record, the 50,000 row from the battery's ``large_folder`` record
where this run did not measure it (the same folder, command and budget).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import battery
from benchmarks.results import record_path, write_section

LARGE_FOLDER_RECORD = "battery_large_folder"


def linked_folder(full: Path, folder: Path, images: int) -> Path:
    """``folder/{train,test}/<class>/`` linking the first ``images / classes`` train photos of each class of ``full``
    and all its test photos."""
    classes = len([path for path in (full / "train").iterdir() if path.is_dir()])
    for split, count in (("train", images // classes), ("test", None)):
        for class_dir in sorted((full / split).iterdir()):
            target = folder / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted(class_dir.iterdir())[:count]:
                link = target / source.name
                if not link.exists():
                    link.symlink_to(source.resolve())
    return folder


def size_body(images: int, f: dict[str, Any]) -> str:
    lines = [
        f"## Ship's cost growth: CIFAR-10 at 224 px, {images:,} train photos, {f['budget_s'] / 60:g}-minute budget",
        "",
        f"Outcome: {'shipped' if f['shipped'] else 'nothing shipped'}; top-1 in the runtime "
        f"{battery._value(f['top1_runtime'], '{:.2f}%')} ({battery._value(f['candidate'], '{}')}), "
        f"{f['wall_s'] / 60:.1f} min.",
        "",
        "| trained | images | views | epochs | seconds | val top-1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in f["trained_on"]:
        lines.append(
            f"| {row['what']} | {battery._value(row['images'], '{:,}')} | {battery._value(row['views'], '{}')} | "
            f"{battery._value(row.get('epochs'), '{}')} | {battery._value(row['seconds'], '{:.0f}')} | "
            f"{battery._value(row['top1'], '{:.2f}%')} |"
        )
    lines += ["", "Stages (s): " + ", ".join(f"{name} {sec:g}" for name, sec in f["stages_s"].items())]
    return "\n".join(lines)


def run_size(full: Path, scratch: Path, images: int, budget_min: float) -> dict[str, Any]:
    data = linked_folder(full, scratch / "data" / f"cifar224-{images}", images)
    row = battery.Row(f"cost_{images}", f"CIFAR-10 at 224 px: {images:,}", budget_min, "full", "ships",
                      lambda _: str(data), lambda out: out.shipped)  # fmt: skip
    work = scratch / "runs" / str(images)
    work.mkdir(parents=True, exist_ok=True)
    print(f"cost growth: {images} images, {budget_min:g} min", flush=True)
    out = battery.run_row(row, str(data), work)
    f = battery.figures(row, out, str(data), 0, scratch)
    f["images"] = images
    f["trained_on"] = battery.trained_on(out.state)
    write_section(f"cost_growth_{images}", size_body(images, f), f)
    print(f"cost growth: {images}: {battery._value(out.top1, '{:.2f}%')} in {out.wall_s / 60:.1f} min", flush=True)
    return f


def recorded(name: str) -> dict[str, Any] | None:
    path = record_path(name)
    return json.loads(path.read_text()) if path.exists() else None


def summary_rows(sizes: list[int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(record, figures) per size: the size's own record, else (50,000) the battery's large-folder row."""
    rows = []
    for images in sizes:
        record = recorded(f"cost_growth_{images}")
        if record is None and images == 50000 and (large := recorded(LARGE_FOLDER_RECORD)) is not None:
            record = {**large, "figures": {**large["figures"], "images": 50000}}
        if record is not None:
            rows.append((record, record["figures"]))
    return rows


def stage(f: dict[str, Any], prefix: str) -> float:
    return sum(sec for name, sec in f["stages_s"].items() if name == prefix or name.startswith(prefix + ":"))


def summary_body(rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    lines = [
        "## Ship's cost growth: CIFAR-10 at 224 px from 1,000 to 50,000 train photos, same budget",
        "",
        "Each size shipped by `mobiforge ship` in a fresh process with a 30-minute budget, its val split the same "
        "1,000 test photos. Stage times in seconds; images x views: what the teacher's rungs and the shipped "
        "student trained on (views: cached views of each image). Per-size details: the `cost_growth_<n>` records.",
        "",
        "| train photos | survey + checks | search | teacher | students | exports | web + Core ML | wall | "
        "teacher: images x views | student: images x views | shipped top-1 | commit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for record, f in rows:
        trained = f.get("trained_on") or []
        teacher = "; ".join(_used(r) for r in trained if r["what"].startswith("teacher"))
        student = "; ".join(_used(r) for r in trained if not r["what"].startswith("teacher"))
        lines.append(
            f"| {f['images']:,} | {stage(f, 'survey') + stage(f, 'health'):.0f} | {stage(f, 'search'):.0f} | "
            f"{stage(f, 'teacher'):.0f} | {stage(f, 'train'):.0f} | {stage(f, 'export'):.0f} | "
            f"{stage(f, 'web') + stage(f, 'coreml'):.0f} | {f['wall_s'] / 60:.1f} min | {teacher or '—'} | "
            f"{student or '—'} | {battery._value(f['top1_runtime'], '{:.2f}%')} | {record.get('commit')} |"
        )
    return "\n".join(lines)


def _used(row: dict[str, Any]) -> str:
    images = battery._value(row.get("images"), "{:,}")
    return f"{row['what'].split(': ', 1)[-1]} {images} x {battery._value(row.get('views'), '{}')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000,50000", help="comma-separated train photo counts")
    parser.add_argument("--budget", type=float, default=30.0, help="minutes per size")
    parser.add_argument("--shared", default=str(battery.SHARED))
    parser.add_argument("--scratch", default="/tmp/cost-growth")
    parser.add_argument("--summary-only", action="store_true", help="write the summary from the recorded sizes")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    scratch = Path(args.scratch)
    if not args.summary_only:
        battery.SHARED = Path(args.shared)
        full = Path(battery.large_folder(scratch / "data"))
        for images in sizes:
            run_size(full, scratch, images, args.budget)
    rows = summary_rows(sorted({*sizes, 1000, 5000, 20000, 50000}))
    write_section("cost_growth", summary_body(rows), {"sizes": [f["images"] for _, f in rows]})


if __name__ == "__main__":
    main()
