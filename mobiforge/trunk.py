"""What runs a frozen trunk forward for the feature cache (``transfer``): eager PyTorch in inference mode (bf16
autocast where the CPU has native bf16), or the trunk exported to ONNX and run by ONNX Runtime in fp32, or in int8
(static QDQ quantization calibrated on the folder's own images, ``onnx_int8``).

The trunk's passes are the expensive part of transfer learning on a CPU (issue 23), and eager PyTorch is not the
fastest way to run a fixed network forward: ONNX Runtime folds each BatchNorm into its convolution and fuses the
activations into the kernels. ``auto`` exports the trunk and times both engines on a few batches, but only when the
eager pass would take long enough to repay the export (``TRIAL_MIN_SECONDS``; a cache of a few hundred images stays
eager, and records nothing). A trial's choice is written into the cache folder, named by the trunk's weights, cut
and input size, so that a resumed or later run with the same trunk reads the same precision back, and with it the
same cache key.

ONNX Runtime's fp32 and eager fp32 outputs agree to well within the fp16 the cache stores (``tests/test_trunk.py``),
so the engine is not part of the cache key; the precision is. An int8 trunk is another trunk: its calibration is
part of the key (``TrunkPass.variant``). ``auto`` keeps it only where its features point where fp32's do
(``INT8_MIN_COSINE`` on images it was not calibrated on).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobiforge import engine
from mobiforge.config import TRUNK_ENGINES
from mobiforge.errors import MobiforgeError, missing
from mobiforge.files import write_atomic
from mobiforge.log import logger
from mobiforge.onnx_int8 import cpu_needs_reduce_range, onnx_static_int8

TRIAL_MIN_SECONDS = 60.0  # auto tries ONNX Runtime only for an eager pass estimated longer (the export takes 5-30 s)
TRIAL_BATCH = 32
TRIAL_ROUNDS = 3
# int8 is kept only where its pooled features point where fp32's do: their mean cosine similarity on images it was not
# calibrated on. EfficientNet-Lite0's int8 features against fp32's: 0.9945 on hymenoptera, 0.9794 on CIFAR-10 photos
# upscaled to 224 px, and the probe on them the same to the image on both (RESULTS.md#trunk_pass_hymenoptera,
# #trunk_pass_cifar10); a bound under both, with a margin.
INT8_MIN_COSINE = 0.97
# ONNX Runtime's threads spin between runs by default, taking the cores the next batch is decoded on meanwhile
ORT_SPINNING = False
Calibration = Callable[[], Sequence[torch.Tensor]]  # batches of the folder's own eval crops, built when needed


def trunk_dtype(amp: str) -> torch.dtype | None:
    """The eager trunk's precision: bf16 where the CPU runs it natively (``amp`` auto or bf16), else fp32. The
    trunk only runs forward, once, so bf16 costs no training stability; the tail trains in fp32."""
    if amp == "none" or amp == "fp16":
        return None
    if amp == "bf16" and not engine.cpu_has_native_bf16():
        warnings.warn("--amp bf16: this CPU has no native bf16; the trunk pass runs in fp32", stacklevel=2)
    return torch.bfloat16 if engine.cpu_has_native_bf16() else None


@dataclass(frozen=True)
class TrunkPass:
    """One way of running the trunk: ``run(images)`` gives its float outputs for a batch of images."""

    engine: str  # "eager" or "onnxruntime"
    dtype: torch.dtype | None  # the precision it computes in (None: fp32, torch.qint8: int8); the cache key holds it
    run: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, repr=False)
    variant: str = ""  # what else its outputs depend on (an int8 trunk's calibration); the cache key holds it

    @property
    def label(self) -> str:
        return f"{self.engine} {PRECISION_NAMES.get(self.dtype, 'fp32')}"


PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.qint8: "int8"}


def eager_pass(trunk: nn.Module, dtype: torch.dtype | None) -> TrunkPass:
    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return trunk(images).float()

    return TrunkPass("eager", dtype, run)


def cuda_pass(trunk: nn.Module, device: torch.device) -> TrunkPass:
    """The trunk on a GPU in fp16 autocast: a copy moved there (the caller's stays on the CPU, where its tail
    trains), the outputs brought back to the CPU, where the cache is written."""
    on_gpu = copy.deepcopy(trunk).to(device).to(memory_format=torch.channels_last)

    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            return on_gpu(images).float().cpu()

    return TrunkPass("cuda", torch.float16, run)


def onnxruntime_pass(trunk: nn.Module, img_size: int) -> TrunkPass:
    """The trunk exported to ONNX (fp32, dynamic batch), exported and loaded on its first call, run by ONNX Runtime
    on this process's threads."""
    onnxruntime = _onnxruntime()
    session = None

    def run(images: torch.Tensor) -> torch.Tensor:
        nonlocal session
        if session is None:
            session = _session(onnxruntime, _exported(trunk, img_size).SerializeToString())
        return torch.from_numpy(session.run(None, {"images": images.contiguous().numpy()})[0])

    return TrunkPass("onnxruntime", None, run)


