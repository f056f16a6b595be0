"""``ship(config)``: an image folder and a device budget in, the best verified on-device model out.

The package, one module per concern: ``config`` (the grid row and the interruption), ``policy`` (every tuning value
and training recipe, each with its reason), ``budget`` (``TimeBudget``: ship's time as a value), ``state`` (the
stages, their typed records and the resumable state file), ``probes`` (training and inference speed probes),
``speeds`` (this machine's probed training speeds, kept for the next search), ``search`` (survey, measured
candidates), ``plan`` (the time plan and the train callbacks that keep it), ``ladder`` (the teacher's transfer
ladder: probe, tail, full fine-tune), ``stages`` (teacher, training, export through the gate, the Core ML package;
each takes a ``ShipRun`` and a budget), ``pipeline`` (the stage loop and the clock), ``ranks`` (under
``torchrun``: rank 0 leads, the others join its training runs), ``shortfall``, ``card``
(the typed model card), ``report`` and ``snippets`` (what fell short and why, report, app code).

Stages, each recorded in ``RUN/ship_state.json`` when it finishes so that rerunning the same command after a
Ctrl-C, a SIGTERM or a SIGKILL resumes instead of starting over (a training stopped mid-way resumes from its
``last.pt``):

1. ``survey``: classes, split sizes, typical image side; small images (<= 64 px) keep a 32 px input.
2. ``search``: candidate architectures (``CANDIDATE_GRID``: model, width, each input size of the data's regime;
   the model's registered traits say which regimes), plus the teacher when there is one: itself if it fits the
   size budget, else pruned into it (Taylor importance, its first blocks whole) and truncated into it. They are
   filtered by their estimated int8 weight size, ranked (teacher-derived first, then by what the time budget buys)
   and *measured*: each is quantized (PT2E, random calibration is enough for timing), written in the chosen
   runtime's format and timed there at batch 1. The file size and latency decide whether it fits; a training-speed
   probe sizes its training. Nothing is measured without the time for it.
3. ``teacher``: with ``--teacher auto`` and large images, the pretrained EfficientNet-Lite0 climbs the transfer
   ladder (``ladder``: a linear probe on cached features, then its last blocks on cached inputs, then a full
   fine-tune) as far as the time allows; a checkpoint given as ``--teacher`` is used as is. It is the teacher for
   distillation and, pruned or truncated into the size budget, the source of the students.
4. ``train:NAME``: the best-ranked fitting candidates, each within its share of the remaining time budget. A
   student whose first blocks are the teacher's trains its tail on their cached output (``transfer``), distilled
   from the teacher's cached logits; the others train whole (``mobiforge.train.train``). The probe's epoch count
   is only a first plan: once the first epoch is timed, the run is re-planned to end by the end of its share.
5. ``export:NAME``: int8 PTQ in the runtime and the accuracy gate through the runtime on the validation images;
   when PTQ loses more than ``max_drop`` points and time is left, PTQ with the stem and first block in float, then
   QAT.
6. ``web``: with a minute of budget left, ``RUN/web/``, a page running the model in the browser (onnxruntime-web),
   gated by running the page in headless Chromium (``mobiforge.backends.web``).
7. ``coreml``: with a minute left, the iOS package beside the shipped file, checked without a Mac.
8. ``result``: the most accurate artifact that meets every budget is copied to ``RUN/model.<ext>``, with
   ``model_card.json``, ``report.md`` and ``report.html``; when none meets them, the report says what came closest
   and why (``shortfall``).

Time: the budget covers every stage; elapsed time is carried across resumed sessions.
"""

from mobiforge.config import ShipConfig
from mobiforge.ship.config import GridRow, ShipInterrupted
from mobiforge.ship.pipeline import ShipResult, ship
from mobiforge.ship.plan import fit_epochs, replan_early, scratch_recipe, stop_by
from mobiforge.ship.policy import CANDIDATE_GRID, DEADLINE_MARGIN, TEACHER_MODEL
from mobiforge.ship.search import survey, teacher_candidate, truncated_candidate
from mobiforge.ship.state import Candidate, ShipState, Survey, TeacherSpec

__all__ = [
    "CANDIDATE_GRID",
    "DEADLINE_MARGIN",
    "TEACHER_MODEL",
    "Candidate",
    "GridRow",
    "ShipConfig",
    "ShipInterrupted",
    "ShipResult",
    "ShipState",
    "Survey",
    "TeacherSpec",
    "fit_epochs",
    "replan_early",
    "scratch_recipe",
    "ship",
    "stop_by",
    "survey",
    "teacher_candidate",
    "truncated_candidate",
]
