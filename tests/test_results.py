"""Benchmark results are data (issue 43, item 5): RESULTS.md and the README's results block are rendered from the
records in benchmarks/results/, and every citation of a record names one that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import results

ROOT = Path(__file__).resolve().parent.parent
# Where a figure is cited: the README, the docs, and the package's comments and docstrings.
CITING = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "mobiforge").rglob("*.py")),
          *sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]  # fmt: skip
CITATION = re.compile(r"RESULTS\.md#([a-z0-9_]+)|results/([a-z0-9_]+)\.json")
# "RESULTS.md" with no record named: in the README, docs and package, allowed only as a link to the whole file.
WHOLE_FILE = re.compile(r"(\]\((?:\.\./)?benchmarks/RESULTS\.md\))|(\[`?(?:benchmarks/)?RESULTS\.md`?\]\()")


def test_rendered_files_are_up_to_date():
    assert results.stale() == [], "run `python -m benchmarks.results render` and commit the result"


def test_every_record_is_complete():
    for path in sorted(results.RECORDS.glob("*.json")):
        record = json.loads(path.read_text())
        assert record["name"] == path.stem and results.NAME.match(path.stem), path.name
        for key in ("title", "command", "date", "machine", "content"):
            assert record.get(key), f"{path.name} has no {key}"
        assert "described" in record["machine"] or {"cpu", "capability", "vector_flags"} <= set(record["machine"])


def test_the_sections_lost_in_af3abf9_are_back():
    lost = {"roofline", "transfer_ladder_hymenoptera", "ship_proxy", "ship_hymenoptera_10m", "fuzz_inputs",
            "cli_startup", "scratch_recipe", "small_image_families", "small_image_families_wide", "batch_augment",
            "relu6_fusion", "flipped_images_hymenoptera_amd", "cifar10_time_to_accuracy_convpool"}  # fmt: skip
    assert lost <= results.record_names()


def test_every_citation_names_a_record():
    names, missing, vague = results.record_names(), [], []
    for path in CITING:
        text = path.read_text()
        for match in CITATION.finditer(text):
            name = match.group(1) or match.group(2)
            if name not in names:
                missing.append(f"{path.relative_to(ROOT)}: {name}")
        if path.parent.name in ("benchmarks", "tests"):  # scripts that write it, tests that read it
            continue
        for match in re.finditer(r"RESULTS\.md(?!#)", text):
            around = text[max(0, match.start() - 40) : match.end() + 4]
            if not WHOLE_FILE.search(around):
                vague.append(f"{path.relative_to(ROOT)}: ...{around.strip()}...")
    assert not missing, f"cited records that do not exist: {missing}"
    assert not vague, f"cite a record as RESULTS.md#NAME: {vague}"


@pytest.fixture
def scratch_results(tmp_path, monkeypatch):
    """The records module writing into a scratch folder, with a README that has the results markers."""
    monkeypatch.setattr(results, "RECORDS", tmp_path / "results")
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nafter\n")
    monkeypatch.setattr(results, "TABLE_FILES", [readme])
    monkeypatch.setattr(results, "machine", lambda: {"described": "a test machine"})
    return tmp_path


BODY = "## A benchmark\n\nIt measured this.\n\n| model | top-1 |\n|---|---:|\n| a | 90.00% |\n| b | 91.00% |\n"


def test_a_record_renders_its_text_and_tables(scratch_results):
    results.write_section("some_bench", BODY, {"top1": 91.0})
    record = json.loads((scratch_results / "results" / "some_bench.json").read_text())
    assert record["content"][1] == {"columns": ["model", "top-1"], "align": ["l", "r"],
                                    "rows": [["a", "90.00%"], ["b", "91.00%"]]}  # fmt: skip
    assert record["figures"] == {"top1": 91.0} and record["title"] == "A benchmark"
    text = (scratch_results / "RESULTS.md").read_text()
    assert '<a id="some_bench"></a>' in text and "| b | 91.00% |" in text and "Machine: a test machine" in text
    assert results.stale() == []


def test_a_rerun_keeps_the_run_before_it(scratch_results):
    results.write_section("some_bench", BODY)
    results.write_section("some_bench", BODY)  # the same figures: nothing to keep
    assert json.loads((scratch_results / "results" / "some_bench.json").read_text())["earlier"] == []
    results.write_section("some_bench", BODY.replace("91.00%", "92.00%"))
    record = json.loads((scratch_results / "results" / "some_bench.json").read_text())
    assert len(record["earlier"]) == 1 and "91.00%" in json.dumps(record["earlier"][0])
    text = (scratch_results / "RESULTS.md").read_text()
    assert "| b | 92.00% |" in text and "Earlier run" in text and "| b | 91.00% |" in text


def test_the_readme_table_comes_from_battery_records(scratch_results):
    figures = {
        "battery": {"row": "demo", "order": 0},
        "data": "digits",
        "budget_s": 240,
        "candidate": "convpool_s",
        "shipped": True,
        "bytes": 650_000,
        "latency_ms": 0.21,
        "top1_runtime": 99.73,
        "target": "≥ 99.0%",
        "target_met": True,
    }
    results.write_section("battery_demo", "## demo\n\nran", figures)
    readme = (scratch_results / "README.md").read_text()
    assert "| digits | 4 min | convpool_s | 0.65 MB | 0.21 ms | 99.73% | ≥ 99.0% | yes |" in readme
    assert readme.startswith("intro\n") and readme.endswith("after\n") and "old" not in readme
    assert "not on a phone" in readme
