"""The doctor's speed on a folder of a given size, cold (no feature cache), as a user's first run: the issue's
target is 3,000 photos in at most 3 minutes on this machine. The folder is built from links to the first images of
each class of a split folder, train and val in its proportions (never copies of the files).

    python -m benchmarks.doctor_speed --data ../shared/datasets/cifar10 --images 3000 --scratch /tmp/doctor-speed
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.config import DataConfig, DoctorConfig
from mobiforge.data import discover
from mobiforge.doctor import doctor
from mobiforge.progress import SilentReporter

TARGET_SECONDS = 180.0


def linked_folder(data: Path, images: int, root: Path) -> int:
    """``images`` files of ``data`` (train and val in its proportions, classes in turn) linked under ``root``."""
    splits = discover(DataConfig(data=str(data)))
    total = len(splits.train) + len(splits.val)
    linked = 0
    for name, samples in (("train", splits.train), ("val", splits.val)):
        wanted = round(images * len(samples) / total)
        by_class: dict[int, list[str]] = {}
        for path, label in samples:
            by_class.setdefault(label, []).append(path)
        queues = [list(reversed(paths)) for paths in by_class.values()]
        while wanted and any(queues):
            for label, queue in zip(by_class, queues, strict=True):
                if queue and wanted:
                    path = queue.pop()
                    target = root / name / splits.classes[label] / Path(path).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(Path(path).resolve(), target)
                    wanted, linked = wanted - 1, linked + 1
    return linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a split folder (train/ and val/)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--scratch", required=True)
    args = parser.parse_args()

    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    linked = linked_folder(Path(args.data), args.images, scratch / "data")
    started = time.perf_counter()
    diagnosis = doctor(DoctorConfig(data=str(scratch / "data"), out=str(scratch / "run")), SilentReporter())
    seconds = time.perf_counter() - started
    name = Path(args.data).resolve().name
    figures = {"images": linked, "seconds": seconds, "target_s": TARGET_SECONDS, "met": seconds <= TARGET_SECONDS}
    print(figures)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in diagnosis.seconds.items())
    body = "\n".join(
        [
            f"## Doctor speed: {linked} photos of {name}, cold",
            "",
            f"`mobiforge doctor` on {linked} photos linked from {name} (train and val in its proportions), with no "
            f"feature cache: **{seconds:.0f} s** ({parts}), against the target of {TARGET_SECONDS / 60:.0f} minutes "
            f"for 3,000 photos: {'met' if figures['met'] else 'NOT MET'}.",
        ]
    )
    write_section(f"doctor_speed_{name}_{linked}", body, figures)


if __name__ == "__main__":
    main()
