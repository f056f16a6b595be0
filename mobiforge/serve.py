"""``mobiforge serve RUN_DIR|ARTIFACT``: a local page to try an exported model on your own photos before writing any
app code. Drop photos (or take one with the webcam) and see the top-5 classes with probabilities, computed by the
artifact in its own runtime on this machine, and the time the runtime took.

The server is the standard library's: one page, one JSON endpoint, no front-end build step. It binds 127.0.0.1
unless told otherwise, caps the upload size, and answers a file that is not an image with a message while it keeps
serving. The runtime runs one photo at a time (a lock), as a phone would.

Any page open in the user's browser can send requests to 127.0.0.1, so the server answers only requests addressed
to it: the ``Host`` header must name the address it listens on (a DNS-rebinding page sends its own name), and an
``Origin``, when the browser sends one, must be the page's own. Uploads are decoded at most MAX_DECODES at a time,
each refused from its header when over the decode limit, so concurrent uploads cannot take the memory (six 64-MP
PNGs at once once took it from 1.0 to 4.6 GB); an idle connection is closed after IDLE_SECONDS, and a client that
goes away is a log line.
"""

from __future__ import annotations

import errno
import html
import io
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from mobiforge.backend_api import (
    BACKENDS,
    DEFAULT_RUNTIME,
    backend_for,
    get_backend,
    is_artifact,
    runnable_suffixes,
)
from mobiforge.backends.browser import static_server
from mobiforge.backends.web import SHIPPED_WEB_FOLDER, WEB
from mobiforge.config import ServeConfig
from mobiforge.errors import MobiforgeError
from mobiforge.inference import prepare_images, top_classes
from mobiforge.log import logger
from mobiforge.runtimes import ArtifactInfo, RuntimeModel, artifact_info, checked_model
from mobiforge.units import named

MAX_UPLOAD_BYTES = 25 * 2**20  # a 48-megapixel phone JPEG is 10-20 MB
TOP = 5
MAX_DECODES = 2  # uploads decoded at once; the others wait (up to DECODE_WAIT_SECONDS) or are told to retry
DECODE_WAIT_SECONDS = 30.0
IDLE_SECONDS = 30  # a connection that sends nothing for this long is closed (one thread per connection)
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_HOST = ServeConfig.host
QR_FILE = "qr.svg"  # served by serve --lan beside the web folder's files


@dataclass
class Served:
    """The artifact behind the page, loaded once."""

    artifact: Path
    info: ArtifactInfo
    model: RuntimeModel
    report: Path | None
    lock: threading.Lock
    decodes: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_DECODES))

    def classify(self, data: bytes) -> dict[str, Any]:
        """Top-5 of one uploaded image, through the same preprocessing and runner contract as ``predict``;
        ValueError with a plain sentence for anything that is not a readable image, Busy when MAX_DECODES others
        are being decoded for longer than DECODE_WAIT_SECONDS."""
        if not self.decodes.acquire(timeout=DECODE_WAIT_SECONDS):
            raise Busy("the server is decoding other photos; send this one again in a moment")
        try:
            batch = prepare_images([io.BytesIO(data)], self.info.preprocess)
        except MobiforgeError as error:
            raise ValueError(str(error).removeprefix("this file: ")) from None
        finally:
            self.decodes.release()
        with self.lock, torch.inference_mode():
            started = time.perf_counter()
            logits = self.model(batch)
            milliseconds = 1000 * (time.perf_counter() - started)
        return {"top": top_classes(logits, self.info.classes, TOP)[0], "latency_ms": milliseconds}


class Busy(Exception):
    """Every decode slot stayed taken: the client is asked to retry (503)."""


