"""CI's guard on the demo (issue 43, item 4): it fails a run that shipped nothing, shipped under 98%, or overran its
budget by more than 10%, and passes a good one."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.demo_guard import main, verdict


def _card(shipped: bool = True, top1: float = 99.7, used: float = 200.0) -> dict:
    return {
        "shipped": shipped,
        "model": {"candidate": "convpool_s-32px"},
        "accuracy": {"top1_in_runtime": top1},
        "budget": {"time_used_s": used, "time_budget_s": 240.0},
    }


def test_the_guard_names_each_way_a_demo_fails() -> None:
    assert verdict(_card()) == []
    assert verdict(_card(top1=94.78)) == ["top-1 94.78% is under 98%"]  # the Xeon's demo of 2026-12-05
    assert verdict(_card(used=265.0)) and not verdict(_card(used=263.0))  # 10% over 240 s is 264 s
    assert "nothing shipped" in verdict(_card(shipped=False, top1=19.23))


def test_the_guard_exits_1_on_a_bad_card_and_0_on_a_good_one(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    (tmp_path / "model_card.json").write_text(json.dumps(_card(top1=19.23)))
    monkeypatch.setattr(sys, "argv", ["demo_guard", str(tmp_path)])
    assert main() == 1 and "FAILED" in capsys.readouterr().err
    (tmp_path / "model_card.json").write_text(json.dumps(_card()))
    assert main() == 0 and "passed" in capsys.readouterr().out
    (tmp_path / "model_card.json").unlink()
    assert main() == 1  # no card: the demo did not get that far
