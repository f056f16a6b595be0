"""What opening an unseen artifact in a child process first costs `predict` (mobiforge.untrusted).

For each runtime: a small model exported once, then `mobiforge predict FILE photo` timed as a user runs it (a
fresh process each time): with a file never seen on this machine (the child loads it first), with the same file
again (its SHA-256 remembered: no child), and the child alone.

    python -m benchmarks.untrusted_cost [--runtimes executorch,tflite,onnx] [--section untrusted_artifact_cost]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.backend_api import get_backend
from mobiforge.checkpoint import Checkpoint
from mobiforge.data import materialize_digits
from mobiforge.export import ExportConfig, export_checkpoint
from mobiforge.models import create_model
from mobiforge.models.base import Preprocess


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", default="executorch,tflite,onnx")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--section", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="untrusted-cost-"))
    digits = materialize_digits()
    photo = str(next((digits / "val").rglob("*.png")))
    model = create_model("mobilenet_v1", num_classes=10, width_mult=0.25)
    checkpoint = Checkpoint.of(model, classes=[str(i) for i in range(10)], preprocess=Preprocess(32, crop_pct=1.0))
    checkpoint.config = {"data": {"data": "digits"}}
    source = checkpoint.save(work / "model.pt")
    rows = []
    for runtime in args.runtimes.split(","):
        out = work / runtime / f"model{get_backend(runtime).suffix}"
        export_checkpoint(ExportConfig(str(source), runtime, out=str(out), latency_seconds=0.05))
        predict = [sys.executable, "-m", "mobiforge", "predict", str(out), photo]
        child = [sys.executable, "-m", "mobiforge.untrusted", str(out)]
        unseen, seen, alone = [], [], []
        for attempt in range(args.repeat):
            home = work / f"home-{runtime}-{attempt}"  # an empty vetted list: the file is new to this "machine"
            env = {**os.environ, "MOBIFORGE_HOME": str(home)}
            unseen.append(timed(predict, env))
            seen.append(timed(predict, env))
            alone.append(timed(child, env))
        rows.append(
            f"| {runtime} | {out.stat().st_size / 1e3:.0f} KB | {min(unseen):.2f} s | {min(seen):.2f} s | "
            f"{min(unseen) - min(seen):+.2f} s | {min(alone):.2f} s |"
        )
        print(rows[-1], flush=True)
    body = "\n".join([
        "## What loading an unseen artifact in a child first costs `predict`",
        "",
        f"`mobiforge predict FILE photo` in a fresh process, best of {args.repeat}: a file this machine has not seen "
        "(a child process loads it and runs one blank input first), then the same file again (its SHA-256 is "
        "remembered: no child). The child alone: `python -m mobiforge.untrusted FILE`. Model: MobileNetV1 x0.25, "
        "32 px, fp32.",
        "",
        "| runtime | file | predict, unseen file | predict, seen file | cost of the child | child alone |",
        "|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    print(body)
    if args.section:
        write_section(args.section, body)


if __name__ == "__main__":
    main()
