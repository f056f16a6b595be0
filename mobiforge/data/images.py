"""Reading one image: upright RGB, 8 bits per channel, whatever the file (HEIC, 16-bit PNG, float TIFF), and never
one so large that decoding it would take the machine's memory."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
import pillow_heif
from PIL import Image, ImageOps

pillow_heif.register_heif_opener()  # iPhone photos are HEIC by default; Pillow opens them through this plugin

# Decoded size per image, bounded so a few huge files cannot take the machine's memory (a 13,000-pixel square PNG
# is 500 MB decoded): above a 48-megapixel phone photo; JPEGs are measured after their reduced-scale draft.
MAX_DECODED_PIXELS = 64 * 10**6


def oversized(image: Image.Image) -> str | None:
    """Why an opened (not yet decoded) image is too large to decode, or None."""
    width, height = image.size
    if width * height <= MAX_DECODED_PIXELS:
        return None
    return (
        f"{width}x{height} pixels is over the {MAX_DECODED_PIXELS // 10**6} megapixels mobiforge decodes; downscale it"
    )


def load_rgb(path: str | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Open an image (a path, or a binary file such as an upload) as RGB, upright (EXIF orientation applied),
    8 bits per channel. For JPEGs, ``draft_size`` lets libjpeg decode at a reduced scale (a large speed-up on
    full-size photos) while keeping at least ``draft_size`` pixels on each side."""
    with Image.open(path) as image:
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        if problem := oversized(image):  # checked before decoding: the header alone gives the size
            raise ValueError(problem)
        ImageOps.exif_transpose(image, in_place=True)  # a portrait phone photo is stored sideways plus a tag
        if image.mode in SIXTEEN_BIT_MODES:
            return _to_8_bit(image).convert("RGB")
        if image.mode == "F":  # 32-bit float (TIFF): convert() truncates 0.0-1.0 values to 0 or 1, a black image
            return _float_to_8_bit(image).convert("RGB")
        return image.convert("RGB")


# Pillow opens 16-bit grayscale (PNG, TIFF) as one of these, values 0-65535; its convert("RGB") clips them at 255,
# so a mid-gray photo came out all white.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _float_to_8_bit(image: Image.Image) -> Image.Image:
    """A float image as 8 bits: values in [0, 1] (the usual float convention) scaled by 255, others read as 0-255."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def _to_8_bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
