"""The web: a static folder that runs the model in the browser (``index.html``, the int8 ONNX file, ``labels.txt``,
``page.json`` and onnxruntime-web's JS and WebAssembly, vendored: nothing is fetched from elsewhere at run time).

The page decodes a photo or a camera frame, crops and resizes it as the model was trained (``page.json`` holds the
model's own preprocessing) and runs the file in onnxruntime-web's WebAssembly backend (SIMD; threads where the page
is cross-origin isolated, as ``mobiforge serve`` serves it). Why onnxruntime-web over LiteRT.js:
RESULTS.md#web_runtimes.

The folder is judged by running it, as every runtime is. ``runner`` is ONNX Runtime in Python on the folder's own
file (the Python-side runtime); ``sdk_top1`` is the page itself in headless Chromium, driven by Playwright: the
page's decode, crop and resize, then onnxruntime-web. The gate asks that the two agree on every val image but near
ties, as it asks of MediaPipe for LiteRT.

The runtime's files come from ``web/node_modules`` (``make install`` runs ``npm ci`` against the committed
lockfile), or from the folder ``MOBIFORGE_WEB_RUNTIMES`` names.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiforge.backend_api import (
    AppSnippets,
    BackendImpl,
    Int8Job,
    Interface,
    Region,
    Runner,
    Simulator,
    get_backend,
)
from mobiforge.backends.browser import PageSession
from mobiforge.backends.onnx import OnnxRuntime
from mobiforge.errors import MobiforgeError

PAGE_FILES = ("index.html", "app.js", "style.css")  # mobiforge/backends/web_page/
WEB = "web"  # the runtime row
SHIPPED_WEB_FOLDER = "web"  # the folder ship writes in its run folder, beside model.<ext>
ROW = get_backend(WEB)
PAGE_CONFIG = ROW.marker  # what the page reads: the model file, its preprocessing, the runtime's name
MODEL_FILE = ROW.loads
LABELS = "labels.txt"
RUNTIME_FOLDER = "ort"  # in the web folder
RUNTIME_PACKAGE = "onnxruntime-web"
# The files of onnxruntime-web's WebAssembly build that the page loads (no WebGPU/WebGL: the CPU is what every
# phone has), beside its licence
RUNTIME_FILES = ("dist/ort.wasm.min.mjs", "dist/ort-wasm-simd-threaded.mjs", "dist/ort-wasm-simd-threaded.wasm")
RUNTIMES_ENV = "MOBIFORGE_WEB_RUNTIMES"


def node_modules() -> Path:
    """Where the pinned npm packages are: ``$MOBIFORGE_WEB_RUNTIMES`` or the checkout's ``web/node_modules``."""
    return Path(os.environ.get(RUNTIMES_ENV) or Path(__file__).resolve().parents[2] / "web" / "node_modules")


def runtime_package(name: str = RUNTIME_PACKAGE) -> tuple[Path, dict[str, Any]]:
    """The installed npm package ``name`` and its package.json, or a one-line error saying how to install it."""
    folder = node_modules() / name
    try:
        return folder, json.loads((folder / "package.json").read_text())
    except (OSError, ValueError):
        raise MobiforgeError(
            f"{name} is not installed in {node_modules()}: run make install (npm ci in web/), or point "
            f"{RUNTIMES_ENV} at a node_modules folder holding it"
        ) from None


def runtime_title() -> str:
    _, package = runtime_package()
    return f"{RUNTIME_PACKAGE} {package['version']} (WebAssembly, SIMD)"


def write_folder(folder: Path, write_model: Any, interface: Interface | None) -> Path:
    """The static web folder at ``folder``, built beside it and swapped in whole: the model file (``write_model``
    writes it to the path it is given), the page, its config, the labels and the vendored runtime."""
    if interface is None or interface.preprocess is None:
        raise MobiforgeError("a web folder needs the model's preprocessing and classes (export passes them)")
    source, package = runtime_package()
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    building.chmod(0o755)  # served as it is: readable by a web server's user, as a folder made by mkdir is
    try:
        write_model(building / MODEL_FILE)
        page = Path(__file__).with_name("web_page")
        for name in PAGE_FILES:
            shutil.copyfile(page / name, building / name)
        runtime = building / RUNTIME_FOLDER
        runtime.mkdir()
        for name in RUNTIME_FILES:
            shutil.copyfile(source / name, runtime / Path(name).name)
        (runtime / "NOTICE.txt").write_text(
            f"{RUNTIME_PACKAGE} {package['version']}, {package.get('license', 'MIT')} licence, "
            f"{package.get('homepage', 'https://github.com/microsoft/onnxruntime')}\n"
        )
        (building / LABELS).write_text("".join(f"{name}\n" for name in interface.classes), encoding="utf-8")
        config = {
            "name": interface.about.name if interface.about else "",
            "model": MODEL_FILE,
            "runtime": f"{RUNTIME_PACKAGE} {package['version']}",
            "preprocess": interface.preprocess,
        }
        (building / PAGE_CONFIG).write_text(json.dumps(config, indent=1))
        _swap_in(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def _swap_in(building: Path, folder: Path) -> None:
    """``building`` becomes ``folder``; an older folder there is removed only once the new one is in place."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    building.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def model_file(folder: Path) -> Path:
    return Path(folder) / MODEL_FILE


class Web(BackendImpl):
    def write(self, model: nn.Module, example: torch.Tensor, path: Path, interface: Interface | None = None) -> Path:
        return write_folder(path, lambda target: OnnxRuntime().write(model, example, target), interface)

    def write_int8(self, model: nn.Module, job: Int8Job, path: Path) -> tuple[None, str]:
        notes: list[str] = []

        def int8(target: Path) -> None:
            notes.append(OnnxRuntime().write_int8(model, job, target)[1])

        write_folder(path, int8, job.interface)
        folder = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        return None, f"{notes[0]}; run in the browser by {runtime_title()}; the folder: {folder / 1e6:.1f} MB"

    def int8_simulator(self, model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
        return OnnxRuntime().int8_simulator(model, job, images, scratch)

    def runner(self, path: Path, threads: int, interface: Interface | None = None) -> Runner:
        return OnnxRuntime().runner(model_file(path), threads)

    def input_shape(self, path: Path) -> tuple[int, ...]:
        return OnnxRuntime().input_shape(model_file(path))

    def app_snippets(self, pixels: bool) -> AppSnippets:
        return AppSnippets(kotlin="", swift="", preprocess=False)  # the folder is the app

    def sdk_top1(self, path: Path, images: Iterable[tuple[np.ndarray, Region | None]]) -> tuple[str, np.ndarray]:
        """The page in headless Chromium on each (uint8 RGB image, region): its own decode (of a lossless PNG),
        crop, resize and runtime."""
        with PageSession(path) as page:
            results = [page.classify_pixels(image, region) for image, region in images]
            milliseconds = float(np.median([result["runtime_ms"] for result in results])) if results else 0.0
            predicted = np.asarray([result["top"][0]["index"] for result in results], dtype=np.int64)
            return f"{page.title()}: {milliseconds:.1f} ms median in the runtime", predicted
