"""Shared part of the ship benchmarks: run `mobiforge ship` through the API, keep its report and model card
under benchmarks/ship/<section>/ and write the section of benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.cli.progress import RichReporter
from mobiforge.ship import ShipConfig, ship

KEPT = (
    "report.md",
    "report.html",
    "model_card.json",
    "labels.txt",
    "candidates.png",
    "curves.png",
    "confusion.png",
    "confusion_int8.png",
    "mistakes.png",
    "MODEL_CARD.md",
)


def run_and_record(section: str, title: str, config: ShipConfig, target: str) -> None:
    started = time.time()
    with RichReporter() as reporter:
        result = ship(config, reporter)
    wall = time.time() - started
    kept = Path(__file__).resolve().parent / "ship" / section
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for name in KEPT:
        if (result.run_dir / name).exists():
            shutil.copyfile(result.run_dir / name, kept / name)
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
        headline.replace("](", "](ship/" + section + "/"),
        "",
        f"Target: {target}. Wall time of this process: {wall / 60:.1f} min (the budget counts every stage).",
        "",
        table,
        "",
        f"Report: [ship/{section}/report.md](ship/{section}/report.md) ([HTML](ship/{section}/report.html)) · "
        f"model card: [ship/{section}/model_card.json](ship/{section}/model_card.json)",
    ]
    if card is None:
        lines.append("\nNo candidate reached the export stage, so there is no model card.")
    write_section(section, "\n".join(lines))
    print(f"recorded {section}: chosen {result.chosen}, closest {result.closest}, {wall / 60:.1f} min")
