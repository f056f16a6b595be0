"""The web: a static folder that runs the model in the browser (``index.html``, the int8 ``.tflite`` file,
``labels.txt``, ``page.json`` and LiteRT.js's JS and WebAssembly, vendored: nothing is fetched from elsewhere at run
time).

The page decodes a photo or a camera frame, crops and resizes it as the model was trained (``page.json`` holds the
model's own preprocessing) and hands its uint8 pixels to the file, whose graph normalises them and ends in a softmax.
LiteRT.js runs it on its WebAssembly CPU backend (XNNPACK): the relaxed-SIMD build, or the build without it on a
browser that lacks it. Why LiteRT.js over onnxruntime-web: it ran the same int8 model 5 to 6.5 times faster in
Chromium here (RESULTS.md#web_runtimes_hymenoptera).

The folder is judged by running it, as every runtime is. ``runner`` is LiteRT in Python on the folder's own file
(the Python-side runtime); ``sdk_top1`` is the page itself in headless Chromium, driven by Playwright: the page's
decode, crop and resize, then LiteRT.js. The gate asks that the two agree on every val image but near ties, as it
asks of MediaPipe for LiteRT.

The runtime's files come from ``web/node_modules`` (``make install`` runs ``npm ci`` against the committed
lockfile), or from the folder ``MOBIFORGE_WEB_RUNTIMES`` names.
"""

from __future__ import annotations

import dataclasses
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
from mobiforge.backends.litert import LiteRT
from mobiforge.errors import MobiforgeError

PAGE_FILES = ("index.html", "app.js", "style.css")  # mobiforge/backends/web_page/
WEB = "web"  # the runtime row
SHIPPED_WEB_FOLDER = "web"  # the folder ship writes in its run folder, beside model.<ext>
ROW = get_backend(WEB)
PAGE_CONFIG = ROW.marker  # what the page reads: the model file, its preprocessing, the runtime's name
MODEL_FILE = ROW.loads
LABELS = "labels.txt"
RUNTIME_FOLDER = "litert"  # in the web folder
RUNTIME_PACKAGE = "@litertjs/core"
UTILS_PACKAGE = "@litertjs/wasm-utils"  # what the core imports by its bare name: rewritten to the vendored file
# The CPU builds of LiteRT.js's WebAssembly that the page may load: with relaxed SIMD, and without for a browser that
# lacks it (LiteRT.js picks). Not the threaded or JSPI builds (WebGPU, WebNN): 9 MB each for about 1 ms here.
WASM_BUILDS = ("litert_wasm_internal", "litert_wasm_compat_internal")
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
    return f"LiteRT.js {package['version']} (WebAssembly)"


def vendor_runtime(target: Path) -> dict[str, Any]:
    """LiteRT.js's files the page loads, copied into ``target``; its package.json. The core's one bare import (its
    WebAssembly loader) is pointed at the copy beside it, so the page needs no import map and no bundler."""
    core, package = runtime_package()
    utils, _ = runtime_package(UTILS_PACKAGE)
    source = (core / "dist" / "index.js").read_text()
    bare = f'from "{UTILS_PACKAGE}"'
    if bare not in source:
        raise MobiforgeError(f"{core}: LiteRT.js {package['version']} is laid out otherwise than expected: pin 2.5.3")
    (target / "wasm").mkdir(parents=True)
    (target / "core.js").write_text(source.replace(bare, 'from "./wasm-utils.js"'))
    shutil.copyfile(utils / "dist" / "bundle.js", target / "wasm-utils.js")
    for build in WASM_BUILDS:
        for suffix in (".js", ".wasm"):
            shutil.copyfile(core / "wasm" / f"{build}{suffix}", target / "wasm" / f"{build}{suffix}")
    (target / "NOTICE.txt").write_text(
        f"LiteRT.js ({RUNTIME_PACKAGE} and {UTILS_PACKAGE}) {package['version']}, {package.get('license')} licence, "
        "https://github.com/google-ai-edge/LiteRT\n"
    )
    return package


def write_folder(folder: Path, write_model: Any, interface: Interface | None) -> Path:
    """The static web folder at ``folder``, built beside it and swapped in whole: the model file (``write_model``
    writes it to the path it is given), the page, its config, the labels and the vendored runtime."""
    if interface is None or interface.preprocess is None:
        raise MobiforgeError("a web folder needs the model's preprocessing and classes (export passes them)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    building.chmod(0o755)  # served as it is: readable by a web server's user, as a folder made by mkdir is
    try:
        package = vendor_runtime(building / RUNTIME_FOLDER)
        write_model(building / MODEL_FILE)
        page = Path(__file__).with_name("web_page")
        for name in PAGE_FILES:
            shutil.copyfile(page / name, building / name)
        (building / LABELS).write_text("".join(f"{name}\n" for name in interface.classes), encoding="utf-8")
        config = {
            "name": interface.about.name if interface.about else "",
            "model": MODEL_FILE,
            "runtime": f"LiteRT.js {package['version']}",
            "input": "uint8 RGB pixels, NHWC (the normalisation is in the model's graph)",
            "output": "probabilities",
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


def _pixels(interface: Interface | None) -> Interface | None:
    """The page hands the file the canvas's uint8 pixels: the file takes pixels, whatever export was asked."""
    return dataclasses.replace(interface, pixels=True) if interface is not None else None


class Web(BackendImpl):
    def write(self, model: nn.Module, example: torch.Tensor, path: Path, interface: Interface | None = None) -> Path:
        return write_folder(path, lambda target: LiteRT().write(model, example, target, _pixels(interface)), interface)

    def write_int8(self, model: nn.Module, job: Int8Job, path: Path) -> tuple[nn.Module | None, str]:
        written: list[tuple[nn.Module | None, str]] = []

        def int8(target: Path) -> None:
            written.append(
                LiteRT().write_int8(model, dataclasses.replace(job, interface=_pixels(job.interface)), target)
            )

        write_folder(path, int8, job.interface)
        reference, note = written[0]
        folder = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        return reference, f"{note}; run in the browser by {runtime_title()}; the folder: {folder / 1e6:.1f} MB"

    def int8_simulator(self, model: nn.Module, job: Int8Job, images: torch.Tensor, scratch: Path) -> Simulator:
        return LiteRT().int8_simulator(model, job, images, scratch)

    def runner(self, path: Path, threads: int, interface: Interface | None = None) -> Runner:
        return LiteRT().runner(model_file(path), threads, interface)

    def input_shape(self, path: Path) -> tuple[int, ...]:
        return LiteRT().input_shape(model_file(path))

    def embedded_info(self, path: Path) -> tuple[list[str], tuple[float, ...], tuple[float, ...]] | None:
        return LiteRT().embedded_info(model_file(path))

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
