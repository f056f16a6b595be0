"""What ``mobiforge ship`` is asked for, and the facts its plan is built on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mobiforge.backends import DEFAULT_RUNTIME
from mobiforge.data import BUILTIN_DATASETS
from mobiforge.errors import MobiforgeError

TEACHER_MODEL = "efficientnet_lite0"  # the model zoo's network with real ImageNet weights on this machine
FILE_OVERHEAD = 1.12  # an int8 artifact is measured at up to ~11% above its int8 weight bytes (graph, scales)
SMALL_IMAGE_SIDE = 64  # images this small (CIFAR, digits) train at 32 px with the CIFAR-style stems
SMALL_INPUT_SIZE = 32
LARGE_INPUT_SIZES = (224, 160, 128)
MIN_EPOCHS = 3  # a second candidate is trained only if both get at least this many epochs
MAX_EPOCHS = 100
TEACHER_MAX_EPOCHS = 10  # fine-tuning from ImageNet weights converges in a few epochs
FIRST_LAYERS_IN_FLOAT = 2  # the stem and the first block: where int8 hurts MobileNet-family nets most


@dataclass(frozen=True)
class GridRow:
    """One architecture the search may try (at every input size of the data's regime)."""

    model: str
    width_mult: float | None


# Mobile families at widths whose int8 weights range from ~0.3 to ~2.5 MB: the search keeps those under the size
# budget and ranks them by MACs.
CANDIDATE_GRID: tuple[GridRow, ...] = (
    GridRow("mobilenet_v2", 1.0),
    GridRow("mobilenet_v2", 0.75),
    GridRow("mobilenet_v3_small", 1.0),
    GridRow("mobilenet_v1", 0.5),
    GridRow("mobilenet_v2", 0.5),
    GridRow("mobilenet_v3_small", 0.75),
    GridRow("mobilenet_v2", 0.35),
    GridRow("mobilenet_v3_small", 0.5),
    GridRow("shufflenet_v2_x0_5", None),
)


@dataclass
class ShipConfig:
    """What ``mobiforge ship`` is asked for; saved in the state file (a rerun must ask for the same)."""

    data: str = "digits"
    max_size: int = 1_000_000  # bytes of the int8 artifact file, what goes on the device
    max_latency_ms: float = 100.0  # median batch-1 latency in the runtime, on ``threads`` threads, on this machine
    runtime: str = DEFAULT_RUNTIME  # a name from mobiforge.backends.BACKENDS
    threads: int = 1
    time_budget_s: float = 1800.0
    teacher: str = "auto"  # auto | none | a checkpoint
    out: str | None = None  # default: runs/ship-<data name>
    max_drop: float = 1.0  # the accuracy gate: int8 top-1 through the runtime vs the fp32 model's, in points
    models: list[str] | None = None  # restrict the search to these families (e.g. ["mobilenet_v2"])
    img_size: int | None = None  # force one input size instead of the data's regime
    max_candidates: int = 3  # fitting candidates the search looks for
    max_trained: int = 2  # of which at most this many are trained
    batch_size: int | None = None  # default: 128 for small images, 32 for large
    workers: int | None = None  # None: training picks (see DataConfig.workers), 2 elsewhere
    val_images: int | None = None  # the gate's validation images (evenly spaced subset; default: all)
    skip_bad_images: bool = False
    seed: int = 0

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        name = "digits" if self.data in BUILTIN_DATASETS else (Path(self.data).resolve().name or "data")
        return Path("runs") / f"ship-{name}"


class ShipInterrupted(MobiforgeError):
    """Stopped by Ctrl-C; the finished stages are kept and a rerun resumes."""

    exit_code = 130
