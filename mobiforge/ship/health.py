"""Ship's data health: the doctor's cheap checks right after the survey, and its feature checks after the
teacher's ladder, on the features the ladder's first rung cached (read back: no trunk pass of their own).

The user's folder is only read. What is found goes to the report's data health section, with the gate's score
without the val photos that have a copy in train.
"""

from __future__ import annotations

import dataclasses
import json

from mobiforge.config import DEFAULT_LOADER_WORKERS, DataConfig, DoctorConfig, ShipConfig
from mobiforge.data import gate_samples, relative_to_data
from mobiforge.doctor import diagnose
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.ship.plan import data_config
from mobiforge.ship.policy import HEALTH_SECONDS_PER_IMAGE, HEALTH_SHARE
from mobiforge.ship.stages import ShipRun, left_out_of_gate
from mobiforge.ship.state import DataHealth, ShipState

HEALTH_FILE = "doctor.json"  # the whole diagnosis, beside the report
SHOWN_LEAKS = 12


def data_health(run: ShipRun, features: bool) -> DataHealth:
    """The doctor on the ship's data; with ``features`` (the teacher's ladder ran: its linear probe cached the
    trunk's features of every image), the feature checks too."""
    config = run.config
    workers = DEFAULT_LOADER_WORKERS if config.workers is None else config.workers
    doctor_config = DoctorConfig(
        data=config.data,
        features=features,
        workers=workers,
        seed=config.seed,
        label_probe="linear",
        device=config.device,
    )  # the linear probe alone: its features are cached, and the data checks must take seconds
    data = data_config(config, img_size=None)  # the teacher's linear probe rung: its cached features are read back
    try:
        diagnosis = diagnose(doctor_config, run.reporter, run.run_dir / "cache", data, run.file_facts or None)
    except MobiforgeError:
        raise  # a class of copies: no model can be judged on it
    except Exception as error:  # a check that fails must not cost the run its model: say so in the report
        first = str(error).splitlines()[0][:160] if str(error) else ""
        return DataHealth(note=f"the data checks failed ({type(error).__name__}: {first})")
    run.file_facts[:] = diagnosis.facts  # the feature checks read them, not the files, again
    write_atomic(run.run_dir / HEALTH_FILE, json.dumps(diagnosis.to_dict(), indent=2))
    found = diagnosis.features
    return DataHealth(
        verdicts=diagnosis.verdicts(),
        leaked_val=[diagnosis.relative(index) for index in diagnosis.leaked_val()],
        label_issues=len(found.label_issues) if found is not None else None,
        features=features,
        seconds=sum(diagnosis.seconds.values()),
        note="" if features else "the feature checks need the teacher's cached features: no teacher ran",
    )


def feature_health(run: ShipRun) -> DataHealth:
    """The feature checks, when their estimated time fits in HEALTH_SHARE of the time left; else the cheap checks'
    record with a note saying why not (``mobiforge doctor`` runs them all on the same cache)."""
    survey = run.state.survey
    images = survey.train_images + survey.val_images
    estimate = images * HEALTH_SECONDS_PER_IMAGE
    if estimate > HEALTH_SHARE * run.state.left():
        skipped = dataclasses.replace(run.state.health)
        skipped.note = (
            f"the feature checks were skipped: ~{estimate:.0f} s for {images} images is more than "
            f"{HEALTH_SHARE:.0%} of the time left; run mobiforge doctor on the data"
        )
        return skipped
    return data_health(run, features=True)


def without_leaks(health: DataHealth, wrong: list[str], images: int, gate: list[str]) -> tuple[float, int] | None:
    """The gate's top-1 without the leaked val photos among its ``gate`` images (``wrong``: those it got wrong),
    and how many it left out; None when no gate image leaked."""
    leaked = set(health.leaked_val) & set(gate)
    kept = images - len(leaked)
    if not leaked or not kept:  # none leaked, or all: there is no score without them
        return None
    correct = images - len(wrong) - len(leaked - set(wrong))
    return 100.0 * correct / kept, len(leaked)


def gate_images(config: ShipConfig, state: ShipState) -> list[str]:
    """The val photos the gate ran on (without those ``--dedupe-val`` left out, then ``--val-images`` of the rest,
    evenly spaced), relative to the data."""
    left_out = left_out_of_gate(config, state)
    gate = gate_samples(DataConfig(data=config.data), state.survey.classes, config.val_images, left_out)
    return [relative_to_data(path, config.data) for path, _ in gate]
