"""LiteRT (TensorFlow Lite): litert-torch converts the PyTorch graph to ``.tflite``; ai-edge-litert runs it.

The file is laid out for the mobile SDKs that load it as it is (MediaPipe Tasks ``ImageClassifier``, ML Kit custom
models): NHWC input (litert-torch's ``to_channel_last_io``); uint8 RGB pixels with the normalisation folded into the
graph when the interface asks for ``pixels`` (ship's default); softmax probabilities out (the runner returns their
log: the logits less each image's log-sum-exp); and TFLite metadata written by MediaPipe's ``metadata_writers``: the
labels, the input's normalisation and its description. ``sdk_top1`` classifies images in
MediaPipe's ``ImageClassifier`` for export's gate.

int8 graphs are annotated by litert-torch's own quantizer through ``quantize.mobilenet_quantizer``, the PT2E helper
ExecuTorch shares: it quantizes ReLU6 after the conv it clamps, which litert-torch's quantizer alone does not (it lost
32 top-1 points on a CIFAR-10 MobileNetV2 that way, RESULTS.md#export_cifar10; the annotators side by side:
RESULTS.md#litert_annotators_mobilenet_v2_ptq). litert-torch then converts, told by its quantizer config that the
graph is statically quantized.
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from collections.abc import Iterable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backend_api import About, AppSnippets, BackendImpl, Int8Job, Interface, Region, Runner, Simulator
from mobiforge.errors import MobiforgeError, missing
from mobiforge.log import debug_requested, native_stderr_silenced
from mobiforge.quantize import PT2E_NOTE, mobilenet_quantizer, pt2e_simulator

# The app code: LiteRT's ``Interpreter`` on normalised floats, or, for a file that takes pixels and carries its labels
# (what ship writes), MediaPipe Tasks' ``ImageClassifier``, which needs no preprocessing code: it is handed the center
# square the model was trained on as its region of interest ({kotlin_roi}, {swift_roi}).
KOTLIN = """\
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
"""
SWIFT = """\
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
"""
MEDIAPIPE_KOTLIN = """\
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
"""
MEDIAPIPE_SWIFT = """\
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
"""
# The metadata's normalisation of a pixel-input file: the graph normalises, so the SDK hands it the pixels as they are.
PIXELS_AS_THEY_ARE = ([0.0], [1.0])
# The schema version a metadata parser needs for what the image-classifier writer writes (the schema's first: no
# tokenizers, tensor groups, audio, ScaNN files, file versions or custom metadata)
METADATA_PARSER_VERSION = "1.0.0"


class PixelInput(nn.Module):
    """uint8 RGB pixels in (0-255, NCHW); the model gets them normalised, by two ops folded into its graph."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        std_t, mean_t = torch.tensor(std).view(1, -1, 1, 1), torch.tensor(mean).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)
        self.training = False  # inference only, as Probabilities

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.float() * self.scale + self.shift)


class Probabilities(nn.Module):
    """Softmax probabilities out, as the SDKs show them (scores in 0-1). It also keeps an int8 graph's output in
    float32: litert-torch gives an int8 graph int8 outputs, which MediaPipe Tasks refuses, and folds away identity
    ops after the last dequantize; a softmax stays."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = False  # inference only (set here: an int8 reference, an exported graph, refuses .eval())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(images), dim=1)


def litert_quantizer(float_modules: Sequence[str] = (), qat: bool = False) -> Any:
    """litert-torch's PT2E quantizer: per-channel symmetric int8 weights, static int8 activations; with ReLU6 fused
    and ``float_modules`` left in float (``quantize.mobilenet_quantizer``)."""
    return mobilenet_quantizer(litert_own_quantizer(qat), _litert_config(qat), float_modules)


def _litert_config(qat: bool) -> Any:
    try:
        from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    except ImportError:
        raise missing("litert-torch") from None
    return get_symmetric_quantization_config(is_per_channel=True, is_qat=qat, is_dynamic=False)


def litert_own_quantizer(qat: bool = False) -> Any:
    """litert-torch's own quantizer, as its converter wants to be told how the graph was quantized. For QAT, without
    its conv-BN patterns: litert-torch 0.10 builds them by exporting a function, which torch 2.14's ``export``
    refuses; LiteRT's QAT folds every BatchNorm into its conv first instead (``write_int8``), which is exact on the
    running statistics that QAT fine-tunes on by default."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    class FoldedBatchNormQuantizer(PT2EQuantizer):  # type: ignore[misc]
        STATIC_QAT_ONLY_OPS: list[str] = []

    return FoldedBatchNormQuantizer().set_global(_litert_config(qat))


# ------------------------------------------------------------------------------------------------------ metadata


