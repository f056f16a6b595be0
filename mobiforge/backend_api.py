"""What mobiforge knows of each runtime, and what a runtime implements: the ``BACKENDS`` table and ``BackendImpl``.

A ``Backend`` row says what the rest of mobiforge needs to know without loading the runtime: the
``--format``/``--runtime`` name, the file suffix, the packages it needs and the extra that brings them, whether it
can take a QAT graph and whether its files take any batch size. The CLI's choices and help, export's suffixes, the
report's versions and ship's QAT step all derive from it. This module imports no runtime and no torch, so the CLI
offers the choices in ``mobiforge --help`` without loading anything (the base layer).

The implementation of each runtime is a ``BackendImpl`` subclass in its own module of ``mobiforge/backends/``
(``executorch.py``, ``litert.py``, ``onnx.py``, ``coreml.py``, ``web.py``), named by its row and imported on first
use, as ExecuTorch keeps ``exir/backend``'s interface apart from ``backends/xnnpack``. Adding a runtime is one module
and one row (``register_backend`` does it from outside the package; ``tests/test_backends.py`` registers a fake one, and
ship, export, profile and the CLI take it with no other edit).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobiforge.errors import MobiforgeError, missing
from mobiforge.log import native_stderr_silenced

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

# float32 NCHW batch -> float32 logits in the runtime (log-probabilities where the row says ``probabilities``)
Runner = Callable[["np.ndarray | torch.Tensor"], "np.ndarray"]
Region = tuple[float, float, float, float]  # an image's region of interest: left, top, right, bottom, as fractions
# the layer groups left in float -> int8 logits of the validation images (export's float-layer search)
Simulator = Callable[[Sequence[str]], "torch.Tensor"]


@dataclass(frozen=True)
class Backend:
    """One runtime: what is known of it without importing it, and where its implementation lives."""

    name: str  # the --format / --runtime value
    suffix: str  # of the files it writes and runs
    title: str  # for people: the runtime and how it runs on the phone
    package: str  # the pip distribution whose version a report records
    modules: tuple[str, ...]  # importable modules it needs to export and run
    implementation: str | BackendImpl  # "module:Class" (imported on first use), or an instance
    run_modules: tuple[str, ...] = ()  # of ``modules``, those running a file needs (predict imports only these)
    supports_qat: bool = True  # takes a QAT-trained PT2E graph
    no_qat_reason: str = ""  # why not, for the one-line error
    batched: bool = False  # its files take any batch size; otherwise batch 1, as phones run them
    magic: bytes = b""  # bytes every file of this runtime holds at magic_offset, checked before the runtime reads it
    magic_offset: int = 0
    pixel_input: bool = False  # can take uint8 RGB pixels with the normalisation folded into its graph
    probabilities: bool = False  # its files output softmax probabilities, and its runner their log (not logits)
    sdk_package: str = ""  # the pip distribution of the app-side SDK its gate runs the files in (``sdk_top1``)
    runs_here: bool = True  # its runtime runs on this host (Core ML runs only on Apple platforms)
    # A folder artifact holding this file is one of this runtime's, whatever the folder's name (the web folder)
    marker: str = ""
    loads: str = ""  # the file inside a folder artifact that the runner loads (checked and vetted as the artifact)

    def loaded_file(self, path: Path) -> Path:
        """The file the runtime reads: ``path`` itself, or the file inside a folder artifact."""
        return Path(path) / self.loads if self.loads else Path(path)

    def check_header(self, path: Path) -> None:
        """Refuse a file whose header is not this runtime's, before a native loader can abort on it."""
        if not self.magic:
            return
        path = self.loaded_file(path)
        with open(path, "rb") as stream:
            head = stream.read(self.magic_offset + len(self.magic))
        if not head or head[self.magic_offset :] != self.magic:
            raise MobiforgeError(
                f"{path}: not a {self.suffix} file of {self.title} ({'empty' if not head else 'its header is wrong'}); "
                "export it again with mobiforge export"
            )

    def impl(self) -> BackendImpl:
        """The implementation: an instance of the ``BackendImpl`` subclass its row names (``"module:Class"``,
        imported on first use), or the instance the row holds."""
        if isinstance(self.implementation, BackendImpl):
            return self.implementation
        module, _, name = self.implementation.partition(":")
        implementation = getattr(importlib.import_module(module), name)()
        assert isinstance(implementation, BackendImpl), f"{self.implementation} is not a BackendImpl"
        return implementation

    def require(self, to_run: bool = False) -> None:
        """Fail before any slow work when the runtime's packages are missing (``to_run``: those running a file
        needs), naming the extra to install. Their native libraries' import-time log lines (TensorFlow's oneDNN and
        absl notices) are not the user's output."""
        for module in self.run_modules if to_run else self.modules:
            try:
                with native_stderr_silenced():
                    importlib.import_module(module)
            except ImportError:
                raise missing(module.split(".")[0].replace("_", "-")) from None


