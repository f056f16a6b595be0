"""Ship's policy: every tuning value and training recipe of ``mobiforge ship``, each with its reason once.

The stages read these names; no bare number in them is a tuning value. A reason cites the record it came from
(``benchmarks/RESULTS.md#<section>``, made by ``benchmarks/``) or says that it is a judgement. The sections follow
the run: the data's regime, the search, the teacher's ladder, the students, the time plan, the exports and their
gate, the Core ML package, the shortfall headline and the clock. Changing a value here is a change to ship's
behaviour: judge it with the battery (``python -m benchmarks.battery``), not one dataset.
"""

from __future__ import annotations

import dataclasses

from mobiforge.config import PRETRAINED_TRUNK, DistillConfig, PruneConfig
from mobiforge.engine import OptimConfig
from mobiforge.ship.config import GridRow

# ------------------------------------------------------------------------------------------------ the data

TEACHER_MODEL = PRETRAINED_TRUNK  # ship's teacher and the doctor's features: real ImageNet weights
SMALL_IMAGE_SIDE = 64  # images this small (CIFAR, digits) train at 32 px with the CIFAR-style stems
SURVEY_IMAGES = 32  # training images, evenly spaced, whose median side decides the regime (a judgement)
SMALL_INPUT_SIZE = 32
LARGE_INPUT_SIZES = (224, 160, 128)
SMALL_BATCH = 128  # batch size for small images (the CIFAR recipes' own)
LARGE_BATCH = 32  # ... and for larger ones (torchvision's ImageNet references' per-GPU batch; a judgement here)
# RandomResizedCrop's smallest crop: torchvision's 0.08 for small images, 0.25 for photos (a judgement: an 8% crop of
# a photo may miss its subject)
SMALL_MIN_SCALE = 0.08
LARGE_MIN_SCALE = 0.25

# Mobile families at widths whose int8 weights range from ~0.3 to ~2.5 MB, and for small images the conv-pool nets
# and the CIFAR ResNets (dense 3x3 convolutions train 2-4x faster per image on a CPU than depthwise ones:
# benchmarks/roofline.py). The search keeps those under the size budget and ranks them by what the time budget buys
# (see ``search.rank``). Each row runs at every input size of the data's regime; the model's ``Traits`` say which.
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

# The doctor's feature checks inside ship (the probe's folds, Datalab's kNN, the order test) on features already
# cached: about 3.5 ms an image on 2 cores (CIFAR-10's 60,000: some 210 s of the 873 s that included the trunk pass,
# RESULTS.md#doctor_cifar10). They run only when that estimate fits in this share of the time left.
HEALTH_SECONDS_PER_IMAGE = 0.0035
HEALTH_SHARE = 0.05

# ------------------------------------------------------------------------------------------------ the search

FILE_OVERHEAD = 1.12  # an int8 artifact is measured at up to ~11% above its int8 weight bytes (graph, scales)
# Every pruned layer loses the same share (so the search's estimate, pruned by magnitude before any data is read,
# has the student's shapes); which channels go is scored by the training data's gradients (Taylor): before any
# training, a probe on the pruned features scored 84% on hymenoptera where magnitude (L1) scored 75%
# (RESULTS.md#pruned_student_hymenoptera).
PRUNING = PruneConfig(checkpoint="", ratio=0.5, importance="taylor")
KEPT_SHARE = 1 / 3  # of the pruned teacher's int8 bytes, at most, in its first blocks left whole
PRUNE_TARGET_SHARE = 0.98  # a re-aimed pruned teacher aims its file this far under the size budget
SEARCH_SHARE = 0.2  # of the time left, at most, for measuring candidates (after the first)
# The search's share is never shorter, and no candidate (not even the first) is measured with less of the budget
# left: a file's export and timing took 62 s with two other busy processes on 2 cores (issue 44).
SEARCH_MIN_SECONDS = 30.0
# ... and a candidate made from the pretrained teacher needs twice that: one took 62 s to measure with two other busy
# processes (20 s without), and after it come the teacher's pass over the data and the student's export
# (RESULTS.md#busy_budget).
PRETRAINED_MEASURE_SECONDS = 60.0
# Of the whole budget, at most, for the training-speed probes: 12 probes took 55 s of a 4-minute demo (issue 43)
PROBE_SHARE = 0.10
REAIM_TRIES = 3  # smaller files tried for a teacher-made candidate that came out too large (each a measurement)
BF16_GAIN = 1.1  # bf16 autocast trains a candidate only when its probe is at least this much faster than fp32
MIN_EPOCHS = 3  # a second candidate is trained only if both get at least this many epochs
# From scratch on small images, fewer one-cycle epochs than this leave a network far from what it can reach
# (ResNet-20 on CIFAR-10, RESULTS.md#cifar10_time_to_accuracy_convpool: 85.4% after 16 epochs, 87.4% after 32 and still
# rising); ranking and sharing the budget use it. A judgement from those two runs, not a fitted curve.
SCRATCH_EPOCHS = 30
MAX_EPOCHS = 100

