"""Reading one image: upright RGB, 8 bits per channel, whatever the file (HEIC, 16-bit PNG, float TIFF), and never
one so large that decoding it would take the machine's memory."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg

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


def load_image(path: str, draft_size: int | None = None) -> tv_tensors.Image:
    """``load_rgb`` as a uint8 CHW tensor (laid out channels-last, as decoded: the resize reads that layout fastest),
    what every transform starts from (``v2.ToImage`` passes it through). A JPEG that a draft would not shrink is
    decoded by libjpeg-turbo straight into the tensor (``torchvision.io.decode_jpeg``, EXIF orientation applied):
    the same pixels as through Pillow (test). Anything else, and any JPEG it refuses, goes through ``load_rgb``, whose
    errors name the problem. Either way the eval transform runs 1.4-1.9x faster than from a Pillow image
    (RESULTS.md#trunk_pass_hymenoptera)."""
    data = Path(path).read_bytes()  # read once: the header below and the decode share it
    try:
        with Image.open(io.BytesIO(data)) as image:
            direct = image.format == "JPEG" and image.mode in ("RGB", "L") and oversized(image) is None
            direct = direct and not _draft_shrinks(image.size, draft_size)
    except (OSError, ValueError, Image.DecompressionBombError):
        direct = False  # not an image Pillow opens: load_rgb names the file in its error
    if direct and data.rstrip(b"\0").endswith(b"\xff\xd9"):  # no end marker: truncated, and Pillow says so
        try:
            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its decoders for TorchCodec's; pinned, and Pillow stays the fallback
                warnings.simplefilter("ignore", DeprecationWarning)
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                pixels = decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            return tv_tensors.Image(pixels)
        except RuntimeError:
            pass
    rgb = np.array(load_rgb(path, draft_size))  # a copy Pillow no longer owns
    return tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))


def _draft_shrinks(size: tuple[int, int], draft_size: int | None) -> bool:
    """Whether libjpeg's draft decodes at a reduced scale: at least half of the image keeps ``draft_size`` pixels on
    each side."""
    return bool(draft_size) and min(size) >= 2 * draft_size


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