def onnxruntime_int8_pass(trunk: nn.Module, img_size: int, calibration: Calibration) -> TrunkPass:
    """The trunk exported to ONNX and quantized to int8 (QDQ, per-channel weights; 7-bit where the CPU's int8
    kernels saturate) with its activations' ranges read on ``calibration``'s batches but the last, run by ONNX
    Runtime. Its variant names the calibration (the cache key holds it); it is quantized on its first call, so a
    pass whose rows are all read back costs only the calibration images' decode."""
    onnxruntime = _onnxruntime()
    batches = list(calibration())
    batches = batches[:-1] or batches  # the last is held out to check the int8 pass against fp32 (``_trial``)
    digest = hashlib.sha256(b"".join(batch.numpy().tobytes() for batch in batches)).hexdigest()[:16]
    session = None

    def run(images: torch.Tensor) -> torch.Tensor:
        nonlocal session
        if session is None:
            session = _int8_session(onnxruntime, trunk, img_size, batches)
        return torch.from_numpy(session.run(None, {"images": images.contiguous().numpy()})[0])

    return TrunkPass("onnxruntime", torch.qint8, run, f"int8 calibrated {digest}")


def _int8_session(onnxruntime: object, trunk: nn.Module, img_size: int, batches: list[torch.Tensor]) -> object:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mobiforge-trunk-") as folder:
        fp32 = Path(folder) / "trunk.onnx"
        fp32.write_bytes(_exported(trunk, img_size).SerializeToString())
        try:
            int8 = onnx_static_int8(fp32, fp32.with_name("trunk.int8.onnx"), batches, "images",
                                    reduce_range=cpu_needs_reduce_range())  # fmt: skip
        except MobiforgeError:
            raise
        except Exception as error:  # the quantizer's failures come from deep inside ONNX Runtime
            raise MobiforgeError(
                "--trunk-engine onnxruntime-int8: ONNX Runtime could not quantize this trunk "
                f"({type(error).__name__}); use --trunk-engine onnxruntime"
            ) from None
        session = _session(onnxruntime, int8.read_bytes())
    logger.debug("trunk quantized to int8 in %.1f s", time.perf_counter() - started)
    return session


def _onnxruntime() -> object:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise missing("onnxruntime and onnxscript") from None
    return onnxruntime


def _exported(trunk: nn.Module, img_size: int) -> object:
    """The trunk as an ONNX model (fp32, dynamic batch, input ``images``)."""
    started = time.perf_counter()
    example = torch.zeros(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:  # the exporter's failures come from deep inside torch.export
        program = torch.onnx.export(
            trunk.eval(), (example,), dynamo=True, dynamic_shapes=({0: batch},), input_names=["images"], verbose=False
        )
    except Exception as error:
        raise MobiforgeError(
            f"--trunk-engine onnxruntime: this trunk does not export to or load in ONNX Runtime "
            f"({type(error).__name__}); use --trunk-engine eager"
        ) from None
    logger.debug("trunk exported to ONNX in %.1f s", time.perf_counter() - started)
    return program.model_proto


def _session(onnxruntime: object, model: bytes) -> object:
    options = onnxruntime.SessionOptions()  # type: ignore[attr-defined]
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if ORT_SPINNING else "0")
    try:  # the runtime's failures come from deep inside ONNX Runtime
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    except Exception as error:
        raise MobiforgeError(
            f"--trunk-engine onnxruntime: this trunk does not export to or load in ONNX Runtime "
            f"({type(error).__name__}); use --trunk-engine eager"
        ) from None


