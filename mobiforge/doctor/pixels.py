"""The doctor's pixel check of near copies across the split: each val photo's closest train photos by the trunk's
features are compared on small grayscale thumbnails (kept from the cheap scan: no second decode).

Features alone cannot tell a copy from a look-alike where a folder's photos all sit close together: on rps, a 5% crop
or a brightness change lands as far from its original as natural neighbours do. Pixels can: normalised correlation
ignores brightness and contrast, and a small search over centred crops and a mirror covers crops and flips. Measured
on the planted benchmarks: every planted copy correlates at 0.99 or more, every other pair of hymenoptera's below
0.9; on rps, every pair above ``COPY_SIMILARITY`` that was not planted was a real near copy (a video frame next to
its neighbour, a Roboflow colour variant of one source photo), judged on a contact sheet
(RESULTS.md#doctor_planted_rps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB_SIDE = 32  # px: the grayscale thumbnail every file keeps from the cheap scan (1 KB)
VIEW_SIDE = 24  # px: the views compared, resampled from the thumbnail
CROP_SCALES = (1.0, 0.95, 0.9)  # centred crops searched: a copy cropped by up to 10% still lines up
COPY_SIMILARITY = 0.95  # the least correlation of two views read as the same photo
CANDIDATES = 3  # train photos, nearest by features, checked per val photo
CANDIDATE_REACH = 1.5  # x the median val-to-train nearest distance: a grayscale copy sat at 1.1 on rps
CHUNK = 1024  # val rows per block of the feature distance matrix (memory: CHUNK x train floats)


def thumbnail(rgb: Image.Image) -> bytes:
    """The file's grayscale thumbnail, squashed to a square (aspect changes are rare among copies)."""
    return rgb.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR).tobytes()


def views(thumb: bytes) -> np.ndarray:
    """The centred crops of ``CROP_SCALES`` then their mirrors, each zero-mean and unit-norm (rows)."""
    image = Image.frombytes("L", (THUMB_SIDE, THUMB_SIDE), thumb)
    rows = []
    for scale in CROP_SCALES:
        margin = (1.0 - scale) / 2.0 * THUMB_SIDE
        box = (margin, margin, THUMB_SIDE - margin, THUMB_SIDE - margin)
        rows.append(np.asarray(image.resize((VIEW_SIDE, VIEW_SIDE), Image.Resampling.BILINEAR, box=box), np.float32))
    stack = np.stack(rows + [row[:, ::-1] for row in rows]).reshape(2 * len(rows), -1)
    stack -= stack.mean(axis=1, keepdims=True)
    return stack / np.maximum(np.linalg.norm(stack, axis=1, keepdims=True), 1e-6)


def similarity(first: np.ndarray, second: np.ndarray) -> float:
    """The best correlation of one photo's whole view with any view of the other, either way round: a crop of
    either, mirrored or not."""
    return float(max((first @ second[0]).max(), (second @ first[0]).max()))


@dataclass
class PixelCopy:
    val: int
    train: list[int]  # verified train copies, the most similar first
    similarity: float  # of the first
    distance: float  # cosine, between the features of the val photo and its first copy


def verified_copies(
    thumbs: Sequence[bytes], vectors: np.ndarray, train: Sequence[int], val: Sequence[int]
) -> list[PixelCopy]:
    """Val photos with a train photo that is the same picture: among their ``CANDIDATES`` nearest train photos by
    features (cosine, within ``CANDIDATE_REACH`` of the median nearest distance), those whose thumbnails correlate
    at ``COPY_SIMILARITY`` or more. ``thumbs`` and ``vectors`` are indexed as ``train`` and ``val`` are."""
    train, val = np.asarray(train), np.asarray(val)
    if not len(train) or not len(val):
        return []
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    nearest, distance = _nearest(unit[val], unit[train], min(CANDIDATES, len(train)))
    reach = CANDIDATE_REACH * float(np.median(distance[:, 0]))
    found = []
    for row, index in enumerate(val):
        mine = views(thumbs[index])  # recomputed, not kept: cheaper than the memory of a cache on huge folders
        checked = [
            (similarity(mine, views(thumbs[train[column]])), int(train[column]), float(gap))
            for column, gap in zip(nearest[row], distance[row], strict=True)
            if gap <= reach
        ]
        copies = sorted((item for item in checked if item[0] >= COPY_SIMILARITY), reverse=True)
        if copies:
            found.append(PixelCopy(int(index), [item[1] for item in copies], copies[0][0], copies[0][2]))
    return found


def _nearest(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest keys of each query by cosine distance (unit rows), in blocks of ``CHUNK`` queries."""
    nearest = np.empty((len(queries), k), dtype=np.int64)
    distance = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), CHUNK):
        block = 1.0 - queries[start : start + CHUNK] @ keys.T
        part = np.argpartition(block, k - 1, axis=1)[:, :k] if k < block.shape[1] else np.argsort(block, axis=1)
        gaps = np.take_along_axis(block, part, axis=1)
        order = np.argsort(gaps, axis=1)
        nearest[start : start + CHUNK] = np.take_along_axis(part, order, axis=1)
        distance[start : start + CHUNK] = np.take_along_axis(gaps, order, axis=1)
    return nearest, distance
