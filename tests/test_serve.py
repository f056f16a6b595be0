"""`mobiforge serve` (issue 24, item 6): the page's endpoint answers as `predict` does on the same artifact, a file
that is not an image gets a message and the server keeps serving, and the page works in a real browser (Debian's
chromium driven by Playwright; skipped with the reason where either is absent)."""

from __future__ import annotations

import json
import re
import shutil
import threading
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


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
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
