"""What ``mobiforge ship`` is asked for, and the facts its plan is built on."""

from __future__ import annotations

from dataclasses import dataclass

from mobiforge.errors import EXIT_INTERRUPTED, MobiforgeError

TEACHER_MODEL = "efficientnet_lite0"  # the model zoo's network with real ImageNet weights on this machine
FILE_OVERHEAD = 1.12  # an int8 artifact is measured at up to ~11% above its int8 weight bytes (graph, scales)
SMALL_IMAGE_SIDE = 64  # images this small (CIFAR, digits) train at 32 px with the CIFAR-style stems
SMALL_INPUT_SIZE = 32
LARGE_INPUT_SIZES = (224, 160, 128)
MIN_EPOCHS = 3  # a second candidate is trained only if both get at least this many epochs
# From scratch on small images, fewer one-cycle epochs than this leave a network far from what it can reach
# (ResNet-20 on CIFAR-10, RESULTS.md#cifar10_time_to_accuracy_convpool: 85.4% after 16 epochs, 87.4% after 32 and still
# rising); ranking and sharing the budget use it. A judgement from those two runs, not a fitted curve.
SCRATCH_EPOCHS = 30
MAX_EPOCHS = 100
FIRST_LAYERS_IN_FLOAT = 2  # the stem and the first block: where int8 hurts MobileNet-family nets most


@dataclass(frozen=True)
class GridRow:
    """One architecture the search may try (at every input size of the data's regime; the model's ``Traits`` say
    which regimes)."""

    model: str
    width_mult: float | None


# Mobile families at widths whose int8 weights range from ~0.3 to ~2.5 MB, and for small images the conv-pool nets
# and the CIFAR ResNets (dense 3x3 convolutions train 2-4x faster per image on a CPU than depthwise ones:
# benchmarks/roofline.py). The search keeps those under the size budget and ranks them by what the time budget buys
# (see ``search.rank``).
CANDIDATE_GRID: tuple[GridRow, ...] = (
    GridRow("convpool_m", None),
    GridRow("convpool_s_wide", None),
    GridRow("convpool_s", None),
    GridRow("resnet56", None),
    GridRow("resnet44", None),
    GridRow("resnet32", None),
    GridRow("resnet20", None),
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


class ShipInterrupted(MobiforgeError):
    """Stopped by Ctrl-C; the finished stages are kept and a rerun resumes."""

    exit_code = EXIT_INTERRUPTED


CORE_ML = "coreml"  # the runtime row of the iOS package ship writes beside the shipped artifact
CORE_ML_SECONDS = 60.0  # its conversion and weight check, before scoring: about 35 s for EfficientNet-Lite0 on 2 cores
# val images (evenly spaced) the package is scored on, at most: its simulated fp16 pass is slow on CPUs (about 12
# images/s for a pruned EfficientNet-Lite0 at 224 px on 2 cores), so the count is cut to what the time left scores;
# the shipped artifact itself is judged on all of them
CORE_ML_IMAGES = 1000
CORE_ML_MIN_IMAGES = 50  # fewer would say nothing about how the package computes: it is skipped
