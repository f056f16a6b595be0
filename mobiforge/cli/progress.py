"""Training progress for people: a rich progress bar per epoch and one summary line per epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from mobiforge.progress import StepInfo


class RichReporter:
    """Implements ``mobiforge.progress.Reporter``."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, markup=False, highlight=False)  # run names and paths are the user's text
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None
        self.current_epoch = -1

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, info: dict[str, Any]) -> None:
        resumed = f", resuming at epoch {info['start_epoch'] + 1}" if info["start_epoch"] else ""
        self.console.print(
            f"training {info['model']} ({info['params'] / 1e6:.2f}M params) on {info['data']}: "
            f"{info['train_images']} train / {info['val_images']} val images, {info['classes']} classes, "
            f"{info['img_size']} px, {info['epochs']} epochs on {info['device']} x{info['world_size']} "
            f"({info['threads']} threads, amp {info['amp']}){resumed} -> {info['run_dir']}"
        )

    def step(self, info: StepInfo) -> None:
        if info.epoch != self.current_epoch:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.current_epoch = info.epoch
            self.task = self.progress.add_task(
                "train", total=info.steps, completed=info.step - 1, epoch=info.epoch + 1, loss=0.0, lr=0.0, ips=0.0
            )
        self.progress.update(self.task, completed=info.step, loss=info.loss, lr=info.lr, ips=info.images_per_second)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task, self.current_epoch = None, -1
        self.console.print(
            f"epoch {row['epoch']}/{row['epochs']}: train loss {row['train_loss']:.4f}, "
            f"val loss {row['val_loss']:.4f}, "
            f"val top-1 {row['val_top1']:.2f}% (best {row['best_top1']:.2f}%), top-5 {row['val_top5']:.2f}%, "
            f"{row['epoch_seconds']:.1f}s, {row['images_per_second']:.0f} img/s"
        )

    def message(self, text: str) -> None:
        self.console.print(Text(text, style="yellow"))
