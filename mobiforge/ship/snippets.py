""" "Use it in your app": Android (Kotlin) and iOS (Swift) code that loads a shipped artifact in its runtime and
feeds it one image preprocessed exactly as the model was trained (resize, center crop, normalise, NCHW float32).

Each runtime owns its app code (``BackendImpl.app_snippets``: templates following its documented mobile bindings);
this module fills them with the model's own constants, escaped for each language, and puts the shared
preprocessing code before the ones that call it. A LiteRT file that takes pixels and carries its labels (what ship
writes) needs no preprocessing code: MediaPipe Tasks' ``ImageClassifier`` loads it as it is, given the center square
the model was trained on as its region of interest. A Core ML package gets Swift for Vision, which reads the labels
and the image input from the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mobiforge.backend_api import AppSnippets, get_backend
from mobiforge.card import ModelCard

_KOTLIN_PREPROCESS = """\
// Preprocessing of this model: resize the short side to {resize}, center-crop {size}x{size}, RGB scaled to [0, 1],
// then (x - mean) / std per channel, laid out as NCHW float32 [1, 3, {size}, {size}].
val MEAN = floatArrayOf({mean})
val STD = floatArrayOf({std})
val CLASSES = arrayOf({classes})

fun toInput(bitmap: Bitmap): FloatArray {{
    val scale = {resize}f / minOf(bitmap.width, bitmap.height)
    val resized = Bitmap.createScaledBitmap(
        bitmap, Math.round(bitmap.width * scale), Math.round(bitmap.height * scale), true)
    val crop = Bitmap.createBitmap(resized, (resized.width - {size}) / 2, (resized.height - {size}) / 2, {size}, {size})
    val pixels = IntArray({size} * {size})
    crop.getPixels(pixels, 0, {size}, 0, 0, {size}, {size})
    val input = FloatArray(3 * {size} * {size})
    for (i in pixels.indices) {{
        val p = pixels[i]
        input[i] = (((p shr 16) and 0xFF) / 255f - MEAN[0]) / STD[0]
        input[{plane} + i] = (((p shr 8) and 0xFF) / 255f - MEAN[1]) / STD[1]
        input[2 * {plane} + i] = ((p and 0xFF) / 255f - MEAN[2]) / STD[2]
    }}
    return input
}}
"""

_SWIFT_PREPROCESS = """\
// Preprocessing of this model: resize the short side to {resize}, center-crop {size}x{size}, RGB scaled to [0, 1],
// then (x - mean) / std per channel, laid out as NCHW float32 [1, 3, {size}, {size}].
let mean: [Float] = [{mean}]
let std: [Float] = [{std}]
let classes = [{classes}]

/// `rgba`: the {size}x{size} center crop as RGBA bytes (e.g. drawn into a CGContext of that size).
func toInput(rgba: [UInt8]) -> [Float] {{
    var input = [Float](repeating: 0, count: 3 * {plane})
    for i in 0..<{plane} {{
        for c in 0..<3 {{
            input[c * {plane} + i] = (Float(rgba[4 * i + c]) / 255 - mean[c]) / std[c]
        }}
    }}
    return input
}}
"""


def kotlin_text(text: str) -> str:
    """``text`` as the inside of a Kotlin string literal: a class folder named ``ok ${1+1}`` or ``a"b`` stays text
    (``$`` starts a template in Kotlin strings)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 else c for c in escaped)


