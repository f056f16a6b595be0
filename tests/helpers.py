"""Small generated image folders for tests: each class is a distinct colour, so a model can learn it fast."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from mobiforge.progress import SilentReporter

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 220, 40)]


def make_image(path: Path, colour: tuple[int, int, int], size: int = 24, seed: int = 0) -> Path:
    """A noisy image of one of four patterns (chosen by ``colour``'s index in COLOURS): horizontal stripes,
    vertical stripes, diagonal stripes, checkerboard. Random brightness, phase and noise make every image differ;
    the pattern, not a global statistic, tells the class."""
    rng = random.Random(seed)
    kind = COLOURS.index(colour) if colour in COLOURS else 0
    period = max(4, size // 4)
    phase = rng.randrange(period)
    base = [min(255, max(0, c + rng.randint(-40, 40))) for c in colour]
    image = Image.new("RGB", (size, size))
    pixels = image.load()
    for y in range(size):
        for x in range(size):
            coordinate = (y, x, x + y, (x // (period // 2)) + (y // (period // 2)))[kind]
            on = (coordinate + phase) % period < period // 2 if kind < 3 else coordinate % 2 == 0
            scale = 1.0 if on else 0.35
            pixels[x, y] = tuple(min(255, max(0, int(c * scale) + rng.randint(-25, 25))) for c in base)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 24, ext: str = ".png") -> Path:
    """``root/<class>/*`` images."""
    for label in range(classes):
        for index in range(per_class):
            make_image(root / f"class{label}" / f"{index:03d}{ext}", COLOURS[label], size, seed=label * 1000 + index)
    return root


def make_split_folder(root: Path, classes: int = 3, train: int = 12, val: int = 4, val_name: str = "val") -> Path:
    make_folder(root / "train", classes, train)
    make_folder(root / val_name, classes, val)
    return root


def small_train_config(data: Path, runs: Path, name: str = "run", img_size: int = 16, batch_size: int = 8, **overrides):  # type: ignore[no-untyped-def]
    """A TrainConfig that trains a tiny model on generated data in seconds (AdamW + cosine, no workers)."""
    from mobiforge.data import DataConfig
    from mobiforge.engine import OptimConfig
    from mobiforge.train import TrainConfig

    config = TrainConfig(
        model="mobilenet_seed",
        width_mult=0.25,
        data=DataConfig(data=str(data), img_size=img_size, batch_size=batch_size, workers=0),
        optim=OptimConfig(optimizer="adamw", lr=2e-3, scheduler="cosine"),
        epochs=3,
        runs_dir=str(runs),
        name=name,
        tensorboard=False,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class MessageLog(SilentReporter):
    """A silent reporter that keeps the messages it is given (cache lines, ship's stage lines)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def ship_run(
    state: object, config: object = None, run_dir: Path | str = "run", say: object = None, reporter: object = None
) -> object:
    """A ``ShipRun`` around a test's fake state (a fake needs only what the stage under test reads of it)."""
    from mobiforge.config import ShipConfig
    from mobiforge.ship.stages import ShipRun

    return ShipRun(
        config or ShipConfig(),  # type: ignore[arg-type]
        Path(run_dir),
        reporter or SilentReporter(),  # type: ignore[arg-type]
        say or (lambda text: None),  # type: ignore[arg-type]
        state,  # type: ignore[arg-type]
    )
