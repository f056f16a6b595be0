"""``ship(config)``: the stage loop, resumable from ``ship_state.json``, and the choice of what ships."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mobiforge.backend_api import get_backend
from mobiforge.config import ShipConfig
from mobiforge.errors import MobiforgeError
from mobiforge.log import logger
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.runs import claim_run_dir
from mobiforge.runtimes import copy_artifact, write_labels
from mobiforge.ship.budget import TimeBudget
from mobiforge.ship.config import WEB
from mobiforge.ship.health import data_health, feature_health
from mobiforge.ship.plan import export_estimate, export_reserve, next_training
from mobiforge.ship.policy import (
    CACHED_SHARE,
    DEADLINE_MARGIN,
    FALLBACK_SOURCE,
    FIRST_EPOCH_SHARE,
    MIN_TAIL_EPOCHS,
)
from mobiforge.ship.ranks import follow, join, leading
from mobiforge.ship.report import write_ship_report
from mobiforge.ship.search import check_families, rank, search, survey, teacher_plan
from mobiforge.ship.shortfall import headline, why_nothing_shipped
from mobiforge.ship.stages import (
    ShipRun,
    cached_student,
    core_ml_package,
    export_candidate,
    start_seconds,
    train_cached_student,
    train_candidate,
    train_teacher,
    web_page,
)
from mobiforge.ship.state import (
    CORE_ML_PACKAGE,
    EXPORT,
    HEALTH,
    RESULT,
    SEARCH,
    SURVEY,
    TEACHER,
    TRAIN,
    WEB_PAGE,
    Candidate,
    ResultRecord,
    Row,
    SearchRecord,
    ShipState,
    TrainRecord,
)


@dataclass
class ShipResult:
    run_dir: Path
    chosen: str | None  # the candidate shipped (None when no candidate met every budget)
    closest: str | None
    artifact: Path | None
    state: ShipState | None = dataclasses.field(repr=False, default=None)
    why: str | None = None  # why nothing shipped, where it is not the budgets' verdicts (the time ran out)
    follower: bool = False  # a rank other than 0 under torchrun: rank 0 ships, and reports


class Progress:
    """Stage messages with the time left in the budget, through the train reporter (rich in the CLI)."""

    def __init__(self, reporter: Reporter, state: ShipState) -> None:
        self.reporter, self.state = reporter, state

    def __call__(self, text: str) -> None:
        left = self.state.left()
        sign = "" if left >= 0 else "-"
        self.reporter.message(f"[ship {sign}{_clock(abs(left))} left] {text}")
        logger.debug("ship, %.0f s elapsed: %s", self.state.elapsed(), text)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def ship(config: ShipConfig, reporter: Reporter | None = None) -> ShipResult:
    """Run (or resume) the staged pipeline of the package docstring."""
    reporter = reporter or SilentReporter()
    _check(config)
    get_backend(config.runtime).require()
    if join(config) > 0:  # under torchrun: the other ranks join rank 0's training runs (``ship.ranks``)
        with terminate_as_interrupt():
            follow()
        return ShipResult(config.run_dir(), None, None, None, follower=True)
    run_dir = config.run_dir()
    claim_run_dir(run_dir, "ship")
    state = ShipState(run_dir, config)
    with state.clock(), terminate_as_interrupt(), leading():
        return _stages(ShipRun(config, run_dir, reporter, Progress(reporter, state), state))


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, ``timeout``, a closed terminal's job control) stops the run as Ctrl-C does:
    the time spent and the stages done are saved on the way out, and the same command resumes. By default Python
    dies at once on it, and up to CLOCK_SECONDS of the budget's clock was lost. (Training's own handler, while a
    model trains, finishes the current step and saves first.)"""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stages(run: ShipRun) -> ShipResult:
    config, run_dir, state, say = run.config, run.run_dir, run.state, run.say
    if state.recovered:
        say(state.recovered)
    if state.stages:
        say(f"resuming {run_dir}: {', '.join(state.stages)} already done, {_clock(state.elapsed())} spent")
    torch.manual_seed(config.seed)

    info = state.done(SURVEY) or state.finish(SURVEY, survey(config))
    state.done(HEALTH) or state.finish(HEALTH, data_health(run, features=False))
    say(
        f"data: {info.train_images} train / {info.val_images} val images, {len(info.classes)} classes, "
        f"median side {info.median_side} px -> input {', '.join(map(str, info.img_sizes))} px"
    )
    teacher_spec, teacher_note = teacher_plan(config, info)
    searched = state.done(SEARCH)
    if searched is None:
        say(f"search: {teacher_note}")
        candidates = search(config, info, teacher_spec, run_dir, say, state.left)
        searched = state.finish(SEARCH, SearchRecord(candidates, teacher_note))
    fitting = sorted((c for c in searched.candidates if c.fits), key=rank)
    teacher = None
    if fitting and (teacher_spec is not None or config.teacher not in ("auto", "none")):
        teacher = _teacher(run)
    ladder = state.done(TEACHER)
    if ladder is not None and ladder.rungs and not state.health.features:  # its probe cached every image's features
        state.finish(HEALTH, feature_health(run))
    if teacher is None:
        fitting = [c for c in fitting if c.source == "scratch"]
    _train_and_export(fitting[: config.max_trained], teacher, run)
    return _finish(run, searched.candidates)


