"""Knowledge-distillation losses: a student trained on the labels and on a teacher's softened predictions.

The loss (Hinton et al., 2015) is ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)``
where ``_T`` means softmax at temperature ``T``; the ``T^2`` keeps the soft term's gradients at the scale of the
hard one. Optionally the student's pre-logit features are pulled towards the teacher's (mean squared error) when
both have the same width.

The teacher runs in eval mode without gradients. It sees the batch the student sees, re-normalised and resized to
its own preprocessing when that differs (an EfficientNet-Lite teacher expects [-1, 1] inputs, a student trained
from scratch ImageNet's mean/std). The recipe that trains a student (``mobiforge.distill.distill``) sits above the
trainer; these pieces sit below it, so the trainer, QAT and pruning all use the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobiforge.checkpoint import Checkpoint
from mobiforge.config import DistillConfig as DistillConfig  # public here too
from mobiforge.errors import MobiforgeError
from mobiforge.models.base import Preprocess


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, batch mean."""
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


class InputAdapter(nn.Module):
    """Turns a batch normalised for the student into one normalised (and sized) for the teacher."""

    def __init__(self, student: Preprocess, teacher: Preprocess) -> None:
        super().__init__()

        def column(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)

        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t = x_student * scale + shift
        self.register_buffer("scale", column(student.std) / column(teacher.std))
        self.register_buffer("shift", (column(student.mean) - column(teacher.mean)) / column(teacher.std))
        self.same_norm = student.mean == teacher.mean and student.std == teacher.std
        self.size = teacher.img_size if teacher.img_size != student.img_size else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.same_norm:
            images = images * self.scale + self.shift
        if self.size is not None:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        return images


class _PreLogits:
    """Captures the input of a model's final Linear layer (its pre-logit features) on every forward."""

    def __init__(self, model: nn.Module) -> None:
        classifier = model.get_classifier()
        linear = [module for module in classifier.modules() if isinstance(module, nn.Linear)][-1]
        self.value: torch.Tensor | None = None
        self.width = linear.in_features
        linear.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.value = inputs[0]


class DistillationLoss:
    """``loss_fn(logits, targets, images)`` for ``engine.train_one_epoch``: labels + teacher (+ features)."""

    def __init__(
        self,
        teacher: nn.Module,
        teacher_preprocess: Preprocess,
        student: nn.Module,
        student_preprocess: Preprocess,
        config: DistillConfig,
        label_smoothing: float = 0.0,
    ) -> None:
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.adapter = InputAdapter(student_preprocess, teacher_preprocess)
        self.config = config
        self.label_smoothing = label_smoothing
        self.student_features = self.teacher_features = None
        if config.feature_weight > 0:
            self.student_features, self.teacher_features = _PreLogits(student), _PreLogits(teacher)
            if self.student_features.width != self.teacher_features.width:
                raise MobiforgeError(
                    f"--feature-weight needs the same pre-logit width in student and teacher, got "
                    f"{self.student_features.width} and {self.teacher_features.width}; use --feature-weight 0"
                )

    def to(self, device: torch.device) -> DistillationLoss:
        self.teacher.to(device)
        self.adapter.to(device)
        return self

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(self.adapter(images))
        hard = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        loss = (1 - self.config.alpha) * hard + self.config.alpha * kd_loss(
            logits, teacher_logits, self.config.temperature
        )
        if self.student_features is not None and self.teacher_features is not None:
            student, teacher = self.student_features.value, self.teacher_features.value
            assert student is not None and teacher is not None
            loss = loss + self.config.feature_weight * F.mse_loss(student.float(), teacher.float())
        return loss


def load_teacher(path: str, classes: list[str]) -> tuple[nn.Module, Preprocess]:
    """The teacher checkpoint's model and preprocessing; its classes must be the dataset's, in order."""
    checkpoint = Checkpoint.load(path)
    advice = "fine-tune the teacher on this data first, or pass a model name with pretrained weights as --teacher"
    checkpoint.require_classes(classes, "teacher", advice + " to have it adapted")
    return checkpoint.model(), checkpoint.preprocess


def distillation_loss(
    config: DistillConfig,
    classes: list[str],
    student: nn.Module,
    student_preprocess: Preprocess,
    label_smoothing: float,
    device: torch.device,
) -> DistillationLoss:
    teacher, teacher_preprocess = load_teacher(config.teacher, classes)
    return DistillationLoss(teacher, teacher_preprocess, student, student_preprocess, config, label_smoothing).to(
        device
    )
