"""A web folder served on 127.0.0.1 and opened in headless Chromium, driven by Playwright: how the web gate, the
tests and the latency benchmark run the page as a user's browser does.

The folder is served with the headers that make a page cross-origin isolated (``Cross-Origin-Opener-Policy`` and
``Cross-Origin-Embedder-Policy``), which a WebAssembly runtime needs for threads, as ``mobiforge serve`` serves it. The
browser is Debian's ``chromium`` (never Playwright's own download); every request that is not to the folder's own
address is aborted and recorded, so a page that reaches outside its folder is caught, not served.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from mobiforge.backend_api import Region
from mobiforge.errors import MobiforgeError, missing

CHROMIUM_ENV = "MOBIFORGE_CHROMIUM"  # a Chromium binary other than the one on PATH
LOAD_TIMEOUT_MS = 60_000
# What a static folder is served with: module scripts and WebAssembly need their own types (Python 3.11's table
# lacks .mjs), and the isolation headers let the page use threads
CONTENT_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json":
                 "application/json", ".svg": "image/svg+xml"}  # fmt: skip
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


class StaticFolder(SimpleHTTPRequestHandler):
    """Serves one folder, read-only, with the isolation headers; extra: paths served from memory (serve's QR)."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **CONTENT_TYPES}
    extra: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in self.extra:
            content_type, body = self.extra[path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not the user's output


def static_server(
    folder: Path, host: str = "127.0.0.1", port: int = 0, extra: dict[str, tuple[str, bytes]] | None = None
) -> ThreadingHTTPServer:
    """A server (not yet serving) of ``folder`` on ``host:port`` (0: any free port); ``extra``: paths served from
    memory, a dict the caller may fill once the server is bound."""
    handler = type("Folder", (StaticFolder,), {"extra": extra if extra is not None else {}})
    return ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(folder)))


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    """``folder`` served on 127.0.0.1 for the duration: yields its origin (``http://127.0.0.1:PORT``)."""
    server = static_server(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chromium_path() -> str:
    """Debian's Chromium (or ``$MOBIFORGE_CHROMIUM``), or a one-line error saying how to install it."""
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise MobiforgeError(
            "the web page runs in Chromium, which is not installed: make install installs it (as root on Debian: "
            f"apt-get install chromium), or set {CHROMIUM_ENV}"
        )
    return found


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 RGB HWC image as a lossless PNG: the page decodes exactly these pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class PageSession:
    """The web folder's page open in headless Chromium (a context manager)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.outside: list[str] = []  # requests to anything but the folder's own address (aborted)
        self.requested: list[str] = []  # the folder's files the page asked for, by path
        self.errors: list[str] = []  # the page's console errors and uncaught exceptions
        self.init_script = ""  # run before the page's own scripts (the tests stub browser features with it)
        self.browser_args: list[str] = []  # Chromium's flags beyond the defaults (a fake camera)
        self._stack: list[Any] = []

    def __enter__(self) -> PageSession:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise missing("playwright") from None
        executable = chromium_path()
        try:
            self._open(sync_playwright, executable)
        except MobiforgeError:
            self.__exit__(None, None, None)
            raise
        except Exception as error:  # Playwright's own: Chromium would not start, or the page timed out
            self.__exit__(None, None, None)
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise MobiforgeError(f"{self.folder}: Chromium could not open the page ({reason})") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _open(self, sync_playwright: Any, executable: str) -> None:
        origin_context = serving(self.folder)
        self.origin = origin_context.__enter__()
        self._stack.append(origin_context)
        playwright = sync_playwright().start()
        self._stack.append(playwright)
        self.browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", *self.browser_args]
        )
        self.context = self.browser.new_context()
        if self.init_script:
            self.context.add_init_script(self.init_script)
        self.context.route("**/*", self._only_own_origin)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(f"{self.origin}/index.html", timeout=LOAD_TIMEOUT_MS)
        try:
            self.page.evaluate("window.mobiforge.ready")
        except Exception:
            status = self.page.text_content("#status") or "no status"
            raise MobiforgeError(f"{self.folder}: the page did not load its model in Chromium ({status})") from None

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _only_own_origin(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.origin + "/"):
            self.requested.append(url.removeprefix(self.origin))
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "browser", None) is not None:
            self.browser.close()
            self.browser = None
        while self._stack:
            item = self._stack.pop()
            if hasattr(item, "stop"):
                item.stop()
            else:
                item.__exit__(None, None, None)

    def classify_bytes(self, data: bytes, region: Region | None = None) -> dict[str, Any]:
        """The page's top-5 of an image file's bytes (``region``: left, top, right, bottom fractions; default: the
        region the model saw in training). A file the page cannot classify raises MobiforgeError with its message."""
        try:
            return self.page.evaluate(
                "([data, region]) => window.mobiforge.classifyBytes(data, region)",
                [base64.b64encode(data).decode(), list(region) if region else None],
            )
        except Exception as error:
            message = str(error).splitlines()[0].removeprefix("Error: ").removeprefix("Page.evaluate: Error: ")
            raise MobiforgeError(message) from None

    def classify_pixels(self, image: np.ndarray, region: Region | None) -> dict[str, Any]:
        """The page's top-5 of a uint8 RGB image; ``region`` None: the whole image, as the SDKs take it."""
        return self.classify_bytes(png_bytes(image), region or (0.0, 0.0, 1.0, 1.0))

    def status(self) -> str:
        return self.page.text_content("#status") or ""

    def info(self) -> dict[str, Any]:
        return self.page.evaluate("window.mobiforge.info()")

    def title(self) -> str:
        info = self.info()
        simd = "with relaxed SIMD" if info["simd"] else "without relaxed SIMD"
        return f"the page in Chromium {self.browser.version} ({info['runtime']}, WebAssembly {simd}, 1 thread)"


CAMERA_SIZE = (640, 480)  # the fake camera's frame, a phone camera's 4:3


def still_camera_video(image: Path, out: Path) -> Path:
    """``image`` as a one-frame Y4M video (4:2:0), which Chromium's fake camera plays in a loop."""
    from PIL import Image, ImageOps

    frame = ImageOps.fit(Image.open(image).convert("RGB"), CAMERA_SIZE).convert("YCbCr")
    luma, blue, red = frame.split()
    half = (CAMERA_SIZE[0] // 2, CAMERA_SIZE[1] // 2)
    chroma = [plane.resize(half, Image.Resampling.BILINEAR).tobytes() for plane in (blue, red)]
    header = f"YUV4MPEG2 W{CAMERA_SIZE[0]} H{CAMERA_SIZE[1]} F30:1 Ip A1:1 C420jpeg\n".encode()
    out.write_bytes(header + b"FRAME\n" + luma.tobytes() + chroma[0] + chroma[1])
    return out


def camera_screenshot(folder: Path, image: Path, out: Path) -> Path:
    """A screenshot of the page classifying a camera frame, the camera stubbed by ``image`` (Chromium's fake media
    stream): what a user sees on the phone."""
    video = still_camera_video(image, out.with_suffix(".y4m"))
    session = PageSession(folder)
    session.browser_args = [
        "--use-fake-ui-for-media-stream",  # grant the camera without the permission prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
    try:
        with session:
            page = session.page
            page.set_viewport_size({"width": 480, "height": 900})
            page.click("#camera")
            page.wait_for_function("() => document.getElementById('video').videoWidth > 0", timeout=LOAD_TIMEOUT_MS)
            page.click("#snap")
            page.wait_for_function("() => document.querySelectorAll('#top li').length > 0", timeout=LOAD_TIMEOUT_MS)
            page.screenshot(path=str(out), full_page=True)
    finally:
        video.unlink(missing_ok=True)
    return out
