"""Shared part of the ship benchmarks: run `mobiforge ship` through the API, keep its report and model card
under benchmarks/reports/<section>/ (text only: the PNGs and HTML stay in the run folder) and write the record."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.cli.progress import RichReporter
from mobiforge.ship import ShipConfig, ship

REPORTS = Path(__file__).resolve().parent / "reports"
KEPT = ("report.md", "model_card.json", "labels.txt", "MODEL_CARD.md")  # text: the images stay in the run folder


def keep_report(run_dir: Path, section: str) -> Path:
    """The run's text files copied to benchmarks/reports/<section>/ (committed beside the record)."""
    kept = REPORTS / section
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for name in KEPT:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, kept / name)
    return kept


def card_figures(card: dict | None) -> dict:
    """The figures of a ship run a record keeps as data (from its model card)."""
    if card is None:
        return {"shipped": False}
    return {
        "shipped": card["shipped"],
        "candidate": card["model"]["candidate"],
        "top1_runtime": card["accuracy"]["top1_in_runtime"],
        "top1_fp32": card["accuracy"]["top1_fp32_pytorch"],
        "bytes": card["artifact"]["bytes"],
        "latency_ms": card["latency_ms"]["median"],
        "time_used_s": card["budget"]["time_used_s"],
        "budget_s": card["budget"]["time_budget_s"],
    }


def run_and_record(section: str, title: str, config: ShipConfig, target: str) -> None:
    started = time.time()
    with RichReporter() as reporter:
        result = ship(config, reporter)
    wall = time.time() - started
    keep_report(result.run_dir, section)
    report = (result.run_dir / "report.md").read_text()
    headline = report.split("## Candidates")[0].split("\n", 1)[1].strip()
    table = report.split("## Candidates")[1].split("\n## ")[0].strip()
    if "## Transfer ladder" in report:  # every rung's trainable params, time and val top-1
        table += "\n\nTransfer ladder:\n\n" + report.split("## Transfer ladder")[1].split("\n## ")[0].strip()
    card_path = result.run_dir / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else None
    lines = [
        f"## {title}",
        "",
        headline.replace("](", "](reports/" + section + "/"),
        "",
        f"Target: {target}. Wall time of this process: {wall / 60:.1f} min (the budget counts every stage).",
        "",
        table,
        "",
        f"Report: [reports/{section}/report.md](reports/{section}/report.md) · "
        f"model card: [reports/{section}/model_card.json](reports/{section}/model_card.json)",
    ]
    if card is None:
        lines.append("\nNo candidate reached the export stage, so there is no model card.")
    write_section(section, "\n".join(lines), {**card_figures(card), "wall_s": wall})
    print(f"recorded {section}: chosen {result.chosen}, closest {result.closest}, {wall / 60:.1f} min")
