"""One place per runtime: the ``BACKENDS`` table, one row per runtime, each naming the module that implements it.

A row says what the rest of mobiforge needs to know without loading the runtime: the ``--format``/``--runtime``
name, the file suffix, the packages it needs and the extra that brings them, whether it can take a QAT graph and
whether its files take any batch size. The CLI's choices, export's suffixes, the report's versions and ship's QAT
step all derive from it. The implementation (writers, int8 quantization, runner, input shape) lives in one module
per runtime (``executorch.py``, ``litert.py``, ``onnx.py``), loaded on first use so that this table stays free of
torch and ``mobiforge --help`` stays fast.

Adding a runtime means adding its module and one ``Backend`` row (``register_backend`` does it from outside the
package; the tests register a fake one). An implementation provides:

- ``write(model, example, path, interface)``: the fp32 artifact; ``interface`` (an ``Interface``) says what the app
  feeds the file and reads from it (a backend may lay out its input for its SDKs and write the labels into the file);
- ``write_int8(model, job, path) -> (reference, note)``: the int8 artifact from an ``Int8Job``; ``reference`` is
  the simulated-int8 PyTorch model it was converted from (``None`` where there is none), ``note`` says how;
- ``int8_simulator(model, job, images, scratch) -> (float_modules -> logits)``: int8 logits with some layer groups
  left in float, for export's float-layer search (``scratch`` is a file path it may use; the caller removes it);
- ``runner(path, threads, interface) -> (float32 NCHW batch -> logits)``, and ``input_shape(path)`` (the runner's
  NCHW shape, whatever the file's own layout); ``interface`` is None unless the row says ``pixel_input``. Callers
  reach a runner only through ``mobiforge.runtimes.load_runner``, which hands it a C-contiguous float32 NCHW numpy
  array whatever it was given (a tensor of any strides or dtype): the runner then lays it out as its runtime
  declares (NHWC, uint8 pixels, quantized input);
- where the row says it does not run here (Core ML): ``simulated(model, int8)``, the PyTorch model computing as
  the file does,
  and ``inspect(path) -> notes``, what can be read back from the file;
- optionally ``sdk_top1(path, images) -> (sdk name, predicted indices)``: the file classified by the app-side SDK
  that loads it on phones (MediaPipe Tasks for LiteRT), on (uint8 RGB HWC image, ``Region`` or None) pairs of any
  size, which the SDK resizes itself, for export's gate;
- optionally ``embedded_info(path) -> (classes, mean, std) | None``: what the file's own metadata says, for a file
  that travelled without the report export writes beside it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class Backend:
    """One runtime: what is known of it without importing it, and where its implementation lives."""

    name: str  # the --format / --runtime value
    suffix: str  # of the files it writes and runs
    title: str  # for people: the runtime and how it runs on the phone
    package: str  # the pip distribution whose version a report records
    modules: tuple[str, ...]  # importable modules it needs to export and run
    implementation: str | Any  # "module" path (imported on first use), or an object with the functions above
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

    def check_header(self, path: Path) -> None:
        """Refuse a file whose header is not this runtime's, before a native loader can abort on it."""
        if not self.magic:
            return
        with open(path, "rb") as stream:
            head = stream.read(self.magic_offset + len(self.magic))
        if not head or head[self.magic_offset :] != self.magic:
            raise MobiforgeError(
                f"{path}: not a {self.suffix} file of {self.title} ({'empty' if not head else 'its header is wrong'}); "
                "export it again with mobiforge export"
            )

    def impl(self) -> Any:
        """The implementation, importing its module on first use."""
        if isinstance(self.implementation, str):
            return importlib.import_module(self.implementation)
        return self.implementation

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

    def to_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float images (NCHW) back to the uint8 RGB pixels they came from (exact for decoded images)."""
        import numpy as np

        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return np.clip(np.rint((batch * std + mean) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Int8Job:
    """What an int8 writer gets: an example input, calibration batches, the layer groups to leave in float, and
    ``pt2e(quantizer, fold)``, which returns the model quantized through torchao's PT2E flow with that quantizer
    (calibrated for PTQ, fine-tuned for QAT: the export decides which)."""

    example: torch.Tensor
    calibration: Sequence[torch.Tensor]
    float_modules: tuple[str, ...]
    qat: bool
    pt2e: Callable[[Any, bool], nn.Module]
    reduce_range: bool | None = None  # 7-bit weights where a runtime's int8 kernels saturate (None: it decides)
    interface: Interface | None = None


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
    """The runtime of an artifact, by its suffix."""
    suffix = Path(path).suffix
    for backend in BACKENDS.values():
        if backend.suffix == suffix:
            return backend
    expected = ", ".join(backend.suffix for backend in BACKENDS.values())
    raise MobiforgeError(f"{path}: unknown artifact type; expected one of {expected}")


def is_artifact(path: str | Path) -> bool:
    return any(Path(path).suffix == backend.suffix for backend in BACKENDS.values())


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
        implementation="mobiforge.backends.executorch",
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
        implementation="mobiforge.backends.litert",
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
        implementation="mobiforge.backends.onnx",
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
        implementation="mobiforge.backends.coreml",
        supports_qat=False,
        no_qat_reason="its int8 is post-training weight quantization (coremltools' linear_quantize_weights)",
        runs_here=False,
    )
)
