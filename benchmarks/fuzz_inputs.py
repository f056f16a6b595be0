"""Fuzz every command that reads a file with damaged copies of real ones (issue 25): random bytes, truncations and
header mutations of a ``.pt`` checkpoint, ``.pte``, ``.tflite`` and ``.onnx`` artifacts, JPEG and PNG images; header-
aware mutations that keep each file's identifier, and edits of each artifact's ``.json`` report and ``labels.txt``
(issue 44), each given once to ``predict`` and ``eval``.

Each case runs ``mobiforge <command> ...`` in a worker process (started once, restarted after a death) and is
classed as: ``ok`` (exit 0), ``error`` (a one-line ``mobiforge ...: error:`` message, exit 1 or 2), ``traceback``
(any other exception), ``abort`` (the process died: a signal, a C++ terminate) or ``hang`` (over ``--case-timeout``
seconds). The target is zero tracebacks, aborts and hangs.

    python -m benchmarks.fuzz_inputs [--minutes 4] [--case-timeout 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ("ants", "bees", "wasps")


# ------------------------------------------------------------------------------------------------ seed files


def make_seeds(root: Path) -> dict[str, Path]:
    """A small class-folder dataset, a checkpoint trained on nothing, and its fp32 artifacts in every runtime."""
    import numpy as np
    from PIL import Image

    from mobiforge.backend_api import BACKENDS
    from mobiforge.checkpoint import Checkpoint
    from mobiforge.cli import main as cli
    from mobiforge.models import create_model
    from mobiforge.models.base import Preprocess

    rng = np.random.default_rng(0)
    data = root / "data"
    for split in ("train", "val"):
        for name in CLASSES:
            (data / split / name).mkdir(parents=True)
            for index in range(3):
                pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(data / split / name / f"{index}.{'png' if index else 'jpg'}")
    model = create_model("mobilenet_v1", num_classes=len(CLASSES), width_mult=0.25)
    checkpoint = Checkpoint.of(model, classes=list(CLASSES), preprocess=Preprocess(img_size=64), epoch=0)
    checkpoint.config = {"data": {"data": str(data)}}
    checkpoint.extra["optimizer"] = {}
    seeds = {".pt": checkpoint.save(root / "model.pt")}
    for backend in BACKENDS.values():
        out = root / f"model{backend.suffix}"
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli(["export", str(seeds[".pt"]), "--format", backend.name, "--out", str(out), "--data", str(data)])
        if rc == 0 and out.is_file():  # a Core ML package is a folder: not fuzzed byte by byte
            seeds[backend.suffix] = out
    seeds[".jpg"] = data / "val" / "ants" / "0.jpg"
    seeds[".png"] = data / "val" / "ants" / "1.png"
    return seeds


# ------------------------------------------------------------------------------------------------ mutations


def mutations(original: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    """Damaged copies of ``original``: each a name and the bytes."""
    size = len(original)

    def flipped(count: int) -> bytes:
        data = bytearray(original)
        for _ in range(count):
            data[rng.randrange(size)] = rng.randrange(256)
        return bytes(data)

    header = bytearray(original)
    for index in range(min(64, size)):
        if rng.random() < 0.3:
            header[index] = rng.randrange(256)
    cut = rng.randrange(1, max(2, size))
    middle = rng.randrange(size)
    return [
        ("empty", b""),
        ("8 bytes + 200 zeros", original[:8] + bytes(200)),
        # header-aware: the file's identifier kept (a .pte's "ET12" at byte 4, a .tflite's "TFL3", a zip's "PK"),
        # so that the runtime's own parser, not the header check, meets what follows
        ("identifier, then non-UTF-8 bytes", original[:6] + b"\xff\xfe" + bytes(200)),
        ("identifier kept, root offset random", rng.randbytes(4) + original[4:size]),
        ("identifier kept, next 64 bytes random", original[:8] + rng.randbytes(64) + original[72:]),
        ("identifier kept, tables zeroed", original[:8] + bytes(min(1024, max(0, size - 8))) + original[1032:]),
        (f"truncated at {cut}", original[:cut]),
        ("first half", original[: size // 2]),
        ("header mutated", bytes(header)),
        ("1 byte changed", flipped(1)),
        ("16 bytes changed", flipped(16)),
        ("256 bytes changed", flipped(256)),
        ("4 KiB zeroed", original[:middle] + bytes(min(4096, size - middle)) + original[middle + 4096 :]),
        ("garbage appended", original + rng.randbytes(1024)),
        ("random bytes", rng.randbytes(size)),
    ]


def report_mutations(report: dict, rng: random.Random) -> list[tuple[str, bytes, bytes | None]]:
    """Edited copies of an artifact's ``.json`` report and of ``labels.txt`` beside it (issue 44): each a name,
    the report's bytes and the labels' bytes (None: no labels.txt)."""
    classes = report["classes"]
    labels = "".join(f"{name}\n" for name in classes).encode()

    def edited(**changes: object) -> bytes:
        data = json.loads(json.dumps(report))
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            target = data
            for part in parents:
                target = target[part]
            if value is DELETE:
                target.pop(last, None)
            else:
                target[last] = value
        return json.dumps(data).encode()

    text = json.dumps(report).encode()
    flipped = bytearray(text)
    for _ in range(8):
        flipped[rng.randrange(len(flipped))] = rng.randrange(32, 127)
    nan, inf = float("nan"), float("inf")
    return [
        ("report: too few class names", edited(classes=classes[:-1]), labels),
        ("report: twice the class names", edited(classes=classes * 2), labels),
        ("report: class names not strings", edited(classes=list(range(len(classes)))), labels),
        ("report: a class name with a line break", edited(classes=["a\nb", *classes[1:]]), labels),
        ("report: img_size 0", edited(preprocess__img_size=0), labels),
        ("report: img_size 10**9", edited(preprocess__img_size=10**9), labels),
        ("report: img_size off by 8", edited(preprocess__img_size=report["preprocess"]["img_size"] + 8), labels),
        ("report: img_size a string", edited(preprocess__img_size="224"), labels),
        ("report: crop_pct 1e-7", edited(preprocess__crop_pct=1e-7), labels),
        ("report: NaN mean", edited(preprocess__mean=[nan, nan, nan]), labels),
        ("report: inf std", edited(preprocess__std=[inf, inf, inf]), labels),
        ("report: zero std", edited(preprocess__std=[0.0, 0.0, 0.0]), labels),
        ("report: two means", edited(preprocess__mean=[0.5, 0.5]), labels),
        ("report: unknown interpolation", edited(preprocess__interpolation="sinc"), labels),
        ("report: resize_size 10**9", edited(preprocess__resize_size=10**9), labels),
        ("report: no preprocess", edited(preprocess=DELETE), labels),
        ("report: preprocess null", edited(preprocess=None), labels),
        ("report: a list", b"[1, 2, 3]", labels),
        ("report: not JSON", b"{not json", labels),
        ("report: empty", b"", labels),
        ("report: nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, labels),
        ("report: 8 characters changed", bytes(flipped), labels),
        ("report: non-UTF-8", text[:20] + b"\xff\xfe" + text[20:], labels),
        ("labels: the only names, one missing", edited(classes=DELETE), b"".join(labels.splitlines(True)[:-1])),
        ("labels: the only names, one too many", edited(classes=DELETE), labels + b"extra\n"),
        ("labels: the only names, empty", edited(classes=DELETE), b""),
        ("labels: the only names, non-UTF-8", edited(classes=DELETE), b"\xff\xfe\x00ants\n"),
        ("labels: the only names, one 1 MB line", edited(classes=DELETE), b"x" * 2**20),
        ("labels: none, no names in the report", edited(classes=DELETE), None),
    ]


DELETE = object()


def report_cases(seeds: dict[str, Path], root: Path, rng: random.Random) -> list[tuple[str, str, Path]]:
    """(name, suffix, artifact) for each report edit of each artifact: the artifact copied into a folder of its
    own with the edited report and labels beside it."""
    cases = []
    for suffix in (".pte", ".tflite", ".onnx"):
        if suffix not in seeds:
            continue
        report = json.loads(Path(f"{seeds[suffix]}.json").read_text())
        for index, (name, report_bytes, labels) in enumerate(report_mutations(report, rng)):
            folder = root / f"report{suffix}-{index}"
            folder.mkdir(parents=True)
            artifact = folder / f"model{suffix}"
            artifact.write_bytes(seeds[suffix].read_bytes())
            Path(f"{artifact}.json").write_bytes(report_bytes)
            if labels is not None:
                (folder / "labels.txt").write_bytes(labels)
            cases.append((name, suffix, artifact))
    return cases


def commands(suffix: str, file: Path, seeds: dict[str, Path], scratch: Path) -> list[list[str]]:
    """The commands that read a file of this kind."""
    data = str(seeds[".pt"].parent / "data")
    if suffix == ".pt":
        return [
            ["predict", str(file), str(seeds[".jpg"])],
            ["eval", str(file), "--data", data],
            ["profile", str(file)],
            ["export", str(file), "--format", "onnx", "--out", str(scratch / "out.onnx"), "--data", data],
        ]
    if suffix in (".jpg", ".png"):
        folder = scratch / "images"
        (folder / "val" / CLASSES[0]).mkdir(parents=True, exist_ok=True)
        for name in CLASSES[1:]:
            (folder / "val" / name).mkdir(parents=True, exist_ok=True)
            (folder / "val" / name / "x.png").write_bytes(seeds[".png"].read_bytes())
        (folder / "val" / CLASSES[0] / file.name).write_bytes(file.read_bytes())
        return [["predict", str(seeds[".pt"]), str(file)], ["eval", str(seeds[".pt"]), "--data", str(folder)]]
    return [["profile", str(file)]]


# ------------------------------------------------------------------------------------------------ worker


def worker() -> None:
    """Run the CLI once per line of JSON argv on stdin; answer one JSON line per case on the original stdout."""
    from mobiforge.cli import main as cli

    answer = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        argv = json.loads(line)
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = cli(argv)
            outcome = "ok" if rc == 0 else "error"
        except SystemExit as exit_:
            outcome = "error" if exit_.code in (1, 2) else "traceback"
        except BaseException as error:
            outcome, err = "traceback", io.StringIO(f"{type(error).__name__}: {error}")
        lines = err.getvalue().strip().splitlines()
        if outcome == "error" and not any("error:" in text for text in lines[-1:]):
            outcome = "traceback"  # a nonzero exit without the one-line message
        answer.write(json.dumps({"outcome": outcome, "message": (lines or [""])[-1][:300]}) + "\n")
        answer.flush()


class Worker:
    """A worker process; ``run`` answers one case, restarting the worker after an abort or a hang."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.process: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fuzz_inputs", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment,
        )  # fmt: skip

    def run(self, argv: list[str]) -> dict[str, str]:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        self.process.kill()
        self.process.wait()
        code = self.process.returncode
        self.process = None
        if not ready:
            return {"outcome": "hang", "message": f"no answer in {self.timeout:g} s"}
        return {"outcome": "abort", "message": f"the process died (exit {code})"}

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()