def write_metadata(path: Path, interface: Interface) -> None:
    """TFLite metadata as MediaPipe Tasks and ML Kit read it: the labels in output order, the input's normalisation
    in pixel units (255 times the model's), RGB image input, and what the card says of the model (name, version,
    description, licence). Written as MediaPipe's image-classifier writer writes it, with the model's own facts in
    place of its generic name."""
    _, metadata_writer = _metadata_writers()
    if interface.pixels:
        mean, std = PIXELS_AS_THEY_ARE
    else:
        mean, std = [255.0 * m for m in interface.mean], [255.0 * s for s in interface.std]
    about = interface.about or About("image classifier", "", "Image classifier, exported by mobiforge")
    writer = metadata_writer.MetadataWriter(bytearray(path.read_bytes()))
    writer.add_general_info(about.name, about.description)
    # the schema's version and licence fields, which add_general_info leaves unset
    writer._general_md.version, writer._general_md.licenses = about.version or None, about.license or None
    writer.add_image_input(mean, std)
    writer.add_classification_output(metadata_writer.Labels().add(list(interface.classes)))
    with native_stderr_silenced():
        model, _ = writer.populate()
    del writer  # something in populate keeps this frame alive; the writer's __del__ would then fail at exit
    path.write_bytes(model)


def read_labels(path: Path) -> list[str]:
    """The labels a file's metadata carries (empty: none), as the SDKs read them."""
    _metadata_writers()
    from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer

    try:
        displayer = MetadataDisplayer.with_model_file(str(path))
    except ValueError:  # no metadata in the file
        return []
    names = displayer.get_packed_associated_file_list()
    return displayer.get_associated_file_buffer(names[0]).decode().splitlines() if names else []


def _metadata_writers() -> tuple[Any, Any]:
    """MediaPipe's image-classifier metadata writer. mediapipe 1.2.3's wheel lacks the compiled module that its
    ``metadata.py`` imports for one function, the minimum parser version of a metadata buffer: a stand-in returns
    the version its writers need when that module is missing (a wheel that has it uses its own)."""
    try:
        from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("mediapipe.tasks.cc"):
            raise missing("mediapipe") from None
        _stand_in_version_module()
        from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer
    return image_classifier, metadata_writer


def _stand_in_version_module() -> None:
    package = "mediapipe.tasks.cc.metadata.python"
    stand_in = types.ModuleType(f"{package}._pywrap_metadata_version")
    stand_in.GetMinimumMetadataParserVersion = lambda buffer: METADATA_PARSER_VERSION  # type: ignore[attr-defined]
    for name in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", package):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[package]._pywrap_metadata_version = stand_in  # type: ignore[attr-defined]
    sys.modules[stand_in.__name__] = stand_in


# ------------------------------------------------------------------------------------------------------- running


def _distribution(output: np.ndarray) -> bool:
    return bool((output >= 0).all() and np.allclose(output.sum(axis=-1), 1.0, atol=1e-3))


def _channels_last(shape: Any) -> bool:
    return len(shape) == 4 and int(shape[3]) == 3 and int(shape[1]) != 3


def _litert_torch() -> Any:
    try:
        with native_stderr_silenced():  # TensorFlow's import-time oneDNN and absl notices
            import litert_torch
    except ImportError:
        raise missing("litert-torch") from None
    litert_torch.config.show_progress = debug_requested()  # its converter's stage lines: the user's output is theirs
    # litert-torch imports JAX, which then warns at every fork of the data loaders' workers; they only decode
    # images and never call into JAX, so the warning is not the user's to act on
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    return litert_torch


def _interpreter(path: Path, threads: int) -> Any:
    try:
        with native_stderr_silenced():
            from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise missing("ai-edge-litert") from None
    with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." goes to fd 2
        return Interpreter(model_path=str(path), num_threads=threads)


