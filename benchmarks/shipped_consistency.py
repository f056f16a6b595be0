"""Issue 42's "done when" on a real ship run: the card's top-1, ``eval`` of the shipped file, ``predict`` over the
val images and the ``serve`` page agree to the image, and no shared file holds a local absolute path or is private.

    python -m benchmarks.shipped_consistency RUN_DIR [--data DIR]   # e.g. runs/ship-digits after `make demo`
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.request
from pathlib import Path

from benchmarks.results import write_section
from mobiforge.data import data_root, is_image_name
from mobiforge.runtimes import evaluate_artifact, predict_artifact
from mobiforge.serve import make_server, served_artifact

PRIVATE_FILES = (".pt",)  # checkpoints keep the data path they trained on (eval and resume read it)


def page_answers(artifact: Path, images: list[str]) -> list[str]:
    httpd = make_server(served_artifact(artifact))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = "http://{}:{}/predict".format(*httpd.server_address[:2])
    try:
        answers = []
        for image in images:
            request = urllib.request.Request(url, data=Path(image).read_bytes(), method="POST")
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append(json.loads(response.read())["top"][0]["class"])
        return answers
    finally:
        httpd.shutdown()
        httpd.server_close()


def leaks(run: Path, local: list[str]) -> tuple[list[str], list[str]]:
    """Files naming a local absolute path, and files others cannot read."""
    named, private = [], []
    for path in sorted(p for p in run.rglob("*") if p.is_file() and p.suffix not in PRIVATE_FILES):
        content = path.read_bytes()
        if any(text.encode() in content for text in local):
            named.append(str(path.relative_to(run)))
        if path.stat().st_mode & 0o044 != 0o044:
            private.append(f"{path.relative_to(run)} ({oct(path.stat().st_mode & 0o777)})")
    return named, private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--section", default="shipped_consistency", help="the RESULTS.md section to write")
    args = parser.parse_args()
    run = args.run
    artifact = served_artifact(run).artifact  # the file serve shows: the default runtime's first
    card = json.loads((run / "model_card.json").read_text())
    evaluated = evaluate_artifact(artifact)
    root = data_root(evaluated.data)  # the data its report records (a DIR/val layout here: digits, hymenoptera)
    images = sorted(str(p) for p in (root / "val").rglob("*") if p.is_file() and is_image_name(p.name))
    predicted = [row["top"][0]["class"] for row in predict_artifact(artifact, images)]
    labels = [Path(image).parent.name for image in images]
    predict_top1 = 100.0 * sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(images)
    page = page_answers(artifact, images)
    local = [str(run.resolve()), str(root.resolve()), str(Path.home())]
    named, private = leaks(run, local)
    same_page = sum(a == b for a, b in zip(page, predicted, strict=True))
    lines = [
        f"## One image, one answer: `{artifact.name}` of a ship run (issue 42)",
        "",
        f"The run: `{card['command']}`, shipped `{card['model']['candidate']}`, {card['artifact']['bytes'] / 1e6:.2f} "
        f"MB, {card['latency_ms']['median']:.2f} ms, in {card['budget']['time_used_s'] / 60:.1f} min.",
        "",
        "| figure | top-1 | images |",
        "|---|---|---|",
        f"| model card (ship's gate) | {card['accuracy']['top1_in_runtime']:.2f}% | {card['accuracy']['images']} |",
        f"| `mobiforge eval {artifact.name}` (no --data: the recorded split) | {evaluated.result.top1:.2f}% | "
        f"{evaluated.result.images} |",
        f"| `mobiforge predict {artifact.name} VAL_FOLDER` | {predict_top1:.2f}% | {len(images)} |",
        f"| the `serve` page (HTTP POST of each file) | same top-1 as predict on {same_page} of {len(images)} | "
        f"{len(page)} |",
        "",
        "Shared files naming the absolute path of the run folder, the data or the home folder: "
        f"{', '.join(named) or 'none'}. "
        f"Files others cannot read: {', '.join(private) or 'none'}.",
    ]
    write_section(args.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
