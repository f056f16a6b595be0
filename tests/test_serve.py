"""`mobiforge serve` (issue 24, item 6): the page's endpoint answers as `predict` does on the same artifact, a file
that is not an image gets a message and the server keeps serving, and the page works in a real browser (Debian's
chromium driven by Playwright; skipped with the reason where either is absent)."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mobiforge.checkpoint import Checkpoint
from mobiforge.errors import MobiforgeError
from mobiforge.export import ExportConfig, export_checkpoint
from mobiforge.models import create_model
from mobiforge.models.base import Preprocess
from mobiforge.runtimes import predict_artifact
from tests.helpers import make_split_folder


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fp32 ONNX file of a small untrained model (serve does not care how good it is), with its report."""
    root = tmp_path_factory.mktemp("serve")
    data = make_split_folder(root / "data", classes=3, train=4, val=2)
    model = create_model("mobilenet_v1", num_classes=3, width_mult=0.25)
    classes = ["class0", "class1", "class2"]
    checkpoint = Checkpoint.of(model, classes=classes, preprocess=Preprocess(img_size=32, crop_pct=1.0))
    checkpoint.config = {"data": {"data": str(data)}}
    path = checkpoint.save(root / "model.pt")
    out = root / "run" / "model.onnx"
    export_checkpoint(ExportConfig(str(path), "onnx", out=str(out), workers=0, latency_seconds=0.05))
    (root / "run" / "report.html").write_text("<html><body>the ship report</body></html>")
    return out


@pytest.fixture(scope="module")
def server(artifact: Path):  # type: ignore[no-untyped-def]
    from mobiforge.serve import make_server, served_artifact

    httpd = make_server(served_artifact(artifact.parent))  # the run folder: its model.onnx
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()


def _images(artifact: Path) -> list[Path]:
    return sorted((artifact.parent.parent / "data" / "val").rglob("*.png"))[:2]


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_endpoint_answers_as_predict_does_and_survives_a_text_file(server: str, artifact: Path) -> None:
    image = _images(artifact)[0]
    status, answer = _post(server, image.read_bytes())
    expected = predict_artifact(artifact, [str(image)])[0]["top"]
    assert status == 200 and [entry["class"] for entry in answer["top"]] == [entry["class"] for entry in expected]
    assert abs(answer["top"][0]["probability"] - expected[0]["probability"]) < 1e-5 and answer["latency_ms"] > 0
    status, answer = _post(server, b"hello, I am a text file")
    assert status == 400 and answer["error"].startswith("not an image mobiforge can read")
    assert _post(server, image.read_bytes())[0] == 200  # still serving
    with urllib.request.urlopen(server, timeout=30) as response:
        page = response.read().decode()
    assert "model.onnx" in page and "class0, class1, class2" in page and 'href="/report"' in page
    with urllib.request.urlopen(f"{server}/report", timeout=30) as response:
        assert b"the ship report" in response.read()


def test_an_upload_over_the_cap_is_refused(server: str, monkeypatch) -> None:
    import mobiforge.serve

    monkeypatch.setattr(mobiforge.serve, "MAX_UPLOAD_BYTES", 1000)
    status, answer = _post(server, bytes(2000))
    assert status == 413 and "at most" in answer["error"]


def test_serve_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    from mobiforge.serve import served_artifact

    with pytest.raises(MobiforgeError, match="holds no shipped model"):
        served_artifact(tmp_path)


def chromium_or_skip():  # type: ignore[no-untyped-def]
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (make install installs it where apt-get is available)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install 'mobiforge[dev]')")
    return executable, sync_playwright


def test_the_page_classifies_dropped_photos_in_a_real_browser(server: str, artifact: Path, tmp_path: Path) -> None:
    executable, sync_playwright = chromium_or_skip()
    images = _images(artifact)
    expected = [item["top"][0]["class"] for item in predict_artifact(artifact, [str(path) for path in images])]
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a photo")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server)
        page.set_input_files("#files", [str(path) for path in images])
        page.wait_for_function("document.querySelectorAll('.result .top1').length === 2", timeout=30_000)
        shown = page.eval_on_selector_all(".result .top1", "nodes => nodes.map(node => node.textContent)")
        assert shown[::-1] == expected  # the newest result is on top
        page.set_input_files("#files", [str(text_file)])
        page.wait_for_selector(".result .error", timeout=30_000)
        assert "not an image" in page.inner_text(".result .error")
        page.set_input_files("#files", [str(images[0])])  # the page and the server still work
        page.wait_for_function("document.querySelectorAll('.result .top1').length === 3", timeout=30_000)
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 1000


def test_a_host_that_is_not_this_machine_is_blamed_not_the_port(artifact: Path, server: str) -> None:
    """Issue 44 item 16: ``serve --host 999.1.1.1`` advised another port."""
    from mobiforge.serve import make_server, served_artifact

    served = served_artifact(artifact.parent)
    with pytest.raises(MobiforgeError, match=r"cannot listen on 999\.1\.1\.1:0 .*give --host an address"):
        make_server(served, host="999.1.1.1")
    taken = int(server.rsplit(":", 1)[1])
    with pytest.raises(MobiforgeError, match="choose another --port"):
        make_server(served, port=taken)


