"""The doctor's cheap checks: what each file's pixels and header say, one decode per file, in worker processes.

Exact duplicates are found by a hash of the decoded pixels (upright, RGB), so a copy saved again losslessly, with
other metadata or under another format, counts; a lossy re-encode, a crop or a brightness change is left to the
feature checks (``doctor.features``) and the pixel check of their candidates (``doctor.pixels``, on the thumbnail
each file keeps from this scan).
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from mobiforge.data.images import load_rgb
from mobiforge.doctor.pixels import thumbnail

# The extensions each decoder's format may honestly carry (Pillow's format names); any other is a lying extension.
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "MPO": (".jpg", ".jpeg", ".mpo"),  # a phone's multi-picture JPEG
    "PNG": (".png",),
    "GIF": (".gif",),
    "WEBP": (".webp",),
    "BMP": (".bmp", ".dib"),
    "TIFF": (".tif", ".tiff"),
    "HEIF": (".heic", ".heif"),
    "AVIF": (".avif",),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),
}
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
GRAY_TOLERANCE = 3  # the largest channel difference (0-255) of a colour-stored photo that is gray all over
GRAY_SAMPLE_SIDE = 64  # gray is judged on a thumbnail: a full-size comparison costs more than the decode


@dataclass
class FileFacts:
    """What one file's header and pixels say."""

    path: str
    split: str
    label: int
    problem: str | None = None  # undecodable: why
    width: int = 0  # upright (EXIF orientation applied)
    height: int = 0
    mode: str = ""  # as stored
    format: str = ""
    exif_rotated: bool = False
    gray: bool = False
    digest: str = ""  # of the decoded, upright RGB pixels
    thumbnail: bytes = field(default=b"", repr=False)  # grayscale, for the pixel check of near copies

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    @property
    def aspect(self) -> float:
        return max(self.width, self.height) / max(1, self.short_side)


def file_facts(item: tuple[str, str, int]) -> FileFacts:
    path, split, label = item
    facts = FileFacts(path, split, label)
    try:
        with Image.open(path) as image:
            facts.mode, facts.format = image.mode, image.format or ""
            orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
            facts.exif_rotated = orientation not in (None, 1)
        rgb = load_rgb(path)
    except Exception as error:  # anything Pillow raises on a broken file: reported, never fatal
        facts.problem = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}".strip()
        return facts
    facts.width, facts.height = rgb.size
    pixels = np.asarray(rgb)
    facts.digest = hashlib.blake2b(pixels.tobytes() + f"{rgb.size}".encode(), digest_size=16).hexdigest()
    facts.gray = facts.mode in GRAY_MODES or _gray_content(rgb)
    facts.thumbnail = thumbnail(rgb)
    return facts


def _gray_content(rgb: Image.Image) -> bool:
    small = np.asarray(ImageOps.contain(rgb, (GRAY_SAMPLE_SIDE, GRAY_SAMPLE_SIDE))).astype(np.int16)
    return bool(np.abs(small[..., 0] - small[..., 1]).max() <= GRAY_TOLERANCE) and bool(
        np.abs(small[..., 1] - small[..., 2]).max() <= GRAY_TOLERANCE
    )


def scan_files(items: Sequence[tuple[str, str, int]], workers: int) -> list[FileFacts]:
    """``file_facts`` of every (path, split, label), in order; in ``workers`` processes (0: here)."""
    if workers <= 0 or len(items) < 64:
        return [file_facts(item) for item in items]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(file_facts, items, chunksize=16))


@dataclass
class FileFindings:
    """The cheap checks' findings, by kind; indices into the facts list."""

    unreadable: list[int] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)  # same pixels, two or more files
    tiny: list[int] = field(default_factory=list)
    extreme_aspect: list[int] = field(default_factory=list)
    gray_among_colour: list[int] = field(default_factory=list)
    cmyk: list[int] = field(default_factory=list)
    exif_rotated: list[int] = field(default_factory=list)
    lying_extension: list[int] = field(default_factory=list)
    tiny_side: int = 0  # the threshold used


def cheap_findings(
    facts: Sequence[FileFacts], tiny_floor: int, tiny_fraction: float, max_aspect: float
) -> FileFindings:
    """Group and flag: a tiny image is under ``tiny_floor`` px on its short side, or under ``tiny_fraction`` of the
    folder's median short side, and in either case under half that median: a folder of 8 px digits is not tiny
    throughout, a 32 px stray among photos is."""
    found = FileFindings()
    readable = [index for index, fact in enumerate(facts) if fact.problem is None]
    found.unreadable = [index for index, fact in enumerate(facts) if fact.problem is not None]
    by_digest: dict[str, list[int]] = defaultdict(list)
    for index in readable:
        by_digest[facts[index].digest].append(index)
    found.duplicate_groups = [group for group in by_digest.values() if len(group) > 1]
    median_side = statistics.median(facts[index].short_side for index in readable) if readable else 0
    found.tiny_side = min(max(tiny_floor, int(tiny_fraction * median_side)), int(median_side / 2))
    found.tiny = [index for index in readable if facts[index].short_side < found.tiny_side]
    found.extreme_aspect = [index for index in readable if facts[index].aspect > max_aspect]
    gray = [index for index in readable if facts[index].gray]
    if len(gray) < len(readable) / 2:  # a gray folder (digits, X-rays) is not a problem; a gray stray among colour is
        found.gray_among_colour = gray
    found.cmyk = [index for index in readable if facts[index].mode == "CMYK"]
    found.exif_rotated = [index for index in readable if facts[index].exif_rotated]
    found.lying_extension = [index for index in readable if _lies(facts[index])]
    return found


def _lies(fact: FileFacts) -> bool:
    suffix = fact.path[fact.path.rfind(".") :].lower() if "." in fact.path else ""
    honest = FORMAT_SUFFIXES.get(fact.format)
    return honest is not None and suffix not in honest
