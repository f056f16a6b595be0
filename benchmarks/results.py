"""Benchmark results as data: every benchmark writes a JSON record under ``benchmarks/results/``, and
``benchmarks/RESULTS.md`` and the README's results table are rendered from the records, never edited by hand.

    python -m benchmarks.results render   # rewrite RESULTS.md and the README block from the records
    python -m benchmarks.results check    # exit 1 when either is out of date (a test runs this too)

A record holds the command that produced it, the commit, the date, the machine (CPU model with its vector flags,
cores, library versions), its content (markdown text and tables, the tables as rows) and its figures. Rerunning a
benchmark into the same record keeps the run before it under ``earlier``: recording one result never removes
another.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RECORDS = BENCHMARKS / "results"
RESULTS = BENCHMARKS / "RESULTS.md"
# Files whose results block (between the markers) is rendered from the battery's records.
TABLE_FILES = [ROOT / "README.md", ROOT / "docs" / "ship.md"]
README_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
HEADER = (
    "# Benchmark results\n\n"
    "Rendered from the records in `benchmarks/results/` by `python -m benchmarks.results render`; do not edit by\n"
    "hand. Every figure here was printed by a script in `benchmarks/`; each section names the command that produced\n"
    "it, the commit, the machine (with the CPU's vector features), the library versions and the date. Rerun the\n"
    "command to reproduce (numbers vary by machine). Commands recorded as `python benchmarks/NAME.py ...` (before\n"
    "2026-12-01) run today, from the repository root, as `python -m benchmarks.NAME ...`. Sections are in the order\n"
    "they were first recorded; cite one as `RESULTS.md#NAME`.\n"
)
# What benchmarks write: excluded when telling whether the code that ran differed from its commit.
RENDERED_PATHS = tuple(f":!{path}" for path in ("benchmarks/results", "benchmarks/RESULTS.md", "benchmarks/reports",
                                                 "README.md", "docs/ship.md"))  # fmt: skip
# The CPU flags that decide which kernels pay off here (int8 dot products, native bf16, AMX tiles).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


# --- the machine and the commit --------------------------------------------------------------------------------


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    except OSError:
        pass
    return model, [flag for flag in VECTOR_FLAGS if flag in flags]


def machine() -> dict[str, Any]:
    """This machine as a record keeps it."""
    import torch
    import torchvision

    import mobiforge
    from mobiforge.engine import cpu_has_native_bf16

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "vector_flags": flags,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "mobiforge": mobiforge.__version__,
    }


def describe_machine(host: dict[str, Any]) -> str:
    if "described" in host:  # recorded before records kept the machine as fields
        return host["described"]
    bf16 = "native bf16" if host["native_bf16"] else "no native bf16"
    flags = ", ".join(host.get("vector_flags") or []) or "no AVX2"
    return (
        f"{host['cpu']} ({host['capability']}, {bf16}; {flags}), {host['cores']} cores visible; Python "
        f"{host['python']}, torch {host['torch']}, torchvision {host['torchvision']}, mobiforge {host['mobiforge']}"
    )


def cpu_label(host: dict[str, Any]) -> str:
    """The CPU and what decides its kernels, short."""
    if "described" in host:
        return host["described"].split(",")[0]
    bf16 = ", native bf16" if host["native_bf16"] else ""
    return f"{host['cpu']} with {host['capability']}{bf16}"


def commit() -> str | None:
    """The short commit of the code that ran, ``+changes`` when the tree differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # the files benchmarks write themselves do not count as changes to the code that ran
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *RENDERED_PATHS],
                               cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def how_run() -> str:
    """``python -m benchmarks.NAME ARGS`` as it was run (the way that works from the repository root)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    run = ["-m", spec.name] if spec is not None else [Path(sys.argv[0]).as_posix()]
    return shlex.join(["python", *run, *sys.argv[1:]])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- markdown content as data ---------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> dict[str, Any]:
    align = ["r" if cell.endswith(":") and not cell.startswith(":") else "l" for cell in _cells(lines[1])]
    return {"columns": _cells(lines[0]), "align": align, "rows": [_cells(line) for line in lines[2:]]}


def _is_rule(line: str) -> bool:
    return bool(re.fullmatch(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?", line.strip()))


def parse_content(markdown: str) -> list[str | dict[str, Any]]:
    """Markdown as blocks: text stays text, each table becomes its columns and rows."""
    lines, blocks, text = markdown.strip("\n").splitlines(), [], []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
            end = i + 2
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            if "\n".join(text).strip():
                blocks.append("\n".join(text).strip("\n"))
            blocks.append(_table(lines[i:end]))
            text, i = [], end
            continue
        text.append(lines[i])
        i += 1
    if "\n".join(text).strip():
        blocks.append("\n".join(text).strip("\n"))
    return blocks


def render_table(table: dict[str, Any]) -> str:
    rule = ["---:" if a == "r" else "---" for a in table["align"]]
    rows = [table["columns"], rule, *table["rows"]]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def render_content(blocks: list[str | dict[str, Any]]) -> str:
    return "\n\n".join(block if isinstance(block, str) else render_table(block) for block in blocks)


# --- records ----------------------------------------------------------------------------------------------------


def record_path(name: str) -> Path:
    if not NAME.match(name):
        raise ValueError(f"record name {name!r}: use lowercase letters, digits and underscores")
    return RECORDS / f"{name}.json"


def load_records() -> list[dict[str, Any]]:
    records = [json.loads(path.read_text()) for path in sorted(RECORDS.glob("*.json"))]
    return sorted(records, key=lambda record: (record.get("first_date", record["date"]), record["name"]))


def record_names() -> set[str]:
    return {path.stem for path in RECORDS.glob("*.json")}


def _same_run(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(old.get(key) == new.get(key) for key in ("content", "figures", "command"))


def write_record(name: str, body: str, figures: dict[str, Any] | None = None) -> Path:
    """Write (or update) the record ``name`` from a benchmark's markdown (its first line ``## Title``) and figures,
    then render RESULTS.md and the README block."""
    title, _, rest = body.strip().partition("\n")
    if not title.startswith("## "):
        title, rest = f"## {name}", body
    record = {
        "name": name,
        "title": title[3:].strip(),
        "command": how_run(),
        "commit": commit(),
        "date": now(),
        "machine": machine(),
        "content": parse_content(rest),
        "figures": figures or {},
    }
    path = record_path(name)
    if path.exists():
        old = json.loads(path.read_text())
        record["first_date"] = old.get("first_date", old["date"])
        record["notes"] = old.get("notes", "")
        earlier = old.pop("earlier", [])
        for key in ("name", "first_date", "notes"):
            old.pop(key, None)
        record["earlier"] = earlier if _same_run(old, record) else [old, *earlier]
    RECORDS.mkdir(exist_ok=True)
    _write_json(path, record)
    render()
    return path


def write_section(name: str, body: str, figures: dict[str, Any] | None = None) -> None:
    """What every benchmark calls: its record, then the rendered files."""
    write_record(name, body, figures)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    partial.replace(path)


# --- rendering --------------------------------------------------------------------------------------------------


def _run_line(run: dict[str, Any]) -> str:
    at = f" · Commit: {run['commit']}" if run.get("commit") else ""
    return f"Command: `{run['command']}`{at} · Machine: {describe_machine(run['machine'])} · Date: {run['date']}"


def render_record(record: dict[str, Any]) -> str:
    parts = [f'<a id="{record["name"]}"></a>', f"## {record['title']}", render_content(record["content"]),
             _run_line(record)]  # fmt: skip
    for run in record.get("earlier", []):
        parts.append(
            f"<details><summary>Earlier run ({run['date']})</summary>\n\n"
            f"{render_content(run['content'])}\n\n{_run_line(run)}\n\n</details>"
        )
    if record.get("notes"):
        parts.append(record["notes"].strip())
    # the markers: where tools (and the before-stop check that no recorded section disappears) find a section
    return f"<!-- {record['name']}:start -->\n" + "\n\n".join(parts) + f"\n<!-- {record['name']}:end -->"


def render_results(records: list[dict[str, Any]]) -> str:
    return HEADER + "".join(f"\n{render_record(record)}\n" for record in records)


def _cell(value: Any, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def _outcome(figures: dict[str, Any]) -> str:
    if figures.get("shipped"):
        return figures.get("candidate") or "shipped"
    error = figures.get("error") or ""
    if ": error:" in error:
        return "refused in one line"
    return "nothing shipped: why in one line" if error.startswith("nothing shipped:") else "nothing shipped"


def render_readme_table(records: list[dict[str, Any]], results_link: str = "benchmarks/RESULTS.md") -> str:
    """The README's results: one row per battery row's latest record."""
    rows = [r for r in records if r.get("figures", {}).get("battery")]
    if not rows:
        return "No battery run is recorded yet: `python -m benchmarks.battery --tier quick`."
    lines = [
        "| data | budget | model | size | host latency | top-1 | target | met | record |",
        "|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for record in sorted(rows, key=lambda r: r["figures"]["battery"]["order"]):
        f = record["figures"]
        met = "yes" if f["target_met"] else "**no**"
        lines.append(
            f"| {f['data']} | {f['budget_s'] / 60:g} min | {_outcome(f)} | "
            f"{_cell(f.get('bytes') and f['bytes'] / 1e6, '{:.2f} MB')} | {_cell(f.get('latency_ms'), '{:.2f} ms')} | "
            f"{_cell(f.get('top1_runtime'), '{:.2f}%')} | {f['target']} | {met} | "
            f"[{record['name']}]({results_link}#{record['name']}) |"
        )
    cpus = sorted({cpu_label(r["machine"]) for r in rows})
    lines += ["", f"Latency is measured on this host's CPU ({'; '.join(cpus)}), one thread, not on a phone."]
    return "\n".join(lines)


def render_readme(readme: str, records: list[dict[str, Any]], results_link: str = "benchmarks/RESULTS.md") -> str:
    start, end = README_MARKERS
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        return readme
    return pattern.sub(lambda _: f"{start}\n{render_readme_table(records, results_link)}\n{end}", readme)


def rendered() -> dict[Path, str]:
    records = load_records()
    files = {RESULTS: render_results(records)}
    for path in TABLE_FILES:
        if path.exists():
            link = os.path.relpath(RESULTS, path.parent)
            files[path] = render_readme(path.read_text(), records, link)
    return files


def render() -> None:
    for path, text in rendered().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def stale() -> list[Path]:
    return [path for path, text in rendered().items() if not path.exists() or path.read_text() != text]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("render", "check"))
    args = parser.parse_args()
    if args.action == "render":
        render()
        return 0
    out_of_date = stale()
    for path in out_of_date:
        print(f"{path.relative_to(ROOT)} is out of date: run `python -m benchmarks.results render`", file=sys.stderr)
    return 1 if out_of_date else 0


if __name__ == "__main__":
    sys.exit(main())