# ------------------------------------------------------------------------------------------- the teacher's ladder

TEACHER_SHARE = 1 / 3  # of the time left, at most, for the teacher's ladder: the students train from it after
PROBE_EPOCHS = 30  # epochs of the classifier alone: seconds on cached features
# The fewest a probe may get when time is short: a tiny folder in a 2-minute budget had 23 s for the teacher, under
# the 30-epoch probe's fixed costs (about 25 s, for 24 images), and so shipped nothing (RESULTS.md#battery_tiny)
PROBE_MIN_EPOCHS = 10
TAIL_EPOCHS = 20  # at most, for the teacher's tail on cached inputs
FULL_MIN_EPOCHS = 2
FULL_MAX_EPOCHS = 10  # fine-tuning from ImageNet weights converges in a few epochs
TEACHER_TAILS = (3,)  # the teacher's tail rung: its last 3 blocks (the head conv counts as one)
# Views per training image, the most whose trunk passes are cheap. A student learns from the teacher's logits on
# each: distilled on 4 views of hymenoptera's 244 photos, it learned them by heart (train loss 0.04 at epoch 40)
# while its val top-1 stood still. The teacher's own rungs learn from labels, and take at most 4.
VIEWS = (16, 8, 4, 2)
TEACHER_VIEWS = (4, 2)
CHEAP_VIEWS_SHARE = 0.15  # "cheap": the trunk passes of the views take at most this share of the seconds
MARGIN = 1.3  # estimates from random-data timings ran ~1.3x short of real epochs (decoding, evaluation)
CACHE_PASS_FIXED_SECONDS = 10.0  # a cache pass's cost beyond its images: loaders, memo files (a judgement)
CACHED_EPOCH_FIXED_SECONDS = 0.5  # ... and a cached epoch's (its features are in memory; a judgement)
LOWER_SIZES = (160, 128)  # input sizes the teacher's probe tries below its own, in this order
# A folder larger than the budget passes through (mobiforge.ship.subsets): the probe rungs train on the most photos
# whose probe, with the fewest views, fits in this share of the teacher's time (the rungs above it get the rest);
# never fewer than SUBSET_MIN_PER_CLASS per class. Judgements, not measured optima: 50,000 CIFAR-10 photos fit whole
# in 30 minutes here (RESULTS.md#battery_large_folder), so the subset starts above that.
SUBSET_PROBE_SHARE = 0.5
SUBSET_MIN_PER_CLASS = 20
# The learning curve: the probe on these shares of its photos. More photos pay where the last doubling gained at
# least CURVE_GAIN points of val top-1 (a judgement: about the noise of a 1,000-photo val split).
CURVE_SHARES = (0.25, 0.5, 1.0)
CURVE_GAIN = 1.0
SIZE_TOLERANCE = 0.5  # probe val top-1 points a lower input size may lose and still be taken

# ------------------------------------------------------------------------------------------------ the students

STUDENT_TAIL_EPOCHS = 40  # at most, for a student's tail: its new or narrowed layers learn from far less
MIN_TAIL_EPOCHS = 6  # a tail rung with fewer is not worth its cache pass
FULL_MAX_STUDENT_EPOCHS = 30  # a student's full fine-tune after its tail rung
STUDENT_TAILS = (4, 3, 2, 1)  # a truncated student's tails, most trainable first (its head conv is new)
# Of the time left, at most, for a cached student when more candidates wait: the first is ranked best, and the
# proxy's pruned student still gained 1-5 val points an epoch when 60% ended it at 6 epochs.
CACHED_SHARE = 0.75
# A pruned student takes all the time when only the truncated form of the same teacher waits: that one is its
# fallback (it trains when the pruned one does not ship). The pruned student, every stage of the teacher kept, beat
# the truncated one on each set measured: hymenoptera at 10 and 30 minutes and the CIFAR-10 proxy
# (RESULTS.md#ship_hymenoptera_10m, #ship_proxy).
FALLBACK_SOURCE = "truncated"
FIRST_OF_TWO_SHARE = 0.6  # of the time left after the exports, for the first of two or more trained candidates
PRUNE_RECALIBRATION_IMAGES = 512  # training images that re-estimate a pruned student's BatchNorm statistics
TAYLOR_PASS_COST = 3  # forward passes an image costs in the Taylor gradients' pass (a forward and a backward)
# From scratch, best.pt and the gate are decided on BatchNorm statistics re-estimated on this many training
# images: after a short run the running averages lag the weights (a 3-minute digits run evaluated at 10%).
PRECISE_BN_IMAGES = 1024

