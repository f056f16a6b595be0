"""``ship(config)``: an image folder and a device budget in, the best verified on-device model out.

The package, one module per concern: ``config`` (what is asked), ``state`` (typed stage records and the resumable
state file), ``search`` (survey and measured candidates), ``plan`` (the time plan and the train callbacks that keep
it), ``stages`` (teacher, training, export through the gate), ``pipeline`` (the stage loop), ``report`` and
``snippets`` (model card, report, app code).

Stages, each recorded in ``RUN/ship_state.json`` when it finishes so that rerunning the same command after a
Ctrl-C or a SIGKILL resumes instead of starting over (a training stopped mid-way resumes from its ``last.pt``):

1. ``survey``: classes, split sizes, typical image side; small images (<= 64 px) keep a 32 px input.
2. ``search``: candidate architectures (a table of model, width and input size, plus the teacher when there is
   one: itself if it fits the size budget, else pruned into it) are filtered by their estimated int8 weight size,
   then ranked (teacher-derived first, then by MACs: within one family accuracy grows with compute) and
   *measured*: each is quantized (PT2E, random calibration is enough for timing), written in the chosen runtime's
   format, and timed there on this machine at batch 1. The file size and latency of that artifact decide whether
   it fits; a quick training-speed probe sizes its training.
3. ``teacher``: with ``--teacher auto`` and large images, the pretrained EfficientNet-Lite0 fine-tuned on the data
   when the time budget allows it (a checkpoint given as ``--teacher`` is used as is). It is both the teacher for
   distillation and, pruned into the size budget, a candidate of its own: pruning is how a pretrained network
   gets into a budget it does not fit.
4. ``train:NAME``: the best-ranked fitting candidates, each within its share of the remaining time budget
   (``mobiforge.train.train``, distilling from the teacher when there is one). The probe's epoch count is only a
   first plan: once the first epoch is timed, the run is re-planned (epochs and learning-rate schedule) to end by
   the end of its share.
5. ``export:NAME``: int8 PTQ in the runtime and the accuracy gate through the runtime on the validation images;
   when PTQ loses more than ``max_drop`` points and time is left, PTQ with the stem and first block in float, then
   QAT.
6. ``result``: the most accurate artifact that meets every budget is copied to ``RUN/model.<ext>``, with
   ``model_card.json``, ``report.md`` and ``report.html``; when none meets them, the report says what came closest.

Time: the budget covers every stage; elapsed time is carried across resumed sessions.
"""

from mobiforge.config import ShipConfig
from mobiforge.ship.config import CANDIDATE_GRID, TEACHER_MODEL, GridRow, ShipInterrupted
from mobiforge.ship.pipeline import ShipResult, ship
from mobiforge.ship.plan import DEADLINE_MARGIN, fit_epochs, replan_early, scratch_recipe, stop_by
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
