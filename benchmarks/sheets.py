"""Contact sheets: photos side by side with a caption under each group, so a reader of a record can judge what a
benchmark counted (near copies, suspected labels) with their own eyes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from mobiforge.data import load_rgb


def contact_sheet(groups: Sequence[tuple[Sequence[str], str]], path: Path, side: int, columns: int) -> None:
    """Each group's photos (squashed to ``side`` px) in a row, its caption under them, ``columns`` groups a row."""
    width = max((len(photos) for photos, _ in groups), default=1) * side + 12
    rows = max(1, (len(groups) + columns - 1) // columns)
    sheet = Image.new("RGB", (columns * width, rows * (side + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    resample = Image.Resampling.NEAREST if side <= 64 else Image.Resampling.BILINEAR  # 32 px CIFAR stays crisp
    for number, (photos, caption) in enumerate(groups):
        x, y = (number % columns) * width, (number // columns) * (side + 16)
        for offset, photo in enumerate(photos):
            sheet.paste(load_rgb(photo).resize((side, side), resample), (x + offset * side, y))
        draw.text((x, y + side + 2), caption, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def stamped(path: Path) -> Path:
    """``path`` with the UTC date and time before its suffix: a new run's sheet never replaces the one an earlier
    record shows."""
    return path.with_name(f"{path.stem}_{time.strftime('%Y-%m-%d_%H%M', time.gmtime())}{path.suffix}")
