"""The web runtimes side by side in headless Chromium on this machine, and the web gate.

- **Latency**: LiteRT.js (its WebAssembly CPU backend, XNNPACK; 1 and 2 threads) on the int8 ``.tflite`` of the web
  folder, and onnxruntime-web (WebAssembly, SIMD; 1 and 2 threads) on the int8 ONNX export of the same checkpoint,
  each on a bare page that times the runtime's own call (``performance.now``), batch 1, after a warm-up, cross-origin
  isolated so that threads are allowed; the web folder's own page (its call to LiteRT.js); and LiteRT and ONNX
  Runtime in Python on the same two files.
- **The gate**: ``export --format web`` of the checkpoint, whose gate runs the page in Chromium over the val images:
  the page's top-1 against LiteRT's in Python on the same file, and the images they disagree on that are not near
  ties.

    python -m benchmarks.web_runtimes --checkpoint RUN/best.pt --name hymenoptera --scratch /tmp/web-runtimes
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import write_section
from mobiforge.backends.browser import chromium_path, serving
from mobiforge.backends.web import MODEL_FILE, node_modules, runtime_title, vendor_runtime
from mobiforge.export import ArtifactReport, ExportConfig, export_checkpoint
from mobiforge.profile import measure_latency
from mobiforge.runtimes import input_shape, load_runner

THREADS = (1, 2)
WARMUP, RUNS = 10, 60
LITERT = "@litertjs/core"
ORT_WEB = "onnxruntime-web"
ORT_FILES = ("dist/ort.wasm.min.mjs", "dist/ort-wasm-simd-threaded.mjs", "dist/ort-wasm-simd-threaded.wasm")
ORT_PAGE = """<!doctype html><meta charset="utf-8"><title>onnxruntime-web latency</title>
<script type="module" src="bench.js"></script>"""
ORT_SCRIPT = """import * as ort from './ort/ort.wasm.min.mjs';
window.bench = async (threads, warmup, runs) => {
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create('model.onnx', {executionProviders: ['wasm']});
  const shape = [1, 3, SIZE, SIZE];
  const input = new ort.Tensor('float32', new Float32Array(3 * SIZE * SIZE), shape);
  const times = [];
  for (let i = 0; i < warmup + runs; i++) {
    const started = performance.now();
    await session.run({[session.inputNames[0]]: input});
    if (i >= warmup) times.push(performance.now() - started);
  }
  const threadsUsed = ort.env.wasm.numThreads;
  return {times, input: `float32 ${shape.join('x')}`, threads: threadsUsed, isolated: self.crossOriginIsolated};
};
"""
BENCH_PAGE = """<!doctype html><meta charset="utf-8"><title>LiteRT.js latency</title>
<script type="module" src="bench.js"></script>"""
BENCH_SCRIPT = """import {loadLiteRt, loadAndCompile, Tensor} from './litert/core.js';
window.bench = async (threads, warmup, runs) => {
  await loadLiteRt('./litert/wasm/', {threads: threads > 1});
  const model = await loadAndCompile('model.tflite', {accelerator: 'wasm', cpuOptions: {numThreads: threads}});
  const [details] = model.getInputDetails();
  const size = details.shape.reduce((a, b) => a * b, 1);
  const data = details.dtype === 'uint8' ? new Uint8Array(size).fill(128) : new Float32Array(size);
  const times = [];
  for (let i = 0; i < warmup + runs; i++) {
    const input = new Tensor(data, details.shape);
    const started = performance.now();
    const outputs = await model.run(input);
    const elapsed = performance.now() - started;
    input.delete();
    for (const output of outputs) output.delete();
    if (i >= warmup) times.push(elapsed);
  }
  return {times, input: `${details.dtype} ${details.shape.join('x')}`};
};
"""


def export(checkpoint: str, fmt: str, out: Path, val_images: int | None, data: str | None) -> ArtifactReport:
    where = {"data": data} if data else {}
    config = ExportConfig(
        checkpoint, fmt, "ptq", out=str(out), val_images=val_images, workers=0, latency_seconds=0.2,
        pixel_input=fmt == "tflite", **where,
    )  # fmt: skip
    return export_checkpoint(config)


def page_latency(folder: Path, image: bytes) -> float:
    """The web folder's own page: its call to LiteRT.js on a photo, timed inside the page."""
    from mobiforge.backends.browser import PageSession

    with PageSession(folder) as page:
        times = [page.classify_bytes(image)["runtime_ms"] for _ in range(WARMUP + RUNS)][WARMUP:]
    return statistics.median(times)