def served_artifact(target: str | Path, threads: int = 1) -> Served:
    """The artifact of a ship run folder (its ``model.*``) or an artifact file, with its report when there is one."""
    path = Path(target)
    if path.is_dir():
        found = [
            path / f"model{BACKENDS[name].suffix}" for name in sorted(BACKENDS, key=lambda n: n != DEFAULT_RUNTIME)
        ]
        artifacts = [candidate for candidate in found if candidate.is_file()]
        if not artifacts:
            suffixes = ", ".join(f"model{backend.suffix}" for backend in BACKENDS.values())
            raise MobiforgeError(f"{path} holds no shipped model ({suffixes}); give a ship run folder or an artifact")
        path = artifacts[0]
    elif not is_artifact(path):
        raise MobiforgeError(f"{target}: give a ship run folder or an exported {runnable_suffixes()} file")
    report = path.parent / "report.html"
    info = artifact_info(path)
    model = checked_model(path, info, threads)
    return Served(path, info, model, report if report.is_file() else None, threading.Lock())


def make_server(served: Served, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``served`` (port 0: any free port; ``server.server_address`` says which)."""

    class Handler(_Handler):
        model = served

    try:
        server = _Server((host, port), Handler)
    except OSError as error:
        raise MobiforgeError(f"cannot listen on {host}:{port} ({error.strerror}); {_listen_advice(error)}") from None
    Handler.hosts = addressed_hosts(host, server.server_address[1])
    return server


def addressed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` headers a request to this server may carry: the bound address and this machine's own names,
    with the port (None: any, where it listens on every address and the user chose the network)."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host, f"[{host}]" if ":" in host else host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= set(LOCAL_NAMES)
    return frozenset(f"{name}:{port}" for name in names)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (or timed out) is one log line, not socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.info("serve: %s from %s", type(error).__name__, client_address[0])
            return
        super().handle_error(request, client_address)


def _listen_advice(error: OSError) -> str:
    """The flag to change: the port when it is taken or reserved, else the host (not an address of this machine)."""
    if error.errno in (errno.EADDRINUSE, errno.EACCES):
        return "choose another --port"
    return "give --host an address of this machine (127.0.0.1 for this machine only, 0.0.0.0 for the network)"


def web_folder(target: str | Path) -> Path | None:
    """The web folder of ``target``: the target itself when it is one, or the one ship writes in its run folder."""
    path = Path(target)
    for candidate in (path, path / SHIPPED_WEB_FOLDER, path / f"model{BACKENDS[WEB].suffix}"):
        if candidate.is_dir() and is_artifact(candidate) and backend_for(candidate).name == WEB:
            return candidate
    return None


def lan_address() -> str:
    """The address this machine has on its local network: the one the OS would send from (a UDP socket's
    ``connect`` sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like any outside address, never reached
            return str(probe.getsockname()[0])
        except OSError:
            raise MobiforgeError("--lan: this machine has no network address; give one with --host") from None


def lan_host(config: ServeConfig) -> str:
    """Where ``--lan`` binds: the address ``--host`` names, else this machine's private LAN address. A public
    address is refused unless named: it would put the page on the internet."""
    if config.host != DEFAULT_HOST:
        return config.host
    address = lan_address()
    if not ipaddress.ip_address(address).is_private:
        raise MobiforgeError(
            f"--lan: this machine's address {address} is not a private (local network) one, so the page would be "
            f"served to the internet; name it with --host {address} if that is what you want"
        )
    return address


def qr_code(url: str) -> tuple[str, bytes]:
    """The QR code of ``url``: for the terminal (text) and for the page (SVG)."""
    import segno

    code = segno.make(url, error="m")
    text, svg = io.StringIO(), io.BytesIO()
    code.terminal(out=text, compact=True)
    code.save(svg, kind="svg", scale=4, border=2)
    return text.getvalue(), svg.getvalue()


def web_server(config: ServeConfig, folder: Path) -> tuple[ThreadingHTTPServer, str, str]:
    """A server (not yet serving) of the static web folder, and its URL; with ``--lan`` also the URL's QR code for the
    terminal, which the page shows too (``qr.svg``, named in the ``page.json`` served from memory)."""
    host = lan_host(config) if config.lan else config.host
    port, extra = config.port, dict[str, tuple[str, bytes]]()
    try:
        server = static_server(folder, host, port, extra)  # bound first: port 0 picks one, which the URL must name
    except OSError as error:
        raise MobiforgeError(f"cannot listen on {host}:{port} ({error.strerror}); {_listen_advice(error)}") from None
    url = f"http://{host}:{server.server_address[1]}/"
    if not config.lan:
        return server, url, ""
    terminal, svg = qr_code(url)
    # the page shows the code when its config names it: served from memory, the folder itself untouched
    config_file = folder / get_backend(WEB).marker
    try:
        page = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        server.server_close()
        raise MobiforgeError(
            f"{config_file}: unreadable ({type(error).__name__}); export the web folder again"
        ) from None
    extra[f"/{config_file.name}"] = ("application/json", json.dumps({**page, "qr": QR_FILE}).encode())
    extra[f"/{QR_FILE}"] = ("image/svg+xml", svg)
    return server, url, terminal


def serve_web(config: ServeConfig, folder: Path) -> None:
    """Serve the static web folder until Ctrl-C: the page runs the model in the visitor's browser."""
    server, url, terminal = web_server(config, folder)
    print(f"serving {folder.name}/ at {url} (the model runs in the visitor's browser; Ctrl-C stops)")
    if config.lan:
        print(terminal, end="")
        print(f"Open {url} on a phone on the same network (or scan the code). Phones give the camera only to https "
              "pages: the page offers its file picker, and docs/web.md says how to get https.")  # fmt: skip
    _serve_until_interrupted(server)


def _serve_until_interrupted(server: ThreadingHTTPServer) -> None:
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve(config: ServeConfig) -> None:
    """Serve until Ctrl-C (the CLI's ``mobiforge serve``): the page running the model in this machine's runtime, or
    with ``--lan`` (or a web folder given) the static web folder, whose page runs it in the browser."""
    folder = web_folder(config.target)
    if config.lan and folder is None:
        raise MobiforgeError(
            f"{config.target}: no web folder to serve on the network; ship writes one (RUN/{SHIPPED_WEB_FOLDER}) "
            "with a minute of budget left, or write one with mobiforge export --format web"
        )
    target = Path(config.target)
    shipped_file = target.is_dir() and any((target / f"model{b.suffix}").is_file() for b in BACKENDS.values())
    if folder is not None and (config.lan or target == folder or not shipped_file):
        serve_web(config, folder)
        return
    served = served_artifact(config.target, config.threads)
    server = make_server(served, config.host, config.port)
    host, port = server.server_address[:2]
    print(
        f"serving {served.artifact.name} ({len(served.info.classes)} classes) at http://{host}:{port}/ (Ctrl-C stops)"
    )
    _serve_until_interrupted(server)


class _Handler(BaseHTTPRequestHandler):
    model: Served
    hosts: frozenset[str] | None = None
    server_version = "mobiforge"
    timeout = IDLE_SECONDS

    def _addressed_here(self) -> bool:
        """Whether the request names this server (``Host``) and, when it says where it comes from, is from its own
        page (``Origin``); otherwise it is answered 403 and nothing runs."""
        host = self.headers.get("Host", "")
        origin = self.headers.get("Origin")
        if (self.hosts is not None and host not in self.hosts) or (origin is not None and origin != f"http://{host}"):
            self.close_connection = True
            self._json(HTTPStatus.FORBIDDEN, {"error": "requests to this page must come from the page itself"})
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the user's terminal is theirs: no access log lines

    def do_GET(self) -> None:
        if not self._addressed_here():
            return
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", _page(self.model).encode())
        elif self.path == "/report" and self.model.report is not None:
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.model.report.read_bytes())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})

    def do_POST(self) -> None:
        if not self._addressed_here():
            return
        if self.path != "/predict":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length <= 0 or length > MAX_UPLOAD_BYTES:
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > MAX_UPLOAD_BYTES else HTTPStatus.BAD_REQUEST
            self.close_connection = True  # the unread body is not left on the connection
            self._json(status, {"error": f"send one image of at most {MAX_UPLOAD_BYTES // 2**20} MB"})
            return
        data = self.rfile.read(length)
        try:
            self._json(HTTPStatus.OK, self.model.classify(data))
        except ValueError as error:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        except Busy as error:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)})

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def _page(served: Served) -> str:
    values = {
        "name": html.escape(served.artifact.name),
        "classes": html.escape(named(list(served.info.classes), 12)),
        "report": '<a href="/report" target="_blank">the ship report</a> · ' if served.report else "",
    }
    # one pass: a class named {{report}} is text, not a placeholder filled after it
    return re.sub(r"\{\{(name|classes|report)\}\}", lambda match: values[match.group(1)], PAGE)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mobiforge: {{name}}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2em;text-align:center;background:#fafafa}