def images_per_second(trunk_pass: TrunkPass, img_size: int, batch: int = TRIAL_BATCH) -> float:
    """The pass's speed on random images: the median of TRIAL_ROUNDS batches after a warm-up one."""
    images = torch.randn(batch, 3, img_size, img_size)
    trunk_pass.run(images)
    times = []
    for _ in range(TRIAL_ROUNDS):
        started = time.perf_counter()
        trunk_pass.run(images)
        times.append(time.perf_counter() - started)
    return batch / sorted(times)[len(times) // 2]


def choose_trunk_pass(
    trunk: nn.Module,
    img_size: int,
    engine_name: str,
    amp: str,
    passes: int,
    memo: Path,
    calibration: Calibration | None = None,
    device: torch.device | None = None,
) -> TrunkPass:
    """The trunk pass for ``passes`` images: the engine named, or with ``auto`` the one ``memo`` recorded for this
    trunk, else the fastest where the eager pass is long enough to try (recorded in ``memo``), else eager. int8 is
    one of those tried only with ``calibration`` (the folder's eval crops; the last batch is held out to check it).
    On a GPU ``device``, auto and eager run there (no trial: the CPU engines are not its rivals)."""
    if engine_name not in TRUNK_ENGINES:
        raise MobiforgeError(f"--trunk-engine must be one of {', '.join(TRUNK_ENGINES)}, got {engine_name!r}")
    if device is not None and device.type == "cuda" and engine_name in ("auto", "eager"):
        return cuda_pass(trunk, device)
    eager = eager_pass(trunk, trunk_dtype(amp))
    if engine_name == "eager":
        return eager
    if engine_name == "onnxruntime":
        return onnxruntime_pass(trunk, img_size)
    if engine_name == "onnxruntime-int8":
        if calibration is None:
            raise MobiforgeError("--trunk-engine onnxruntime-int8: this pass has no images to calibrate on")
        return onnxruntime_int8_pass(trunk, img_size, calibration)
    recorded = _read_memo(memo)
    if recorded is not None:
        return _recorded_pass(recorded, trunk, img_size, eager, calibration)
    if passes / images_per_second(eager, img_size, batch=8) < TRIAL_MIN_SECONDS:
        return eager  # not recorded: a later, longer pass over this trunk is still worth a trial
    chosen, trial = _trial(trunk, img_size, eager, calibration)
    write_atomic(memo, json.dumps({"engine": chosen.label, **trial}, indent=1))
    return chosen


def _trial(
    trunk: nn.Module, img_size: int, eager: TrunkPass, calibration: Calibration | None
) -> tuple[TrunkPass, dict[str, object]]:
    """The fastest pass of eager, ONNX Runtime fp32 and (with ``calibration``, where its features hold) int8, and
    what the trial measured."""
    speeds = {}
    try:
        exported = onnxruntime_pass(trunk, img_size)
        speeds[eager.label] = images_per_second(eager, img_size)
        speeds[exported.label] = images_per_second(exported, img_size)
    except MobiforgeError as error:  # onnxruntime missing or the trunk not exportable: eager is what there is
        logger.debug("trunk engine trial: %s", error)
        return eager, {"images_per_second": {}}  # recorded, so that later runs do not try again
    passes, measured = {eager.label: eager, exported.label: exported}, {}
    if calibration is not None:
        try:
            int8 = onnxruntime_int8_pass(trunk, img_size, calibration)
            measured["int8_cosine"] = round(int8_fidelity(int8, exported, calibration()[-1]), 4)
        except MobiforgeError as error:  # not quantizable: fp32 it is
            logger.debug("trunk engine trial, int8: %s", error)
        else:
            if measured["int8_cosine"] >= INT8_MIN_COSINE:
                speeds[int8.label] = images_per_second(int8, img_size)
                passes[int8.label] = int8
    fastest = max(speeds, key=speeds.__getitem__)
    return passes[fastest], {"images_per_second": {k: round(v, 1) for k, v in speeds.items()}, **measured}


def int8_fidelity(int8: TrunkPass, fp32: TrunkPass, images: torch.Tensor) -> float:
    """The mean cosine similarity of the int8 pass's outputs to fp32's, image by image."""
    got, expected = int8.run(images).flatten(1), fp32.run(images).flatten(1)
    return float(torch.nn.functional.cosine_similarity(got, expected, dim=1).mean())


def _recorded_pass(
    label: str, trunk: nn.Module, img_size: int, eager: TrunkPass, calibration: Calibration | None
) -> TrunkPass:
    """The pass a memo names; fp32 eager where ONNX Runtime was recorded but is gone (the same cache key)."""
    if label == eager.label:
        return eager
    if label.startswith("onnxruntime"):
        try:
            if label.endswith("int8") and calibration is not None:
                return onnxruntime_int8_pass(trunk, img_size, calibration)
            return onnxruntime_pass(trunk, img_size)
        except MobiforgeError:
            return eager_pass(trunk, None)
    return eager_pass(trunk, torch.bfloat16 if label.endswith("bf16") else None)


def recorded_speed(memo: Path) -> float | None:
    """Images per second of the engine ``memo`` recorded, as its trial measured it (None: no trial recorded)."""
    try:
        recorded = json.loads(memo.read_text())
        return float(recorded["images_per_second"][recorded["engine"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_memo(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["engine"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def memo_path(folder: Path, trunk_digest: str, cut: int | None, img_size: int, amp: str) -> Path:
    """Where the engine chosen for this trunk (weights, cut, input size, precision setting) is recorded."""
    name = hashlib.sha256(f"{trunk_digest}|{cut}|{img_size}|{amp}".encode()).hexdigest()[:24]
    return folder / f"engine-{name}.json"