def _bench(site: Path, threads: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with serving(site) as origin, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{origin}/index.html")
        result = page.evaluate(f"window.bench({threads}, {WARMUP}, {RUNS})")
        browser.close()
    return result


def ort_web_latency(onnx: Path, size: int, scratch: Path, threads: int) -> tuple[float, str]:
    site = scratch / "ort-site"
    shutil.rmtree(site, ignore_errors=True)
    (site / "ort").mkdir(parents=True)
    for name in ORT_FILES:
        shutil.copyfile(node_modules() / ORT_WEB / name, site / "ort" / Path(name).name)
    shutil.copyfile(onnx, site / "model.onnx")
    (site / "index.html").write_text(ORT_PAGE)
    (site / "bench.js").write_text(ORT_SCRIPT.replace("SIZE", str(size)))
    result = _bench(site, threads)
    assert result["isolated"] and result["threads"] == threads, result
    return statistics.median(result["times"]), result["input"]


def litert_latency(tflite: Path, scratch: Path, threads: int) -> tuple[float, str]:
    site = scratch / "litert-site"
    shutil.rmtree(site, ignore_errors=True)
    vendor_runtime(site / "litert")  # as the web folder holds it, with the threaded build beside it
    threaded = node_modules() / LITERT / "wasm" / "litert_wasm_threaded_internal"
    for suffix in (".js", ".wasm"):
        shutil.copyfile(threaded.with_suffix(suffix), site / "litert" / "wasm" / threaded.with_suffix(suffix).name)
    shutil.copyfile(tflite, site / "model.tflite")
    (site / "index.html").write_text(BENCH_PAGE)
    (site / "bench.js").write_text(BENCH_SCRIPT)
    result = _bench(site, threads)
    return statistics.median(result["times"]), result["input"]


def python_latency(path: Path, threads: int) -> float:
    """LiteRT or ONNX Runtime in Python on the file, through the runner every command uses (normalised floats in)."""
    runner = load_runner(path, threads=threads)
    shape = input_shape(path)
    batch = np.zeros((1, *shape[1:]), dtype=np.float32)
    return measure_latency(lambda: runner(batch), warmup=WARMUP, min_runs=RUNS).median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--name", required=True, help="the data's name, for the record")
    parser.add_argument("--data", help="the folder to gate on (default: the checkpoint's)")
    parser.add_argument("--val-images", type=int, default=None, help="val images for the gate (default: all)")
    parser.add_argument("--scratch", default="/tmp/web-runtimes")
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    web = export(args.checkpoint, "web", scratch / "web", args.val_images, args.data)
    export_seconds = time.perf_counter() - started
    onnx = export(args.checkpoint, "onnx", scratch / "model.onnx", 16, args.data)
    folder, tflite = Path(web.path), Path(web.path) / MODEL_FILE
    size = input_shape(Path(onnx.path))[-1]
    rows: list[tuple[str, str, float]] = [
        (f"the web folder's page ({runtime_title()})", "1", page_latency(folder, _first_val_image(folder)))
    ]
    litert_input = ort_input = ""
    for threads in THREADS:
        milliseconds, litert_input = litert_latency(tflite, scratch, threads)
        rows.append((f"LiteRT.js {_version(LITERT)}, wasm (XNNPACK)", f"{threads}", milliseconds))
    for threads in THREADS:
        milliseconds, ort_input = ort_web_latency(Path(onnx.path), size, scratch, threads)
        rows.append((f"onnxruntime-web {_version(ORT_WEB)}, wasm SIMD", f"{threads}", milliseconds))
    for threads in THREADS:
        rows.append(("LiteRT in Python (the same .tflite)", f"{threads}", python_latency(tflite, threads)))
    for threads in THREADS:
        rows.append(("ONNX Runtime in Python (the same .onnx)", f"{threads}", python_latency(Path(onnx.path), threads)))
    _record(args, web, onnx, rows, (litert_input, ort_input), export_seconds)


def _first_val_image(folder: Path) -> bytes:
    """The first val photo the web folder was gated on (its export's report says where the data is)."""
    from mobiforge.config import BUILTIN_DATASETS, DataConfig
    from mobiforge.data import discover

    data = json.loads(Path(f"{folder}.json").read_text())["data"]["data"]
    if data not in BUILTIN_DATASETS and not Path(data).is_absolute():
        data = str(folder.parent / data)
    return Path(discover(DataConfig(data=data)).val[0][0]).read_bytes()


def _version(package: str) -> str:
    return json.loads((node_modules() / package / "package.json").read_text())["version"]


def _record(args: Any, web: ArtifactReport, onnx: ArtifactReport, rows: list[tuple[str, str, float]],
            inputs: tuple[str, str], export_seconds: float) -> None:  # fmt: skip
    table = "\n".join(f"| {runtime} | {threads} | {ms:.2f} |" for runtime, threads, ms in rows)
    body = (
        f"`python -m benchmarks.web_runtimes --checkpoint {Path(args.checkpoint).name} --name {args.name}`: the same "
        f"checkpoint in int8, batch 1, in headless Chromium here (median of {RUNS} calls after {WARMUP}, timed "
        "inside the page), against LiteRT and ONNX Runtime in Python on the same files.\n\n"
        "| runtime | threads | latency, ms |\n|---|---|---|\n" + table + "\n\n"
        f"LiteRT.js ran the web folder's `model.tflite` ({inputs[0]} input, {web.file_bytes / 1e6:.2f} MB); "
        f"onnxruntime-web the `--format onnx` export ({inputs[1]} input, {onnx.file_bytes / 1e6:.2f} MB).\n\n"
        f"**The web gate** on {web.images} val images: LiteRT (Python) top-1 {web.top1:.2f}%; the page in "
        f"Chromium on the same pixels {web.sdk_top1:.2f}% (agreement {web.sdk_agreement:.2f}%, "
        f"{web.sdk_clear_disagreements} disagreements that are not near ties); the page on the full-size photos, "
        f"its own decode and resize, {web.sdk_app_top1:.2f}%. Gate passed: {web.passed}. ({web.sdk})\n\n"
        f"The whole web export (int8 calibration, the folder, both page passes over the val images, the Python side) "
        f"took {export_seconds:.0f} s: {export_seconds / web.images:.3f} s per val image."
    )
    figures = {
        "export_seconds": round(export_seconds, 1),
        "export_seconds_per_image": round(export_seconds / web.images, 4),
        "latency_ms": {f"{runtime} / {threads}": round(ms, 3) for runtime, threads, ms in rows},
        "gate": {
            "images": web.images,
            "python_runtime_top1": web.top1,
            "page_top1": web.sdk_top1,
            "page_full_size_top1": web.sdk_app_top1,
            "agreement": web.sdk_agreement,
            "clear_disagreements": web.sdk_clear_disagreements,
            "passed": web.passed,
        },
    }
    write_section(f"web_runtimes_{args.name}", body, figures)
    print(body)


if __name__ == "__main__":
    main()