def _teacher(run: ShipRun) -> TrainRecord | None:
    stage = run.state.done(TEACHER) or run.state.finish(TEACHER, train_teacher(run))
    if stage.skipped:
        run.say(f"teacher: {stage.skipped}")
    return stage.trained


def _train_and_export(chosen: list[Candidate], teacher: TrainRecord | None, run: ShipRun) -> None:
    """Train each candidate in its share of the time left, then export it through the gate."""
    state, say = run.state, run.say
    queue = [c for c in chosen if state.exported(c.name) is None]
    while queue:
        candidate = queue[0]
        stage = TRAIN.of(candidate.name)
        if state.trained(candidate.name) is None and candidate.source == "teacher":  # trained: the teacher run
            assert teacher is not None
            state.finish(stage, dataclasses.replace(teacher, distilled=False))
        if state.trained(candidate.name) is None and _fallback(candidate, chosen, state):
            say(f"train: {candidate.name} skipped: a pruned student shipped, and the truncated one is its fallback")
            queue.pop(0)
            continue
        if state.trained(candidate.name) is None and cached_student(candidate, teacher):
            assert teacher is not None
            if not _train_cached(candidate, queue, teacher, run):
                queue.pop(0)
                continue
        if state.trained(candidate.name) is None:
            epochs, epoch_s, seconds = next_training(queue, state.survey, teacher, state.left())
            own = run.budget().split(export_reserve(candidate, state.survey))
            if own.left() < (DEADLINE_MARGIN if shipped_one(state) else FIRST_EPOCH_SHARE) * epoch_s:
                say(f"train: no time left for {candidate.name} (~{epoch_s:.0f} s per epoch, then its export)")
                queue.pop(0)
                continue
            more = f", then {', '.join(c.name for c in queue[1:])}" if len(queue) > 1 else ""
            say(f"train: {candidate.name}, {epochs} epochs (~{epoch_s:.0f} s each){more}")
            exports = sum(export_reserve(c, state.survey) for c in queue)  # the exports must fit too
            budget = TimeBudget(state.deadline, reserve=exports, seconds=seconds)
            state.finish(stage, train_candidate(candidate, epochs, teacher, run, budget))
        trained_record = state.trained(candidate.name)
        assert trained_record is not None
        state.finish(EXPORT.of(candidate.name), export_candidate(candidate, trained_record, run))
        queue.pop(0)


def _train_cached(candidate: Candidate, queue: list[Candidate], teacher: TrainRecord, run: ShipRun) -> bool:
    """A cached student's training in its share of the time left (all of it when it is the last); False when its
    cache pass and shortest tail cannot fit and another candidate has shipped (it is skipped)."""
    state, say = run.state, run.say
    export_s = export_estimate(candidate, state.survey)  # expected, not the reserve's margin: that would waste time
    if state.left() < export_s:  # its export alone would end past the budget
        say(f"train: no time left for {candidate.name} (its export alone, ~{export_s:.0f} s, would end past the time)")
        return False
    start_s = start_seconds(candidate, teacher, run.run_dir)
    if state.left() < start_s + export_s:  # pruning the teacher and the export would end past the budget
        say(f"train: no time left for {candidate.name} (pruning the teacher, ~{start_s:.0f} s, then its export)")
        return False
    alone = all(c.source == FALLBACK_SOURCE for c in queue[1:]) and candidate.source == "pruned"
    share = 1.0 if len(queue) == 1 or alone else CACHED_SHARE
    say(f"train: {candidate.name} on the cached trunk, distilled from the teacher's cached logits")
    exports = run.budget().split(sum(export_reserve(c, state.survey) for c in queue))
    own = export_reserve(candidate, state.survey)  # the others' exports are spare too when they cannot train
    trained = train_cached_student(candidate, teacher, run, exports.share(share, keep=own), not shipped_one(state))
    if trained is None:
        say(f"train: no time left for {candidate.name} (its cache pass and {MIN_TAIL_EPOCHS} epochs, then its export)")
        return False
    say(f"train: {candidate.name}: {trained.rung}, {trained.epochs_run} epochs, val top-1 {trained.top1:.2f}%")
    state.finish(TRAIN.of(candidate.name), trained)
    return True


