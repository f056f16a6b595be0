"""What runs a frozen trunk forward for the feature cache (``transfer``): eager PyTorch in inference mode (bf16
autocast where the CPU has native bf16), or the trunk exported to ONNX and run by ONNX Runtime in fp32.

The trunk's passes are the expensive part of transfer learning on a CPU (issue 23), and eager PyTorch is not the
fastest way to run a fixed network forward: ONNX Runtime folds each BatchNorm into its convolution and fuses the
activations into the kernels. ``auto`` exports the trunk and times both engines on a few batches, but only when the
eager pass would take long enough to repay the export (``TRIAL_MIN_SECONDS``; a cache of a few hundred images stays
eager, and records nothing). A trial's choice is written into the cache folder, named by the trunk's weights, cut
and input size, so that a resumed or later run with the same trunk reads the same precision back, and with it the
same cache key.

ONNX Runtime's fp32 and eager fp32 outputs agree to well within the fp16 the cache stores (``tests/test_trunk.py``),
so the engine is not part of the cache key; the precision is.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobiforge import engine
from mobiforge.config import TRUNK_ENGINES
from mobiforge.errors import MobiforgeError, missing
from mobiforge.files import write_atomic
from mobiforge.log import logger

TRIAL_MIN_SECONDS = 60.0  # auto tries ONNX Runtime only for an eager pass estimated longer (the export takes 5-30 s)
TRIAL_BATCH = 32
TRIAL_ROUNDS = 3


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
    dtype: torch.dtype | None  # the precision it computes in (None: fp32); the cache key holds it
    run: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.engine} {'bf16' if self.dtype == torch.bfloat16 else 'fp32'}"


def eager_pass(trunk: nn.Module, dtype: torch.dtype | None) -> TrunkPass:
    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return trunk(images).float()

    return TrunkPass("eager", dtype, run)


def onnxruntime_pass(trunk: nn.Module, img_size: int) -> TrunkPass:
    """The trunk exported to ONNX (fp32, dynamic batch), exported and loaded on its first call, run by ONNX Runtime
    on this process's threads."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise missing("onnxruntime and onnxscript") from None
    session = None

    def run(images: torch.Tensor) -> torch.Tensor:
        nonlocal session
        if session is None:
            session = _session(onnxruntime, trunk, img_size)
        return torch.from_numpy(session.run(None, {"images": images.contiguous().numpy()})[0])

    return TrunkPass("onnxruntime", None, run)


def _session(onnxruntime: object, trunk: nn.Module, img_size: int) -> object:
    started = time.perf_counter()
    example = torch.zeros(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    options = onnxruntime.SessionOptions()  # type: ignore[attr-defined]
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:  # the exporter's and the runtime's failures come from deep inside torch.export and ONNX Runtime
        program = torch.onnx.export(
            trunk.eval(), (example,), dynamo=True, dynamic_shapes=({0: batch},), input_names=["images"], verbose=False
        )
        session = onnxruntime.InferenceSession(  # type: ignore[attr-defined]
            program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        raise MobiforgeError(
            f"--trunk-engine onnxruntime: this trunk does not export to or load in ONNX Runtime "
            f"({type(error).__name__}); use --trunk-engine eager"
        ) from None
    logger.debug("trunk exported to ONNX Runtime in %.1f s", time.perf_counter() - started)
    return session


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
    trunk: nn.Module, img_size: int, engine_name: str, amp: str, passes: int, memo: Path
) -> TrunkPass:
    """The trunk pass for ``passes`` images: the engine named, or with ``auto`` the one ``memo`` recorded for this
    trunk, else the faster of the two where the eager pass is long enough to try (recorded in ``memo``), else
    eager."""
    if engine_name not in TRUNK_ENGINES:
        raise MobiforgeError(f"--trunk-engine must be one of {', '.join(TRUNK_ENGINES)}, got {engine_name!r}")
    eager = eager_pass(trunk, trunk_dtype(amp))
    if engine_name == "eager":
        return eager
    if engine_name == "onnxruntime":
        return onnxruntime_pass(trunk, img_size)
    recorded = _read_memo(memo)
    if recorded is not None:
        return _recorded_pass(recorded, trunk, img_size, eager)
    if passes / images_per_second(eager, img_size, batch=8) < TRIAL_MIN_SECONDS:
        return eager  # not recorded: a later, longer pass over this trunk is still worth a trial
    chosen, speeds = _trial(trunk, img_size, eager)
    write_atomic(memo, json.dumps({"engine": chosen.label, "images_per_second": speeds}, indent=1))
    return chosen


def _trial(trunk: nn.Module, img_size: int, eager: TrunkPass) -> tuple[TrunkPass, dict[str, float]]:
    speeds = {}
    try:
        exported = onnxruntime_pass(trunk, img_size)
        speeds[eager.label] = images_per_second(eager, img_size)
        speeds[exported.label] = images_per_second(exported, img_size)
    except MobiforgeError as error:  # onnxruntime missing or the trunk not exportable: eager is what there is
        logger.debug("trunk engine trial: %s", error)
        return eager, {}  # recorded, so that later runs do not try again
    faster = exported if speeds[exported.label] > speeds[eager.label] else eager
    return faster, {label: round(speed, 1) for label, speed in speeds.items()}


def _recorded_pass(label: str, trunk: nn.Module, img_size: int, eager: TrunkPass) -> TrunkPass:
    """The pass a memo names; fp32 eager where ONNX Runtime was recorded but is gone (the same cache key)."""
    if label == eager.label:
        return eager
    if label.startswith("onnxruntime"):
        try:
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