def swift_text(text: str) -> str:
    """``text`` as the inside of a Swift string literal (``\\(`` starts an interpolation in Swift strings)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(f"\\u{{{ord(c):x}}}" if ord(c) < 0x20 else c for c in escaped)


def _constants(card: ModelCard, text: Callable[[str], str]) -> dict[str, Any]:
    pre = card.preprocessing
    size = pre.crop
    file = card.artifact.file
    stem, _, ext = file.rpartition(".")
    return {
        "size": size,
        "plane": size * size,
        "resize": pre.resize,
        "mean": ", ".join(f"{value:.4f}f" for value in pre.mean),
        "std": ", ".join(f"{value:.4f}f" for value in pre.std),
        "classes": ", ".join(f'"{text(name)}"' for name in card.classes),
        "file": text(file),
        "stem": text(stem),
        "ext": text(ext),
        "version": runtime_version(card),
        "mediapipe": sdk_version(card),
        "crop_fraction": f"{size / pre.resize:.4f}",
        "crop_pct": f"{100 * size / pre.resize:.1f}",
    }


# The region of interest the MediaPipe snippets hand the SDK: what the model saw of each photo (``Preprocess.
# region_seen``, which export's gate hands MediaPipe too). A model whose preprocessing resizes the whole image to
# its input square (crop_pct 1, small images) sees all of it.
_ROI = {
    "kotlin": """\
    // The model saw the center {crop_pct}% of each photo's short side (resized to {resize}, cropped to {size}).
    val side = {crop_fraction}f * minOf(bitmap.width, bitmap.height)
    val x = (bitmap.width - side) / 2f / bitmap.width
    val y = (bitmap.height - side) / 2f / bitmap.height
    val roi = RectF(x, y, 1f - x, 1f - y)
""",
    "kotlin_whole": """\
    val roi = RectF(0f, 0f, 1f, 1f)  // the model saw each whole image, resized to {size}x{size}
""",
    "swift": """\
    // The model saw the center {crop_pct}% of each photo's short side (resized to {resize}, cropped to {size}).
    let side = {crop_fraction} * min(image.size.width, image.size.height)
    let roi = CGRect(x: (image.size.width - side) / 2 / image.size.width,
                     y: (image.size.height - side) / 2 / image.size.height,
                     width: side / image.size.width, height: side / image.size.height)
""",
    "swift_whole": """\
    let roi = CGRect(x: 0, y: 0, width: 1, height: 1)  // the model saw each whole image, resized to {size}x{size}
""",
}


def _with_roi(values: dict[str, Any], card: ModelCard) -> dict[str, Any]:
    whole = "_whole" if card.preprocessing.resize == card.preprocessing.crop else ""
    return {**values, **{f"{lang}_roi": _ROI[lang + whole].format(**values) for lang in ("kotlin", "swift")}}


def runtime_version(card: ModelCard) -> str:
    """The runtime version that wrote and verified the artifact (its Python package, recorded in the card), as
    the mobile library's release: ``1.5.1+cpu`` -> ``1.5.1``."""
    found = str(card.versions.get(get_backend(card.artifact.format).package, "")).split("+")[0]
    return found or "VERSION"  # not recorded: the reader fills it in


def sdk_version(card: ModelCard) -> str:
    """The version of the app-side SDK that ran the file in the gate (MediaPipe for LiteRT)."""
    package = get_backend(card.artifact.format).sdk_package
    return str(card.versions.get(package, "") if package else "").split("+")[0] or "VERSION"


def _app_code(card: ModelCard) -> AppSnippets:
    """The runtime's own templates for this file (one that takes pixels carries its labels and preprocessing)."""
    return get_backend(card.artifact.format).impl().app_snippets(card.preprocessing.pixels)


def android_snippet(card: ModelCard) -> str:
    """Kotlin: preprocessing with this model's constants, then loading and running the artifact."""
    values, code = _constants(card, kotlin_text), _app_code(card)
    if not code.preprocess:
        return code.kotlin.format(**_with_roi(values, card))
    return _KOTLIN_PREPROCESS.format(**values) + "\n" + code.kotlin.format(**values)


def ios_snippet(card: ModelCard) -> str:
    """Swift: the same for iOS (Swift's float literals have no ``f`` suffix)."""
    values, code = _constants(card, swift_text), _app_code(card)
    if not code.preprocess:
        return code.swift.format(**_with_roi(values, card))
    values["mean"] = values["mean"].replace("f", "")
    values["std"] = values["std"].replace("f", "")
    return _SWIFT_PREPROCESS.format(**values) + "\n" + code.swift.format(**values)
