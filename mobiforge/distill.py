"""``distill(config)``: train a student with a teacher's soft targets (the loss is ``mobiforge.losses``).

The teacher may be a checkpoint of the same classes or the name of a model with pretrained weights; a name is
first adapted to the dataset's classes by a short head-then-all fine-tuning run in ``RUN/teacher``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mobiforge.errors import MobiforgeError
from mobiforge.losses import DistillConfig
from mobiforge.models import is_model
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.runs import TrainResult, default_run_name
from mobiforge.train import TrainConfig, train

__all__ = ["DistillConfig", "adapt_teacher", "distill"]


def adapt_teacher(train_config: TrainConfig, config: DistillConfig, reporter: Reporter) -> str:
    """A teacher checkpoint for ``train_config``'s data: ``config.teacher`` itself when it is a file, else the
    pretrained model of that name fine-tuned for ``teacher_epochs`` (head only for the first) in RUN/teacher."""
    if Path(config.teacher).is_file():
        return config.teacher
    if not is_model(config.teacher):
        raise MobiforgeError(
            f"--teacher {config.teacher}: neither a checkpoint file nor a model name (see `mobiforge models`)"
        )
    run_dir = Path(train_config.runs_dir) / train_config.name
    teacher_config = dataclasses.replace(
        train_config,
        model=config.teacher,
        width_mult=None,
        dropout=None,
        pretrained=True,
        freeze_epochs=1,
        backbone_lr_scale=0.1,
        epochs=config.teacher_epochs,
        distill=None,
        init_from=None,
        data=dataclasses.replace(train_config.data, img_size=None, mean=None, std=None),
        small_input=None,
        runs_dir=str(run_dir),
        name="teacher",
    )
    reporter.message(f"adapting the pretrained {config.teacher} to the data's classes ({config.teacher_epochs} epochs)")
    result = train(teacher_config, reporter)
    reporter.message(f"teacher: val top-1 {result.best_top1:.2f}% ({result.run_dir / 'best.pt'})")
    return str(result.run_dir / "best.pt")


def distill(train_config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train ``train_config.model`` as a student of ``train_config.distill.teacher`` (see the module docstring)."""
    if train_config.distill is None:
        raise MobiforgeError("distill needs a teacher (--teacher CKPT_OR_MODEL)")
    reporter = reporter or SilentReporter()
    if train_config.resume:
        return train(train_config, reporter)
    name = train_config.name or default_run_name(train_config)
    train_config = dataclasses.replace(train_config, name=name)
    teacher = adapt_teacher(train_config, train_config.distill, reporter)
    train_config = dataclasses.replace(train_config, distill=dataclasses.replace(train_config.distill, teacher=teacher))
    return train(train_config, reporter)