@dataclass(frozen=True)
class About:
    """What a model card says of a model, written into the files whose formats carry it (TFLite metadata, Core ML's
    description): its name, version, one line on what it does, and its licence (empty: not stated, never assumed)."""

    name: str
    version: str
    description: str
    license: str = ""


@dataclass(frozen=True)
class Interface:
    """What an app feeds an artifact and reads from it: the normalisation the model was trained with, the class of
    each output in order (empty: none to write), and whether the file takes uint8 RGB pixels, 0-255, with that
    normalisation folded into its graph (``pixels``) rather than normalised floats."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    pixels: bool = False
    about: About | None = None  # what the file's own metadata says of the model, where its format has a place
    preprocess: dict[str, Any] | None = None  # ``Preprocess.to_dict()``: for a runtime whose app does its own resize

    def to_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float images (NCHW) back to the uint8 RGB pixels they came from (exact for decoded images)."""
        import numpy as np

        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return np.clip(np.rint((batch * std + mean) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Int8Job:
    """What an int8 writer gets: an example input, calibration batches, the layer groups to leave in float, and
    ``pt2e(quantizer, fold, fold_every_bn=False)``, which returns the model quantized through torchao's PT2E flow
    with that quantizer (calibrated for PTQ, fine-tuned for QAT: the export decides which; ``fold_every_bn`` folds
    every BatchNorm into its conv before QAT, for a quantizer without conv-BN patterns)."""

    example: torch.Tensor
    calibration: Sequence[torch.Tensor]
    float_modules: tuple[str, ...]
    qat: bool
    pt2e: Callable[..., nn.Module]
    reduce_range: bool | None = None  # 7-bit weights where a runtime's int8 kernels saturate (None: it decides)
    interface: Interface | None = None


@dataclass(frozen=True)
class AppSnippets:
    """Kotlin and Swift that load a file of one runtime and classify an image with it: templates that
    ``ship.snippets`` fills with the model card's constants (``{file}``, ``{size}``, ``{version}``...; braces of the
    code itself doubled). ``preprocess``: the code calls the shared preprocessing snippet (``toInput``), which is
    put before it; a file that takes pixels and carries its labels needs none. Empty: no app code for that
    platform."""

    kotlin: str
    swift: str
    preprocess: bool = True


class BackendImpl(ABC):
    """What each runtime implements. Callers reach a runner only through ``mobiforge.runtimes.load_runner``, which
    hands it a C-contiguous float32 NCHW numpy array whatever it was given; the runner then lays it out as its
    runtime declares (NHWC, uint8 pixels, quantized input)."""

    NOT_RUN = ""  # why its files are not run on this host, where its row says ``runs_here=False``

    @abstractmethod
    def write(self, model: nn.Module, example: torch.Tensor, path: Path, interface: Interface | None = None) -> Path:
        """The fp32 artifact. ``interface`` says what the app feeds the file and reads from it (a runtime may lay
        out its input for its SDKs and write the labels into the file)."""

    @abstractmethod
    def write_int8(self, model: nn.Module, job: Int8Job, path: Path) -> tuple[nn.Module | None, str]:
        """The int8 artifact, and (the simulated-int8 PyTorch model it was converted from, or None; how)."""

    @abstractmethod
    def int8_simulator(self, model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
        """int8 logits with some layer groups left in float, for export's float-layer search (``scratch``: a file
        path it may use; the caller removes it)."""

    @abstractmethod
    def runner(self, path: Path, threads: int, interface: Interface | None = None) -> Runner:
        """float32 NCHW batch -> logits; ``interface`` is given only where the row says ``pixel_input``."""

    @abstractmethod
    def input_shape(self, path: Path) -> tuple[int, ...]:
        """The runner's NCHW input shape, whatever the file's own layout."""

    @abstractmethod
    def app_snippets(self, pixels: bool) -> AppSnippets:
        """The app code of a file of this runtime (``pixels``: one that takes uint8 pixels)."""

    def simulated(self, model: nn.Module, int8: bool) -> nn.Module:
        """The PyTorch model computing as the file does, for a runtime that does not run here."""
        raise NotImplementedError(f"{type(self).__name__} runs its files here")

    def inspect(self, path: Path) -> list[str]:
        """What can be read back from a file this host cannot run."""
        return []

    def sdk_top1(self, path: Path, images: Iterable[tuple[np.ndarray, Region | None]]) -> tuple[str, np.ndarray] | None:
        """The file classified by the app-side SDK that loads it on phones (MediaPipe Tasks for LiteRT), on (uint8
        RGB HWC image, region or None) pairs of any size, which the SDK resizes itself: (SDK name, predicted
        indices), for export's gate. None: the runtime has no such SDK check."""
        return None

    def embedded_info(self, path: Path) -> tuple[list[str], tuple[float, ...], tuple[float, ...]] | None:
        """(classes, mean, std) from the file's own metadata, for a file that travelled without its report."""
        return None


BACKENDS: dict[str, Backend] = {}
DEFAULT_RUNTIME = "executorch"  # what export, quantize and ship write unless told otherwise


def register_backend(backend: Backend) -> Backend:
    """Add a runtime to the table; a name or suffix already taken is an error, not a silent override."""
    for other in BACKENDS.values():
        if backend.name == other.name or backend.suffix == other.suffix:
            raise ValueError(f"backend {backend.name} ({backend.suffix}) clashes with {other.name} ({other.suffix})")
    BACKENDS[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    BACKENDS.pop(name, None)


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise MobiforgeError(f"unknown runtime {name!r}; choose one of {', '.join(BACKENDS)}") from None


def backend_for(path: str | Path) -> Backend:
    """The runtime of an artifact, by its suffix, or for a folder by the marker file in it."""
    suffix = Path(path).suffix
    for backend in BACKENDS.values():
        if backend.suffix == suffix or (backend.marker and (Path(path) / backend.marker).is_file()):
            return backend
    expected = ", ".join(backend.suffix for backend in BACKENDS.values())
    raise MobiforgeError(f"{path}: unknown artifact type; expected one of {expected}")


def is_artifact(path: str | Path) -> bool:
    return any(
        Path(path).suffix == backend.suffix or (backend.marker and (Path(path) / backend.marker).is_file())
        for backend in BACKENDS.values()
    )


def runnable_suffixes() -> str:
    """The suffixes of the files mobiforge runs here, for help and errors: ``.pte, .tflite or .onnx``."""
    suffixes = [backend.suffix for backend in BACKENDS.values() if backend.runs_here]
    return ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else "".join(suffixes)


register_backend(
    Backend(
        name="executorch",
        suffix=".pte",
        title="ExecuTorch, XNNPACK delegate",
        package="executorch",
        modules=("executorch.exir", "executorch.runtime"),
        run_modules=("executorch.runtime",),
        implementation="mobiforge.backends.executorch:ExecuTorch",
        magic=b"ET",  # a flatbuffer with the file identifier ET<version> (ET12 today) after the root offset
        magic_offset=4,
    )
)
register_backend(
    Backend(
        name="tflite",
        suffix=".tflite",
        title="LiteRT (TensorFlow Lite)",
        package="ai-edge-litert",
        modules=("litert_torch", "ai_edge_litert.interpreter"),
        run_modules=("ai_edge_litert.interpreter",),
        implementation="mobiforge.backends.litert:LiteRT",
        magic=b"TFL3",  # the TFLite flatbuffer file identifier
        magic_offset=4,
        pixel_input=True,
        probabilities=True,
        sdk_package="mediapipe",
    )
)
register_backend(
    Backend(
        name="onnx",
        suffix=".onnx",
        title="ONNX Runtime",
        package="onnxruntime",
        modules=("onnx", "onnxscript", "onnxruntime"),
        run_modules=("onnxruntime",),
        implementation="mobiforge.backends.onnx:OnnxRuntime",
        supports_qat=False,
        no_qat_reason="ONNX Runtime quantizes fp32 graphs (use --int8 ptq), and the exporter cannot yet write "
        "PT2E's quantize/dequantize ops",
        batched=True,
        magic=b"\x08",  # a ModelProto starts with field 1, ir_version, as a varint
    )
)
register_backend(
    Backend(
        name="coreml",
        suffix=".mlpackage",  # a folder: the model spec and its weights
        title="Core ML (iOS, macOS)",
        package="coremltools",
        modules=("coremltools",),
        implementation="mobiforge.backends.coreml:CoreML",
        supports_qat=False,
        no_qat_reason="its int8 is post-training weight quantization (coremltools' linear_quantize_weights)",
        runs_here=False,
    )
)
register_backend(
    Backend(
        name="web",
        suffix=".web",  # a folder: the page, the model file and the runtime, to serve as it is
        title="the browser (LiteRT.js, WebAssembly)",
        package="ai-edge-litert",  # the Python side of the same file (the page's runtime: web/package-lock.json)
        modules=("litert_torch", "ai_edge_litert.interpreter"),
        run_modules=("ai_edge_litert.interpreter",),
        implementation="mobiforge.backends.web:Web",
        magic=b"TFL3",  # of the .tflite file inside
        magic_offset=4,
        pixel_input=True,  # its file always takes uint8 pixels: the page hands it the canvas's bytes
        probabilities=True,
        sdk_package="playwright",  # the gate runs the page in headless Chromium
        marker="page.json",
        loads="model.tflite",
    )
)
