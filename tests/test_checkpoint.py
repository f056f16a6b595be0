"""Checkpoints: atomic writes, weights_only loads, rebuild without pickled modules, the article's keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobiforge import create_model
from mobiforge.checkpoint import Checkpoint, load_checkpoint, model_checkpoint, model_from_checkpoint, save_checkpoint
from mobiforge.errors import MobiforgeError


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = create_model("mobilenet_v2", num_classes=3, width_mult=0.5, small_input=True).eval()
    path = save_checkpoint(model_checkpoint(model, classes=["a", "b", "c"], epoch=4, optimizer={}), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # what code written for the seed article does
    assert {"epoch", "state_dict", "optimizer"} <= set(raw)
    assert raw["spec"] == {"name": "mobilenet_v2", "kwargs": {"num_classes": 3, "width_mult": 0.5, "small_input": True}}
    rebuilt = model_from_checkpoint(path)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(rebuilt(x), model(x))
    assert rebuilt.preprocess.img_size == 32
    assert load_checkpoint(path)["classes"] == ["a", "b", "c"]


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    model = create_model("mobilenet_v3_small", num_classes=2)
    save_checkpoint(model_checkpoint(model, epoch=1), path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(MobiforgeError, match=r"cannot write .*last\.pt: disk full; the previous copy is kept"):
        save_checkpoint(model_checkpoint(model, epoch=2), path)
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint survived intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_clear_errors_for_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MobiforgeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(MobiforgeError, match=r"cannot read checkpoint .*garbage\.pt"):
        load_checkpoint(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(create_model("mobilenet_v3_small").state_dict(), bare)
    with pytest.raises(MobiforgeError, match="not a mobiforge checkpoint"):
        load_checkpoint(bare)


def test_the_typed_checkpoint_keeps_every_key_and_rebuilds_the_model(tmp_path: Path) -> None:
    model = create_model("mobilenet_seed", num_classes=2, width_mult=0.25).eval()
    raw = model_checkpoint(model, classes=["cat", "dog"], epoch=3, optimizer={"state": {}}, rng={"seed": 1})
    path = save_checkpoint(raw, tmp_path / "a.pt")
    checkpoint = Checkpoint.load(path)
    assert checkpoint.classes == ["cat", "dog"] and checkpoint.epoch == 3 and checkpoint.source == str(path)
    assert checkpoint.preprocess.img_size == model.preprocess.img_size
    assert checkpoint.extra["optimizer"] == {"state": {}} and checkpoint.extra["rng"] == {"seed": 1}
    again = load_checkpoint(checkpoint.save(tmp_path / "b.pt"))  # a read-then-write loses no key
    assert set(raw) <= set(again) and again["optimizer"] == raw["optimizer"]
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(checkpoint.model()(x), model(x)) and not checkpoint.model().training


def test_a_checkpoint_of_other_classes_is_refused_in_one_line(tmp_path: Path) -> None:
    model = create_model("mobilenet_seed", num_classes=2, width_mult=0.25)
    checkpoint = Checkpoint.of(model, classes=["cat", "dog"])
    checkpoint.require_classes(["cat", "dog"], "teacher", "unused")
    with pytest.raises(MobiforgeError) as error:
        checkpoint.require_classes(["ant", "bee", "wasp"], "teacher", "train one on this data")
    message = str(error.value)
    assert "\n" not in message and "predicts 2 classes (cat, dog), the data has 3 (ant, bee, wasp)" in message
    assert message.endswith("; train one on this data")
    with pytest.raises(MobiforgeError, match="has no class names"):
        Checkpoint.of(model).named_classes()
