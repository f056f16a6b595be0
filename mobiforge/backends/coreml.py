"""Core ML: coremltools converts the ``torch.export`` graph to an ML program (``.mlpackage``, iOS 16 or later).

The package is what Xcode and Vision take as it is: an image input (RGB, scaled to 0-1 by the input's own scale;
Core ML's image scale is one number for all channels, so a per-channel normalisation such as ImageNet's is the
graph's first op), a classifier output with the labels (``classLabel`` and ``classLabel_probs``), and with int8 the
weights stored as 8-bit integers per output channel (``linear_quantize_weights``; activations stay float16, as
Core ML computes them on the Neural Engine).

Core ML runs only on Apple platforms, so nothing here runs the file: ``inspect`` reads back what coremltools can
read without a Mac (the input, the labels, which weights are 8-bit) and ``simulated`` is the PyTorch model with the
same int8 rounding of the same weights (BatchNorm folded first, as the converter does), for export's report.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiforge.backend_api import AppSnippets, BackendImpl, Int8Job, Interface, Runner, Simulator, runnable_suffixes
from mobiforge.errors import MobiforgeError, missing
from mobiforge.log import native_stderr_silenced
from mobiforge.quantize import fold_batchnorms

NOT_RUN_HERE = "not run on this host: Core ML runs only on Apple platforms (macOS, iOS)"
# The app code: Swift for Vision (``VNCoreMLRequest``), which reads the labels and the image input from the package
SWIFT = """\
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
SPECIFICATION_TARGETS = {7: "iOS 16", 8: "iOS 17", 9: "iOS 18"}  # Core ML's model specification versions
WEIGHT_THRESHOLD = 2048  # tensors with fewer elements stay float16 (coremltools' default; depthwise kernels, biases)


class Normalised(nn.Module):
    """RGB in 0-1 in (the image input's scale); the per-channel normalisation and softmax inside the graph."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model((image - self.mean) / self.std), dim=1)


class Float16(nn.Module):
    """The model computing in float16, weights and activations, as Core ML does by default."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.half()).float()


@dataclass
class Declared:
    """What a package declares, read back from its spec."""

    image: str  # "224x224 RGB"
    specification: int
    labels: list[str]
    int8_tensors: int
    constants: int


def read_back(path: Path) -> Declared:
    """The package's image input, labels and weight storage, from its spec (coremltools reads it without a Mac)."""
    ct = _coremltools()
    with native_stderr_silenced():
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    image = spec.description.input[0].type.imageType
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[next(iter(function.block_specializations))]
    labels: list[str] = []
    int8 = tensors = 0
    for op in block.operations:
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            labels = [value.immediateValue.tensor.strings.values[0] for value in values]
        int8 += op.type == "constexpr_affine_dequantize" or op.type.startswith("constexpr_blockwise")
        tensors += op.type == "const" or op.type.startswith("constexpr")
    colour = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
    return Declared(f"{image.width}x{image.height} {colour}", spec.specificationVersion, labels, int8, tensors)


def _convert(model: nn.Module, example: torch.Tensor, interface: Interface | None) -> Any:
    ct = _coremltools()
    mean, std = (interface.mean, interface.std) if interface else ((0.0,) * 3, (1.0,) * 3)
    labels = list(interface.classes) if interface and interface.classes else None
    program = torch.export.export(Normalised(model.eval(), mean, std).eval(), (example,)).run_decompositions({})
    image = ct.ImageType(name="image", shape=tuple(example.shape), scale=1 / 255.0, color_layout=ct.colorlayout.RGB)
    with native_stderr_silenced():
        mlmodel = ct.convert(
            program,
            inputs=[image],
            classifier_config=ct.ClassifierConfig(labels) if labels else None,
            minimum_deployment_target=ct.target.iOS16,
        )
    if interface is not None and interface.about is not None:  # shown in Xcode's model view
        about = interface.about
        mlmodel.short_description, mlmodel.version = about.description, about.version
        mlmodel.license = about.license or "not stated"
        mlmodel.user_defined_metadata["name"] = about.name
    return mlmodel


def _save(mlmodel: Any, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with native_stderr_silenced():
        mlmodel.save(str(path))


def _coremltools() -> Any:
    try:
        import coremltools
        import coremltools.optimize.coreml
    except ImportError:
        raise missing("coremltools") from None
    return coremltools


class CoreML(BackendImpl):
    NOT_RUN = NOT_RUN_HERE

    def write(self, model: nn.Module, example: torch.Tensor, path: Path, interface: Interface | None = None) -> Path:
        mlmodel = _convert(model, example, interface)
        _save(mlmodel, path)
        return path  # float16 weights and activations: Core ML's default for ML programs (the Neural Engine's type)

    def write_int8(self, model: nn.Module, job: Int8Job, path: Path) -> tuple[None, str]:
        ct = _coremltools()
        optimize = ct.optimize.coreml
        config = optimize.OptimizationConfig(
            global_config=optimize.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
            )
        )
        mlmodel = _convert(model, job.example, job.interface)
        with native_stderr_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-zero channel (pruned) has scale 0: stored as 0
            mlmodel = optimize.linear_quantize_weights(mlmodel, config=config)
        _save(mlmodel, path)
        return None, "Core ML: int8 weights per output channel (8-bit storage), float16 activations"

    def simulated(self, model: nn.Module, int8: bool) -> nn.Module:
        """``model`` computing as the package does: in float16, and with ``int8`` BatchNorm folded into its convs and
        every weight of WEIGHT_THRESHOLD elements or more rounded to int8 per output channel, symmetric, as
        ``linear_quantize_weights`` stores it."""
        folded = fold_batchnorms(model, [""])  # a copy
        if not int8:
            return Float16(folded).eval()
        with torch.no_grad():
            for module in folded.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.numel() >= WEIGHT_THRESHOLD:
                    weight = module.weight
                    scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / 127.0
                    module.weight.copy_(torch.where(scale > 0, (weight / scale).round().clamp(-127, 127) * scale, 0.0))
        return Float16(folded).eval()

    def inspect(self, path: Path) -> list[str]:
        """What the package declares, as report notes: its image input, its labels, its 8-bit weights."""
        found = read_back(path)
        labels = ", ".join(found.labels) if len(found.labels) <= 10 else f"{len(found.labels)} classes"
        target = SPECIFICATION_TARGETS.get(found.specification, "a later iOS")
        return [
            f"image input {found.image}; specification version {found.specification} ({target} or later)",
            f"labels in the package: {labels}",
            f"{found.int8_tensors} weight tensors stored in 8 bits (of {found.constants} constants)",
        ]

    def runner(self, path: Path, threads: int, interface: Interface | None = None) -> Runner:
        raise MobiforgeError(f"{path}: {NOT_RUN_HERE}; run it in Xcode, or run a {runnable_suffixes()} export here")

    def input_shape(self, path: Path) -> tuple[int, ...]:
        raise MobiforgeError(f"{path}: {NOT_RUN_HERE}")

    def int8_simulator(self, model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
        raise MobiforgeError(
            "the float-layer search runs int8 in a runtime; Core ML's int8 is weights only (no search)"
        )

    def app_snippets(self, pixels: bool) -> AppSnippets:
        return AppSnippets(kotlin="", swift=SWIFT, preprocess=False)
