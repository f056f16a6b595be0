""" "Use it in your app": Android (Kotlin) and iOS (Swift) code that loads a shipped artifact in its runtime and
feeds it one image preprocessed exactly as the model was trained (resize, center crop, normalise, NCHW float32).

The snippets are templates filled with the model's own constants; the API names follow each runtime's documented
mobile bindings (ExecuTorch ``org.pytorch.executorch`` / ``ExecuTorch`` Swift package, ONNX Runtime
``OrtSession`` / ``ORTSession``). A LiteRT file that takes pixels and carries its labels in its metadata (what ship
writes) needs no preprocessing code: MediaPipe Tasks' ``ImageClassifier`` loads it as it is, and the snippet gives
it the center square the model was trained on as its region of interest. A Core ML package gets Swift for Vision
(``VNCoreMLRequest``), which reads the labels and the image input from the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mobiforge.backends import get_backend

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

_KOTLIN_RUN = {
    "executorch": """\
// build.gradle: implementation("org.pytorch:executorch-android:{version}")  // the version that exported it
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

val module = Module.load(context.filesDir.resolve("{file}").absolutePath)  // copy the asset to files/ first

fun classify(bitmap: Bitmap): String {{
    val input = Tensor.fromBlob(toInput(bitmap), longArrayOf(1, 3, {size}, {size}))
    val logits = module.forward(EValue.from(input))[0].toTensor().dataAsFloatArray
    return CLASSES[logits.indices.maxBy {{ logits[it] }}]
}}
""",
    "tflite": """\
// build.gradle: implementation("com.google.ai.edge.litert:litert:{version}")  // the version that verified it
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder

val interpreter = Interpreter(loadModelFile(context, "{file}"))  // a MappedByteBuffer of the asset

fun classify(bitmap: Bitmap): String {{
    val chw = toInput(bitmap)
    val input = ByteBuffer.allocateDirect(4 * 3 * {plane}).order(ByteOrder.nativeOrder())
    val floats = input.asFloatBuffer()
    for (i in 0 until {plane}) for (c in 0 until 3) floats.put(chw[c * {plane} + i])  // NHWC, as the file takes it
    val scores = Array(1) {{ FloatArray(CLASSES.size) }}  // probabilities
    interpreter.run(input, scores)
    return CLASSES[scores[0].indices.maxBy {{ scores[0][it] }}]
}}
""",
    "onnx": """\
// build.gradle: implementation("com.microsoft.onnxruntime:onnxruntime-android:{version}")  // as verified
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import java.nio.FloatBuffer

val env = OrtEnvironment.getEnvironment()
val session = env.createSession(context.assets.open("{file}").readBytes())

fun classify(bitmap: Bitmap): String {{
    val input = OnnxTensor.createTensor(env, FloatBuffer.wrap(toInput(bitmap)), longArrayOf(1, 3, {size}, {size}))
    session.run(mapOf("input" to input)).use {{ result ->
        val logits = (result[0].value as Array<FloatArray>)[0]
        return CLASSES[logits.indices.maxBy {{ logits[it] }}]
    }}
}}
""",
}

_MEDIAPIPE = {
    "kotlin": """\
// build.gradle: implementation("com.google.mediapipe:tasks-vision:RELEASE")
// The gate ran this file in MediaPipe {mediapipe} for Python. Android releases are published to Maven Central on
// their own schedule and not at every Python version: use the newest there (mvnrepository.com lists them).
import android.graphics.RectF
import com.google.mediapipe.framework.image.BitmapImageBuilder
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.vision.core.ImageProcessingOptions
import com.google.mediapipe.tasks.vision.imageclassifier.ImageClassifier

// {file} carries its labels and takes RGB pixels as they are: its normalisation is inside the graph.
val classifier = ImageClassifier.createFromOptions(context, ImageClassifier.ImageClassifierOptions.builder()
    .setBaseOptions(BaseOptions.builder().setModelAssetPath("{file}").build())
    .setMaxResults(5)
    .build())

fun classify(bitmap: Bitmap): String {{
{kotlin_roi}    val result = classifier.classify(BitmapImageBuilder(bitmap).build(),
        ImageProcessingOptions.builder().setRegionOfInterest(roi).build())
    return result.classificationResult().classifications()[0].categories()[0].categoryName()
}}
""",
    "swift": """\