# ------------------------------------------------------------------------------------------------ the time plan

# Before anything has shipped, the last candidate still trains when the time left after its export holds this
# share of an epoch (its one epoch then ends at most half an epoch past the budget); with less, nothing trains and
# the run says the time ran out: the budget holds on a busy machine, and a resumed run past it trains nothing.
FIRST_EPOCH_SHARE = 0.5
DEADLINE_MARGIN = 1.05  # an epoch is expected to end before a deadline if it would with 5% to spare
EPOCH_FIXED_SECONDS = 3.0  # an epoch's cost beyond its images: the loaders' start and the checkpoint's write
FORWARD_SPEEDUP = 3.0  # a forward pass alone (evaluation, a teacher's logits) runs ~3x a training step's images/s
TEACHER_SPEED_RATIO = 0.3  # a distilling teacher's images/s, as a share of its student's training speed (larger)
UNPROBED_PLAN_SPEED = 1.0  # images/s an unprobed candidate's epochs are planned at: too few rather than too many
UNMEASURED_SPEED = 10.0  # images/s its export is estimated at (a slow net's training speed; a judgement)
UNMEASURED_LATENCY_MS = 10.0  # ... and its runtime latency
UNMEASURED_EXPORT_SECONDS = 60.0  # ... and its export
REPLAN_AFTER = (1, 3)  # whole full-network epochs after which a run's length is re-planned (see replan_early)
LATE_REPLAN_SHARE = 0.2  # ... and once more a fifth of the way through a run long enough for that to come later,
LATE_REPLAN_LIMIT = 0.3  # but not past one-cycle's warm-up (its first 30%), where the rate would jump
PACE_EPOCHS = 3  # the recent epochs whose mean length judges whether a run's plan still ends by its deadline

# ------------------------------------------------------------------------------------- the exports and the gate

FIRST_LAYERS_IN_FLOAT = 2  # the stem and the first block: where int8 hurts MobileNet-family nets most
CALIBRATION_IMAGES = 256  # train images that calibrate ship's int8 exports
REFERENCE_IMAGES = 64  # val images ship compares the runtime with the simulated-int8 graph on
SIMULATED_COST = 4.0  # an image through an observed or simulated-int8 graph costs this many fp32 forward passes
EXPORT_RESERVE_FACTOR = 1.5  # an export's reserve: its estimate with half again ...
EXPORT_RESERVE_SECONDS = 15.0  # ... and this much more (a judgement: the estimate misses the loaders' start)
QAT_IMAGES = 2000  # training images of ship's QAT epoch, at most
QAT_STEP_COST = 4.0  # a QAT image costs this many plain training images (fake quantization, calibration, BN folds)
QAT_EXPORTS = 2  # export reserves a QAT attempt holds beside its epoch (a judgement: it prepares, then converts)
CHANCE_P_VALUE = 1e-3  # how unlikely the val score must be for a model that answers the largest class alone

# ------------------------------------------------------------------------------------------------ Core ML

CORE_ML_SECONDS = 60.0  # its conversion and weight check, before scoring: about 35 s for EfficientNet-Lite0 on 2 cores
# val images (evenly spaced) the package is scored on, at most: its simulated fp16 pass is slow on CPUs (about 12
# images/s for a pruned EfficientNet-Lite0 at 224 px on 2 cores), so the count is cut to what the time left scores;
# the shipped artifact itself is judged on all of them
CORE_ML_IMAGES = 1000
CORE_ML_MIN_IMAGES = 50  # fewer would say nothing about how the package computes: it is skipped

# ----------------------------------------------------------------------------------------------- the web