# ------------------------------------------------------------------------------------------------ main


def record(
    result: dict[str, str], kind: str, name: str, command: str, counts: collections.Counter, failures: list[str]
) -> None:
    counts[(kind, command, result["outcome"])] += 1
    if result["outcome"] in ("traceback", "abort", "hang"):
        failures.append(f"{kind} {name}, `{command}`: {result['outcome']}: {result['message']}")
        print(failures[-1], flush=True)


def fuzz(minutes: float, case_timeout: float, seed: int) -> tuple[collections.Counter, list[str], int]:
    rng = random.Random(seed)
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []
    cases = 0
    with tempfile.TemporaryDirectory(prefix="mobiforge-fuzz-") as tmp:
        root = Path(tmp)
        seeds = make_seeds(root / "seeds")
        runner = Worker(case_timeout)
        deadline = time.monotonic() + minutes * 60
        originals = {suffix: path.read_bytes() for suffix, path in seeds.items()}
        try:
            for name, suffix, artifact in report_cases(seeds, root / "reports", rng):  # every report edit, once
                data = str(seeds[".pt"].parent / "data")
                for argv in (["predict", str(artifact), str(seeds[".jpg"])], ["eval", str(artifact), "--data", data]):
                    record(runner.run(argv), f"{suffix} report", name, argv[0], counts, failures)
                cases += 1
            while time.monotonic() < deadline:  # round-robin: every kind of file gets each mutation in turn
                damaged = {suffix: mutations(data, rng) for suffix, data in originals.items()}
                for index in range(len(next(iter(damaged.values())))):
                    for suffix, variants in damaged.items():
                        name, data = variants[index]
                        case = root / f"case{cases}"
                        case.mkdir()
                        file = case / f"damaged{suffix}"
                        file.write_bytes(data)
                        for argv in commands(suffix, file, seeds, case):
                            record(runner.run(argv), suffix, name, argv[0], counts, failures)
                        cases += 1
                        if time.monotonic() > deadline:
                            return counts, failures, cases
        finally:
            runner.close()
    return counts, failures, cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--case-timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    from benchmarks.results import write_section

    counts, failures, cases = fuzz(args.minutes, args.case_timeout, args.seed)
    outcomes = ("ok", "error", "traceback", "abort", "hang")
    rows = sorted({(suffix, command) for suffix, command, _ in counts})
    table = ["| file | command | " + " | ".join(outcomes) + " |", "|---|---|" + "---:|" * len(outcomes)]
    for suffix, command in rows:
        table.append(
            f"| {suffix} | {command} | " + " | ".join(str(counts[(suffix, command, o)]) for o in outcomes) + " |"
        )
    bad = sum(counts[key] for key in counts if key[2] in ("traceback", "abort", "hang"))
    body = (
        f"## fuzz_inputs: damaged files given to every command that reads them\n\n"
        f"{cases} damaged files, {sum(counts.values())} command runs in {args.minutes:g} minutes "
        f"(seed {args.seed}): **{bad} tracebacks, aborts or hangs** (target 0).\n\n" + "\n".join(table)
    )
    if failures:
        body += "\n\nFailures:\n\n" + "\n".join(f"- {failure}" for failure in failures[:30])
    print(body)
    write_section("fuzz_inputs", body)


if __name__ == "__main__":
    main()