def _fallback(candidate: Candidate, candidates: list[Candidate], state: ShipState) -> bool:
    """Whether ``candidate`` is a truncated student after a pruned student that met every budget: it trains only
    when that one did not ship (RESULTS.md#ship_proxy: the pruned student beat it on every set measured)."""
    return candidate.source == FALLBACK_SOURCE and any(
        c.source == "pruned" and (record := state.exported(c.name)) is not None and record.met for c in candidates
    )


def shipped_one(state: ShipState) -> bool:
    """Whether some candidate has an int8 artifact already: after that, one that cannot finish in time is
    skipped (before it, the last candidate trains at least an epoch, so that the run has something to show)."""
    return bool(state.records(EXPORT))


def _check(config: ShipConfig) -> None:
    backend = get_backend(config.runtime)  # an unknown name: one line naming the runtimes (numbers: check_ranges)
    if not backend.runs_here:
        raise MobiforgeError(
            f"--runtime {backend.name}: ship measures and gates every candidate in its runtime, and {backend.title} "
            f"does not run on this host; ship with another runtime, then mobiforge export the shipped checkpoint "
            f"--format {backend.name}"
        )
    check_families(config.models)  # before the run folder records these settings: a corrected rerun must start


def _finish(run: ShipRun, candidates: list[Candidate]) -> ShipResult:
    config, run_dir, state, say = run.config, run.run_dir, run.state, run.say
    rows = [Row(c, state.trained(c.name), state.exported(c.name)) for c in candidates]
    shipped = [row for row in rows if row.exported and row.exported.met]
    chosen = max(shipped, key=lambda row: row.exported.chosen.top1 if row.exported else 0.0) if shipped else None
    closest = chosen or _closest(rows, config)
    artifact = None
    if chosen is not None and chosen.exported is not None:
        source = Path(chosen.exported.chosen.path)
        artifact = run_dir / f"model{source.suffix}"
        copy_artifact(source, artifact)  # with its report: `predict`, `eval` and `serve` read it
        write_labels(run_dir, state.survey.classes)
        # the web folder first: it runs here, and is what a user holds up to the real thing on the phone
        if chosen.trained is not None and config.runtime != WEB and state.done(WEB_PAGE) is None:
            page = web_page(chosen.trained, run)
            if page is not None:
                state.finish(WEB_PAGE, page)
        if chosen.trained is not None and state.done(CORE_ML_PACKAGE) is None:
            package = core_ml_package(chosen.trained, run)
            if package is not None:
                state.finish(CORE_ML_PACKAGE, package)
    result = ResultRecord(
        chosen=chosen.candidate.name if chosen else None,
        closest=closest.candidate.name if closest else None,
        artifact=str(artifact) if artifact else None,
        elapsed_s=state.elapsed(),
    )
    state.finish(RESULT, result)
    card = write_ship_report(run_dir, config, state, rows, chosen, closest)
    why = None
    if chosen and chosen.exported:
        exported = chosen.exported.chosen
        say(
            f"shipped {chosen.candidate.name}: {artifact} - top-1 {exported.top1:.2f}% through "
            f"{config.runtime}, {exported.file_bytes / 1e6:.2f} MB, "
            f"{exported.latency_ms[str(config.threads)]['median']:.2f} ms; report: {run_dir / 'report.html'}"
        )
    else:
        near = f"; closest: {closest.candidate.name}" if closest else ""
        why = why_nothing_shipped(rows, closest)
        say(f"no candidate met every budget{near}; see {run_dir / 'report.html'}" if why is None else why)
    if card is not None and card.budget.shortfall:
        say(headline(card.budget.shortfall).replace("**", ""))
    return ShipResult(run_dir, result.chosen, result.closest, artifact, state, why)


def _closest(rows: list[Row], config: ShipConfig) -> Row | None:
    """The exported candidate that failed fewest budgets (then the most accurate); else the smallest measured."""
    exported = [row for row in rows if row.exported]
    if exported:
        return max(
            exported,
            key=lambda row: (sum(row.exported.verdicts.values()), row.exported.chosen.top1) if row.exported else (0, 0),
        )
    measured = [row for row in rows if row.candidate.artifact_bytes]
    if not measured:
        return None

    def overshoot(row: Row) -> float:
        c = row.candidate
        return max((c.artifact_bytes or 0) / config.max_size, (c.latency_ms or 0) / config.max_latency_ms)

    return min(measured, key=overshoot)