#drop.over{background:#e8f0fe}
.result{display:flex;gap:1em;align-items:flex-start;border-bottom:1px solid #eee;padding:.8em 0}
.result img{width:128px;height:128px;object-fit:cover;border-radius:4px}
.bar{background:#4a90d9;height:8px;border-radius:4px}
.error{color:#b00020}
video{max-width:320px;display:none}
</style></head><body>
<h1>{{name}}</h1>
<p>{{report}}classes: {{classes}}. Every photo is classified by this file in its own runtime on this machine.</p>
<div id="drop">Drop photos here, or <input id="files" type="file" accept="image/*" multiple>
<button id="camera" type="button">use the webcam</button></div>
<video id="video" autoplay playsinline></video>
<div id="results"></div>
<script>
const results = document.getElementById("results");
function show(file, url, answer) {
  const row = document.createElement("div");
  row.className = "result";
  const image = document.createElement("img");
  image.src = url;
  const text = document.createElement("div");
  const title = document.createElement("b");
  title.textContent = file;
  text.appendChild(title);
  if (answer.error) {
    const error = document.createElement("div");
    error.className = "error";
    error.textContent = answer.error;
    text.appendChild(error);
  } else {
    answer.top.forEach((entry, rank) => {
      const line = document.createElement("div");
      const label = document.createElement("span");
      label.className = rank === 0 ? "top1" : "class";
      label.textContent = entry.class;
      line.appendChild(label);
      line.appendChild(document.createTextNode(" " + (100 * entry.probability).toFixed(1) + "%"));
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = (300 * entry.probability) + "px";
      line.appendChild(bar);
      text.appendChild(line);
    });
    const latency = document.createElement("small");
    latency.className = "latency";
    latency.textContent = "runtime: " + answer.latency_ms.toFixed(1) + " ms";
    text.appendChild(latency);
  }
  row.appendChild(image);
  row.appendChild(text);
  results.prepend(row);
}
async function classify(blob, name) {
  let answer;
  try {
    const response = await fetch("/predict", {method: "POST", body: blob});
    answer = await response.json();
  } catch (error) {
    answer = {error: "the server did not answer: " + error};
  }
  show(name, URL.createObjectURL(blob), answer);
}
async function classifyAll(files) { for (const file of files) { await classify(file, file.name); } }
document.getElementById("files").addEventListener("change", event => classifyAll(event.target.files));
const drop = document.getElementById("drop");
drop.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", event => {
  event.preventDefault(); drop.classList.remove("over"); classifyAll(event.dataTransfer.files);
});
document.getElementById("camera").addEventListener("click", async () => {
  const video = document.getElementById("video");
  if (!video.srcObject) {
    video.srcObject = await navigator.mediaDevices.getUserMedia({video: true});
    video.style.display = "block";
    document.getElementById("camera").textContent = "take a photo";
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob(blob => classify(blob, "webcam"), "image/jpeg", 0.92);
});
</script></body></html>
"""