def test_a_class_named_like_a_placeholder_is_shown_as_text(artifact: Path) -> None:
    """Issue 44 item 16: a class named ``{{report}}`` was replaced by the report link (or vanished)."""
    import dataclasses

    from mobiforge.serve import _page, served_artifact

    served = served_artifact(artifact.parent)
    odd = dataclasses.replace(served, info=dataclasses.replace(served.info, classes=["{{report}}", "<b>", "c"]))
    page = _page(odd)
    assert "classes: {{report}}, &lt;b&gt;, c." in page and page.count("the ship report") == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(classes=["a", "b"]), "2 class names in model.onnx.json or labels.txt for 3 outputs"),
        (lambda r: r.update(classes=[f"c{i}" for i in range(20)]), "20 class names"),
        (lambda r: r["preprocess"].update(img_size=48), "says 48 px inputs but the file takes 1x3x32x32"),
        (lambda r: r["preprocess"].update(mean=[float("nan"), 0, 0]), "must be finite"),
    ],
    ids=["too few names", "too many names", "wrong size", "nan mean"],
)
def test_a_report_that_does_not_describe_its_file_is_one_line(artifact: Path, tmp_path: Path, edit, message) -> None:
    """Issue 44 items 5 and 6: too few names gave an IndexError, the wrong size a runtime traceback, 20 names for
    10 outputs and a NaN mean a silent wrong answer."""
    copy = tmp_path / "model.onnx"
    shutil.copy(artifact, copy)
    record = json.loads((artifact.parent / "model.onnx.json").read_text())
    edit(record)
    (tmp_path / "model.onnx.json").write_text(json.dumps(record))
    with pytest.raises(MobiforgeError, match=re.escape(message)) as error:
        predict_artifact(copy, [str(_images(artifact)[0])])
    assert "\n" not in str(error.value)


def _nested(record: dict) -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


def _labels_only(record: dict) -> bytes:
    record.pop("classes")
    return json.dumps(record).encode()


def _line_break(record: dict) -> bytes:
    record["classes"] = ["a\nb", *record["classes"][1:]]
    return json.dumps(record).encode()


@pytest.mark.parametrize(
    ("report", "labels", "message"),
    [
        (_nested, None, "model.onnx.json: not an export report with a preprocessing"),
        (_labels_only, b"\xff\xfe\x00ants\n", "labels.txt: unreadable (UnicodeDecodeError)"),
        (_line_break, None, "the class name 'a\\nb' holds a control character"),
    ],
    ids=["nested 100,000 deep", "non-UTF-8 labels", "a line break in a name"],
)
def test_a_fuzzed_report_or_labels_file_is_one_line(artifact: Path, tmp_path: Path, report, labels, message) -> None:
    """Issue 44, the fuzz of reports and labels: a JSON nested 100,000 deep raised RecursionError, a non-UTF-8
    labels.txt UnicodeDecodeError (both tracebacks); a line break in a report's class name was accepted."""
    copy = tmp_path / "model.onnx"
    shutil.copy(artifact, copy)
    (tmp_path / "model.onnx.json").write_bytes(report(json.loads((artifact.parent / "model.onnx.json").read_text())))
    if labels is not None:
        (tmp_path / "labels.txt").write_bytes(labels)
    with pytest.raises(MobiforgeError, match=re.escape(message)) as error:
        predict_artifact(copy, [str(_images(artifact)[0])])
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ issue 44, item 3


def test_only_requests_addressed_to_the_server_from_its_own_page_are_answered(server: str, artifact: Path) -> None:
    """A page elsewhere in the browser (another Origin) or a DNS-rebinding name (another Host) gets 403."""
    image = _images(artifact)[0].read_bytes()
    port = server.rsplit(":", 1)[1]
    assert _post(server, image, {"Origin": server})[0] == 200
    assert _post(server, image, {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"})[0] == 200
    status, answer = _post(server, image, {"Origin": "https://evil.example"})
    assert status == 403 and "must come from the page itself" in answer["error"]
    assert _post(server, image, {"Host": f"rebound.example:{port}"})[0] == 403
    request = urllib.request.Request(f"{server}/", headers={"Host": f"rebound.example:{port}"})
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(request, timeout=30)


def test_concurrent_uploads_are_decoded_two_at_a_time(server: str, artifact: Path, monkeypatch) -> None:
    """Six 64-MP PNGs posted at once took the server from 1.0 to 4.6 GB: decodes are now bounded."""
    import mobiforge.serve as serve_module

    prepare, active, most = serve_module.prepare_images, [0], [0]
    guard = threading.Lock()

    def counted(sources, preprocess):  # type: ignore[no-untyped-def]
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.3)
            return prepare(sources, preprocess)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(serve_module, "prepare_images", counted)
    image = _images(artifact)[0].read_bytes()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(_post(server, image)[0])) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 6 and most[0] == serve_module.MAX_DECODES


def test_an_idle_connection_is_closed_and_a_vanished_client_is_no_traceback(artifact: Path, capfd) -> None:
    import socket

    from mobiforge.serve import make_server, served_artifact

    httpd = make_server(served_artifact(artifact.parent))
    httpd.RequestHandlerClass.timeout = 0.5
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    try:
        with socket.create_connection((host, port), timeout=10) as idle:
            started = time.time()
            assert idle.recv(1) == b"" and time.time() - started < 5  # closed by the server, not by our timeout
        with socket.create_connection((host, port), timeout=10) as gone:  # says 1 MB is coming, sends 10 bytes
            gone.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1000000\r\n\r\n".encode())
            gone.sendall(b"0123456789")
        time.sleep(1.5)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "Traceback" not in capfd.readouterr().err