# the int8 .tflite (calibration, conversion), the folder, Chromium's start and the screenshot: the whole web export of
# digits took 12 s with its 364 val images (RESULTS.md#web_runtimes_digits)
WEB_SECONDS = 30.0
# val images the page is gated on, at most, each classified twice in Chromium (the pixels at the model's input, then
# the full-size photo, decoded and resized by the page): cut to what the time left scores; the shipped artifact
# itself is judged on all of them
WEB_IMAGES = 1000
WEB_MIN_IMAGES = 50  # fewer would say little of how the page computes: the folder is skipped
# a 224 px val image, both page runs and the Python side: the whole web export of hymenoptera took 49 s for 153
# images, fixed costs included (RESULTS.md#web_runtimes_hymenoptera); smaller inputs cost less, by their pixels, down
# to a tenth (digits, 32 px: 0.033 s an image with the fixed costs)
WEB_SECONDS_PER_IMAGE, WEB_IMAGE_SIDE, WEB_SMALLEST_SHARE = 0.25, 224, 0.1

# ------------------------------------------------------------------------------------------- the shortfall

SHORTFALL_POINTS = 5.0  # this far below what the run showed reachable (or one more doubling would add): a headline
# ...and at least this many val images' worth: on 12 val images one image is 8.3 points, which is luck, not budget
NOISE_IMAGES = 3
CURVE_MIN_EPOCHS = 3  # a slope needs this many epochs in the fitted half of the curve
MAX_DOUBLINGS = 4  # a budget estimate extrapolates at most this far (16x the epochs): beyond it, say so instead
FLAT_SLOPE = 0.5  # points per doubling: below it more time alone is not expected to close a gap

# ------------------------------------------------------------------------------------------------ the clock

CLOCK_SECONDS = 10.0  # how often the time spent is saved: a kill loses at most this much of the budget

# ------------------------------------------------------------------------------------------------ recipes
# Every training run ship starts takes one of these. Learning rates are for the batch sizes above.

# Students learn from the teacher's soft targets and the labels alike, at temperature 4: the defaults of
# ``mobiforge distill`` (a judgement: no record compares other weights for ship's students).
DISTILLATION = DistillConfig(teacher="", alpha=0.5, temperature=4.0)
# A cached tail rung (teacher or student) trains a few blocks on their cached inputs: AdamW with cosine decay; the
# classifier alone takes a larger rate (the rates of RESULTS.md#transfer_ladder_hymenoptera, which smoothed labels).
CACHED_TAIL = OptimConfig(optimizer="adamw", lr=1e-3, scheduler="cosine", weight_decay=1e-4)
CACHED_PROBE_LR = 3e-3
# The teacher's full fine-tune from its best cached rung: SGD, the backbone at a tenth of the head's rate (a
# judgement: its ImageNet features were tuned by the rungs below).
TEACHER_FULL = OptimConfig(lr=0.01, scheduler="cosine", weight_decay=1e-4, label_smoothing=0.1)
TEACHER_BACKBONE_LR_SCALE = 0.1
# A pruned or truncated student trained end to end from the fine-tuned teacher's weights: a gentle rate (at 0.01 a
# pruned EfficientNet-Lite0 collapsed to one-class predictions on hymenoptera: RESULTS.md#ship_hymenoptera).
STUDENT_FROM_TEACHER = OptimConfig(lr=0.005, scheduler="cosine", weight_decay=4e-5, label_smoothing=0.1)
# ... and its full fine-tune after a cached tail rung: gentler still, all layers alike.
STUDENT_AFTER_TAIL = OptimConfig(lr=0.003, scheduler="cosine", weight_decay=4e-5, label_smoothing=0.1)
# From scratch on small images, the CIFAR-10 recipe measured in RESULTS.md#scratch_recipe_convpool_whiten (SGD with
# Nesterov momentum, one-cycle, the rate scaled with the batch from 0.2 at 128) when the run is long enough for its
# warm-up; shorter runs (few images or epochs) diverged with it and get SCRATCH_SHORT instead.
SCRATCH_SGD = OptimConfig(lr=0.2, nesterov=True, scheduler="onecycle", weight_decay=5e-4, label_smoothing=0.1)
SCRATCH_SGD_BATCH = 128  # the batch SCRATCH_SGD's rate is for
SCRATCH_SGD_MIN_STEPS = 1000
SCRATCH_SHORT = OptimConfig(optimizer="adamw", lr=2e-3, scheduler="cosine", weight_decay=0.05, label_smoothing=0.1)
NORM_BIAS_LR_SCALE = 64.0  # airbench's: BN biases learn 64x faster than the weights, BN scales held at 1


def distilled_from(teacher_checkpoint: str) -> DistillConfig:
    """``DISTILLATION`` with its teacher."""
    return dataclasses.replace(DISTILLATION, teacher=teacher_checkpoint)