class LiteRT(BackendImpl):
    def write(
        self,
        model: nn.Module,
        example: torch.Tensor,
        path: Path,
        interface: Interface | None = None,
        quantizer: Any = None,
    ) -> Path:
        litert_torch = _litert_torch()
        from litert_torch.quantize.quant_config import QuantConfig

        quant_config = QuantConfig(pt2e_quantizer=quantizer) if quantizer is not None else None
        facing: nn.Module = Probabilities(model)
        if interface is not None and interface.pixels:
            facing = PixelInput(facing, interface.mean, interface.std)
        facing = litert_torch.to_channel_last_io(facing, args=[0])
        facing.training = False  # litert-torch warns about a module in training mode
        batch = interface.to_pixels(example.numpy()) if interface and interface.pixels else example.numpy()
        app_example = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 2, 3, 1)))  # NHWC, as apps hold images
        with native_stderr_silenced():  # the converter's op-count notice
            litert_torch.convert(facing, (app_example,), quant_config=quant_config).export(str(path))
        if interface is not None and interface.classes:
            write_metadata(path, interface)
        return path

    def write_int8(self, model: nn.Module, job: Int8Job, path: Path) -> tuple[nn.Module, str]:
        # the converter folds the weights itself; QAT trains on every BatchNorm folded (litert_own_quantizer)
        reference = job.pt2e(litert_quantizer(job.float_modules, qat=job.qat), False, fold_every_bn=True)
        self.write(reference, job.example, path, job.interface, litert_own_quantizer(job.qat))
        return reference, PT2E_NOTE

    def int8_simulator(self, model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
        return pt2e_simulator(model, job.calibration[:1], images, litert_quantizer)

    def embedded_info(self, path: Path) -> tuple[list[str], tuple[float, ...], tuple[float, ...]] | None:
        """The labels and the normalisation that a file's metadata carries, as MediaPipe reads them (mean and std in
        pixel units, returned on the 0-1 scale of mobiforge's preprocessing); None for a file without both. A
        pixel-input file says mean 0, std 1: the pixels as they are, which the runner gets back exactly."""
        labels = read_labels(path)
        if not labels:
            return None
        from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer

        metadata = json.loads(MetadataDisplayer.with_model_file(str(path)).get_metadata_json())
        for process in metadata["subgraph_metadata"][0]["input_tensor_metadata"][0].get("process_units", []):
            options = process.get("options", {})
            if "mean" in options and "std" in options:
                mean, std = [float(m) for m in options["mean"]], [float(s) for s in options["std"]]
                mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
                return labels, tuple(m / 255.0 for m in mean), tuple(s / 255.0 for s in std)
        return None

    def runner(self, path: Path, threads: int, interface: Interface | None = None) -> Runner:
        """Float32 NCHW in, float32 logits out, whatever the file's own input: an NHWC file gets the batch transposed;
        a pixel-input file gets the pixels the batch was normalised from (``interface`` says how); an int8 file with
        int8 inputs gets its input quantized and its output dequantized with the scales stored in the file, exactly as
        an app would do it."""
        interpreter = _interpreter(path, threads)
        with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter.allocate_tensors()
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        in_scale, in_zero = source["quantization"]
        out_scale, out_zero = target["quantization"]
        channels_last = _channels_last(source["shape"])
        pixels = source["dtype"] == np.uint8 and not in_scale
        if pixels and interface is None:
            raise MobiforgeError(
                f"{path}: takes uint8 pixels; its normalisation (in the .json export writes beside it) is missing: "
                "export it again"
            )

        def run(batch: np.ndarray) -> Any:
            if pixels:
                assert interface is not None
                batch = interface.to_pixels(batch)
            elif source["dtype"] != np.float32:  # int8 I/O: quantize with the file's own scale and zero point
                info = np.iinfo(source["dtype"])
                batch = np.clip(np.round(batch / in_scale + in_zero), info.min, info.max).astype(source["dtype"])
            if channels_last:
                batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
            interpreter.set_tensor(source["index"], batch)
            interpreter.invoke()
            output = interpreter.get_tensor(target["index"])
            if target["dtype"] != np.float32:
                output = (output.astype(np.float32) - out_zero) * out_scale
            if _distribution(output):  # probabilities (every file written here): their log, the logits up to a shift
                return np.log(np.maximum(output, np.finfo(np.float32).tiny))
            return output.copy()

        return run

    def input_shape(self, path: Path) -> tuple[int, ...]:
        """The runner's NCHW shape (an NHWC file's read back in that order)."""
        shape = tuple(int(side) for side in _interpreter(path, 1).get_input_details()[0]["shape"])
        return (shape[0], shape[3], shape[1], shape[2]) if _channels_last(shape) else shape

    def sdk_top1(self, path: Path, images: Iterable[tuple[np.ndarray, Region | None]]) -> tuple[str, np.ndarray]:
        """The file classified as an Android or iOS app runs it, by MediaPipe Tasks' ``ImageClassifier`` (which reads
        the labels and normalisation from the metadata): the top-1 class of each uint8 RGB image (HWC, any size: the
        SDK resizes it), within its region of interest (None: the whole image), as the snippets in ship's report hand
        it. A file the SDK refuses is a MobiforgeError saying why: MediaPipe takes one mean and std for all channels,
        so a float file normalised per channel (ImageNet's) runs there only with ``--uint8-input``, which folds the
        normalisation into the graph."""
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import vision
            from mediapipe.tasks.python.components.containers.rect import RectF
            from mediapipe.tasks.python.core.base_options import BaseOptions
            from mediapipe.tasks.python.vision.core.image_processing_options import ImageProcessingOptions
        except ImportError:
            raise missing("mediapipe") from None
        sdk = f"MediaPipe Tasks ImageClassifier (mediapipe {version('mediapipe')})"
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)

        def region_options(region: Region | None) -> Any:
            if region is None:
                return None
            left, top, right, bottom = region
            return ImageProcessingOptions(region_of_interest=RectF(left=left, top=top, right=right, bottom=bottom))

        try:
            with native_stderr_silenced(), vision.ImageClassifier.create_from_options(options) as classifier:
                top = [
                    classifier.classify(
                        mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)),
                        region_options(region),
                    )
                    .classifications[0]
                    .categories[0]
                    .index
                    for image, region in images
                ]
        except (NotImplementedError, ValueError, RuntimeError, IndexError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise MobiforgeError(f"{sdk} refuses this file: {reason}") from None
        return sdk, np.asarray(top)

    def app_snippets(self, pixels: bool) -> AppSnippets:
        if pixels:
            return AppSnippets(MEDIAPIPE_KOTLIN, MEDIAPIPE_SWIFT, preprocess=False)
        return AppSnippets(KOTLIN, SWIFT)