// CocoaPods: pod 'MediaPipeTasksVision'  (the newest release: not every Python version has an iOS one)
// The gate ran this file in MediaPipe {mediapipe} for Python.
import MediaPipeTasksVision

// {file} carries its labels and takes RGB pixels as they are: its normalisation is inside the graph.
let options = ImageClassifierOptions()
options.baseOptions.modelAssetPath = Bundle.main.path(forResource: "{stem}", ofType: "{ext}")!
options.maxResults = 5
let classifier = try ImageClassifier(options: options)

func classify(image: UIImage) throws -> String {{
{swift_roi}    let result = try classifier.classify(image: try MPImage(uiImage: image), regionOfInterest: roi)
    return result.classificationResult.classifications[0].categories[0].categoryName ?? ""
}}
""",
}

_CORE_ML_SWIFT = """\
// Xcode: add {file} to the app target (Xcode compiles it to {stem}.mlmodelc). iOS 16 or later.
// The package carries its labels and its preprocessing (an RGB image input; the normalisation is in its graph).
import CoreML
import Vision

let model = try VNCoreMLModel(for: MLModel(contentsOf: Bundle.main.url(forResource: "{stem}",
                                                                     withExtension: "mlmodelc")!))

func classify(image: CGImage) throws -> String {{
    // The model saw the center {crop_pct}% of each photo's short side (resized to {resize}, cropped to {size}).
    let width = CGFloat(image.width), height = CGFloat(image.height)
    let side = {crop_fraction} * min(width, height)
    let request = VNCoreMLRequest(model: model)
    request.regionOfInterest = CGRect(x: (width - side) / 2 / width, y: (height - side) / 2 / height,
                                      width: side / width, height: side / height)
    request.imageCropAndScaleOption = .scaleFill  // the region is already square
    try VNImageRequestHandler(cgImage: image).perform([request])
    return (request.results as? [VNClassificationObservation])?.first?.identifier ?? ""
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

_SWIFT_RUN = {
    "executorch": """\
// Swift Package: https://github.com/pytorch/executorch, products ExecuTorch + XNNPACK backend
import ExecuTorch

let module = Module(filePath: Bundle.main.path(forResource: "{stem}", ofType: "{ext}")!)

func classify(rgba: [UInt8]) throws -> String {{
    let input = Tensor<Float>(toInput(rgba: rgba), shape: [1, 3, {size}, {size}])
    let logits: Tensor<Float> = try module.forward(input)[0].tensor()!
    let scores = logits.scalars()
    return classes[scores.indices.max {{ scores[$0] < scores[$1] }}!]
}}
""",
    "tflite": """\
// CocoaPods: pod 'TensorFlowLiteSwift' (LiteRT)
import TensorFlowLite

let interpreter = try Interpreter(modelPath: Bundle.main.path(forResource: "{stem}", ofType: "{ext}")!)

func classify(rgba: [UInt8]) throws -> String {{
    try interpreter.allocateTensors()
    let chw = toInput(rgba: rgba)
    let input = (0..<3 * {plane}).map {{ chw[($0 % 3) * {plane} + $0 / 3] }}  // NHWC, as the file takes it
    try interpreter.copy(input.withUnsafeBufferPointer {{ Data(buffer: $0) }}, toInputAt: 0)
    try interpreter.invoke()
    let output = try interpreter.output(at: 0)
    let scores = output.data.withUnsafeBytes {{ Array($0.bindMemory(to: Float.self)) }}  // probabilities
    return classes[scores.indices.max {{ scores[$0] < scores[$1] }}!]
}}
""",
    "onnx": """\
// CocoaPods: pod 'onnxruntime-objc'
import onnxruntime_objc

let env = try ORTEnv(loggingLevel: .warning)
let session = try ORTSession(env: env, modelPath: Bundle.main.path(forResource: "{stem}", ofType: "{ext}")!,
                             sessionOptions: nil)

func classify(rgba: [UInt8]) throws -> String {{
    var input = toInput(rgba: rgba)
    let data = NSMutableData(bytes: &input, length: input.count * MemoryLayout<Float>.size)
    let tensor = try ORTValue(tensorData: data, elementType: .float, shape: [1, 3, {size}, {size}])
    let outputs = try session.run(withInputs: ["input": tensor], outputNames: ["logits"], runOptions: nil)
    let bytes = try outputs["logits"]!.tensorData() as Data
    let scores = bytes.withUnsafeBytes {{ Array($0.bindMemory(to: Float.self)) }}
    return classes[scores.indices.max {{ scores[$0] < scores[$1] }}!]
}}
""",
}


def kotlin_text(text: str) -> str:
    """``text`` as the inside of a Kotlin string literal: a class folder named ``ok ${1+1}`` or ``a"b`` stays text
    (``$`` starts a template in Kotlin strings)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 else c for c in escaped)


def swift_text(text: str) -> str:
    """``text`` as the inside of a Swift string literal (``\\(`` starts an interpolation in Swift strings)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(f"\\u{{{ord(c):x}}}" if ord(c) < 0x20 else c for c in escaped)


def _constants(card: dict[str, Any], text: Callable[[str], str]) -> dict[str, Any]:
    pre = card["preprocessing"]
    size = pre["crop"]
    file = card["artifact"]["file"]
    stem, _, ext = file.rpartition(".")
    return {
        "size": size,
        "plane": size * size,
        "resize": pre["resize"],
        "mean": ", ".join(f"{value:.4f}f" for value in pre["mean"]),
        "std": ", ".join(f"{value:.4f}f" for value in pre["std"]),
        "classes": ", ".join(f'"{text(name)}"' for name in card["classes"]),
        "file": text(file),
        "stem": text(stem),
        "ext": text(ext),
        "version": runtime_version(card),
        "mediapipe": sdk_version(card),
        "crop_fraction": f"{size / pre['resize']:.4f}",
        "crop_pct": f"{100 * size / pre['resize']:.1f}",
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


def _with_roi(values: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    whole = "_whole" if card["preprocessing"]["resize"] == card["preprocessing"]["crop"] else ""
    return {**values, **{f"{lang}_roi": _ROI[lang + whole].format(**values) for lang in ("kotlin", "swift")}}


def _sdk_ready(card: dict[str, Any]) -> bool:
    """A LiteRT file that takes pixels (and so carries its metadata): MediaPipe Tasks loads it as it is."""
    return card["artifact"]["format"] == "tflite" and card["preprocessing"].get("dtype") == "uint8"


def runtime_version(card: dict[str, Any]) -> str:
    """The runtime version that wrote and verified the artifact (its Python package, recorded in the card), as
    the mobile library's release: ``1.5.1+cpu`` -> ``1.5.1``."""
    versions = card.get("versions") or {}
    found = str(versions.get(get_backend(card["artifact"]["format"]).package, "")).split("+")[0]
    return found or "VERSION"  # not recorded: the reader fills it in


def sdk_version(card: dict[str, Any]) -> str:
    """The version of the app-side SDK that ran the file in the gate (MediaPipe for LiteRT)."""
    package = get_backend(card["artifact"]["format"]).sdk_package
    return str((card.get("versions") or {}).get(package, "")).split("+")[0] or "VERSION"


def android_snippet(card: dict[str, Any]) -> str:
    """Kotlin: preprocessing with this model's constants, then loading and running the artifact."""
    values = _constants(card, kotlin_text)
    if _sdk_ready(card):
        return _MEDIAPIPE["kotlin"].format(**_with_roi(values, card))
    return _KOTLIN_PREPROCESS.format(**values) + "\n" + _KOTLIN_RUN[card["artifact"]["format"]].format(**values)


def ios_snippet(card: dict[str, Any]) -> str:
    """Swift: the same for iOS (Swift's float literals have no ``f`` suffix)."""
    values = _constants(card, swift_text)
    if card["artifact"]["format"] == "coreml":
        return _CORE_ML_SWIFT.format(**values)
    if _sdk_ready(card):
        return _MEDIAPIPE["swift"].format(**_with_roi(values, card))
    values["mean"] = values["mean"].replace("f", "")
    values["std"] = values["std"].replace("f", "")
    return _SWIFT_PREPROCESS.format(**values) + "\n" + _SWIFT_RUN[card["artifact"]["format"]].format(**values)
