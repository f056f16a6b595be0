"""The bad-file scan: every image decoded once before training starts; undecodable files fail the run in one line
listing them, or are skipped with a warning (``--skip-bad-images``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from mobiforge.data.discovery import Sample
from mobiforge.data.images import oversized
from mobiforge.errors import MobiforgeError


def _decode_problem(path: str) -> str | None:
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))  # the smallest scale still reads (and checks) the whole stream
            if problem := oversized(image):  # before decoding, as load_rgb refuses it: the scan is no way around
                return problem
            image.load()  # a full decode: verify() misses truncated JPEGs
    except Exception as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def _header_problem(path: str) -> str | None:
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:  # the header only: what PIL needs to name the format and the size
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))
            return oversized(image)
    except Exception as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def find_unreadable(paths: Sequence[str], workers: int = 4) -> dict[str, str]:
    """Every file among ``paths`` whose header PIL cannot read (not an image at all), with the reason: a scan of a
    large folder in seconds, where ``find_bad_images`` decodes every pixel."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_header_problem, paths, chunksize=64))
    return {path: problem for path, problem in zip(paths, problems, strict=True) if problem}


def classes_without_images(samples: Sequence[Sample], classes: Sequence[str], unreadable: dict[str, str]) -> None:
    """Fail in one line when a class folder holds files but none that is an image: no skipping can rescue it."""
    by_class: dict[int, list[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    for label, paths in sorted(by_class.items()):
        if all(path in unreadable for path in paths):
            example = paths[0]
            raise MobiforgeError(
                f"class {classes[label]!r} holds no readable image ({len(paths)} file(s); {example}: "
                f"{unreadable[example]}); remove the folder or put its images in it"
            )


def find_bad_images(paths: Sequence[str], workers: int = 4) -> dict[str, str]:
    """Every file among ``paths`` that PIL cannot fully decode, with the reason."""
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        problems = list(pool.map(_decode_problem, paths, chunksize=64))
    return {path: problem for path, problem in zip(paths, problems, strict=True) if problem}


def report_bad(bad: dict[str, str], skip_bad: bool) -> set[str]:
    if not bad:
        return set()
    listing = "; ".join(f"{path} ({reason})" for path, reason in sorted(bad.items()))
    if not skip_bad:
        raise MobiforgeError(
            f"{len(bad)} image file(s) cannot be decoded: {listing}. Fix or delete them, or pass --skip-bad-images"
        )
    warnings.warn(f"skipping {len(bad)} image file(s) that cannot be decoded: {listing}", stacklevel=4)
    return set(bad)


def decodable(samples: Sequence[Sample], skip_bad: bool) -> set[str]:
    """Scan every image of ``samples``; fail listing the bad ones, or (``skip_bad``) warn and return their paths."""
    return report_bad(find_bad_images([path for path, _ in samples]), skip_bad)
