"""The web runtime: ``export --format web`` writes a static folder whose page runs the model in the browser, and the
gate runs that page in headless Chromium (skipped, with the reason, where Chromium, Playwright or the npm runtime
files are absent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mobiforge.backend_api import backend_for, is_artifact
from mobiforge.backends.browser import PageSession
from mobiforge.backends.web import MODEL_FILE, PAGE_CONFIG, node_modules
from mobiforge.errors import MobiforgeError
from mobiforge.export import ArtifactReport, ExportConfig, export_checkpoint
from mobiforge.runtimes import artifact_bytes, predict_artifact
from mobiforge.train import train
from tests.helpers import make_split_folder, small_train_config

pytest.importorskip("onnxruntime")
HOSTILE = "<img src=x onerror=window.pwned=1>"  # a class folder name: shown as text, never run


def _requirements_or_skip() -> None:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("Debian's chromium is not installed (make install installs it where apt-get is available)")
    pytest.importorskip("playwright", reason="playwright is not installed (pip install 'mobiforge[dev]')")
    if not (node_modules() / "@litertjs" / "core" / "package.json").is_file():
        pytest.skip(f"LiteRT.js is not installed in {node_modules()} (make install runs npm ci in web/)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ArtifactReport, Path]:
    """A small model trained on generated data (one class named with markup), exported as a web folder, int8."""
    _requirements_or_skip()
    root = tmp_path_factory.mktemp("web")
    data = make_split_folder(root / "data", classes=3, train=24, val=8)
    for split in ("train", "val"):
        (data / split / "class2").rename(data / split / HOSTILE)
    config = small_train_config(data, root / "runs", img_size=24, batch_size=16, epochs=4)
    checkpoint = train(config).run_dir / "last.pt"
    folder = root / "site" / "web"
    report = export_checkpoint(
        ExportConfig(str(checkpoint), "web", "ptq", out=str(folder), val_images=12, calibration_images=16,
                     workers=0, latency_seconds=0.05)
    )  # fmt: skip
    return folder, report, data


def test_the_web_folder_holds_the_page_the_model_and_the_runtime(exported: tuple[Path, ArtifactReport, Path]) -> None:
    folder, report, _ = exported
    names = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert {"index.html", "app.js", "style.css", MODEL_FILE, "labels.txt", PAGE_CONFIG} <= names
    runtime = {"litert/core.js", "litert/wasm-utils.js", "litert/NOTICE.txt", "litert/wasm/litert_wasm_internal.wasm"}
    assert runtime <= names and "litert/wasm/litert_wasm_compat_internal.wasm" in names  # without relaxed SIMD
    assert "@litertjs" not in (folder / "litert" / "core.js").read_text()  # no bare import left: no bundler needed
    config = json.loads((folder / PAGE_CONFIG).read_text())
    assert config["preprocess"]["img_size"] == 24 and config["model"] == MODEL_FILE
    assert HOSTILE in (folder / "labels.txt").read_text().splitlines()
    assert backend_for(folder).name == "web" and is_artifact(folder)
    assert artifact_bytes(folder) == (folder / MODEL_FILE).stat().st_size  # the budget is the model's
    assert report.format == "web" and report.precision == "int8-ptq"


def test_the_gate_runs_the_page_in_chromium(exported: tuple[Path, ArtifactReport, Path]) -> None:
    _, report, _ = exported
    assert report.sdk is not None and report.sdk.startswith("the page in Chromium"), report.sdk
    assert "LiteRT.js" in report.sdk
    assert report.sdk_clear_disagreements == 0 and report.passed
    assert report.sdk_top1 == report.top1


def test_the_page_classifies_as_predict_does_on_the_onnx_file(exported: tuple[Path, ArtifactReport, Path]) -> None:
    folder, _, data = exported
    images = sorted((data / "val" / "class0").iterdir())[:1] + sorted((data / "val" / "class1").iterdir())[:1]
    expected = [item["top"][0]["class"] for item in predict_artifact(folder, [str(path) for path in images])]
    with PageSession(folder) as session:
        page = session.page
        shown = []
        for image in images:  # as a user does: the file picker
            page.set_input_files("#file", str(image))
            page.wait_for_function(f"() => document.getElementById('status').textContent.startsWith('{image.name}')")
            shown.append(page.text_content("#top li span"))
        assert shown == expected
        assert session.outside == [] and session.errors == []


def test_bad_files_get_a_message_and_the_page_keeps_working(
    exported: tuple[Path, ArtifactReport, Path], tmp_path: Path
) -> None:
    from PIL import Image

    folder, _, data = exported
    huge = tmp_path / "huge.png"
    Image.new("RGB", (12_000, 9_000)).save(huge)  # 108 megapixels, a small file
    with PageSession(folder) as session:
        with pytest.raises(MobiforgeError, match="not an image the browser can read"):
            session.classify_bytes(b"just some text")
        with pytest.raises(MobiforgeError, match="12000x9000 pixels"):
            session.classify_bytes(huge.read_bytes())
        image = next((data / "val" / "class0").iterdir())
        assert session.classify_bytes(image.read_bytes())["top"]  # still working
        session.page.set_input_files("#file", str(huge))
        session.page.wait_for_function("() => document.getElementById('status').classList.contains('error')")
        assert "megapixels" in session.status()


def test_the_camera_classifies_a_frame_on_a_tap_and_continuously(
    exported: tuple[Path, ArtifactReport, Path], tmp_path: Path
) -> None:
    """Chromium's fake camera plays a val photo (as the ship report's screenshot does): a tap on the picture
    classifies a frame, and "continuously" keeps classifying frame after frame."""
    from mobiforge.backends.browser import camera_screenshot

    folder, _, data = exported
    image = next((data / "val" / "class0").iterdir())
    assert camera_screenshot(folder, image, tmp_path / "web.png").stat().st_size > 0
    session = PageSession(folder)
    session.browser_args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with session:
        page = session.page
        page.click("#camera")
        page.wait_for_function("() => document.getElementById('video').videoWidth > 0")
        page.click("#video")  # a tap
        page.wait_for_function("() => document.querySelectorAll('#top li').length > 0")
        page.evaluate("() => { window.shown = 0; new MutationObserver(() => window.shown++)"
                      ".observe(document.getElementById('latency'), {childList: true}); }")  # fmt: skip
        page.check("#continuous")
        page.wait_for_function("() => window.shown >= 3")  # frame after frame, no tap
        assert session.errors == []


def test_labels_with_markup_are_shown_as_text(exported: tuple[Path, ArtifactReport, Path]) -> None:
    folder, _, data = exported
    image = next((data / "val" / HOSTILE).iterdir())
    with PageSession(folder) as session:
        session.page.set_input_files("#file", str(image))
        session.page.wait_for_function("() => document.querySelectorAll('#top li').length > 0")
        labels = session.page.eval_on_selector_all("#top li span:first-child", "nodes => nodes.map(n => n.textContent)")
        assert HOSTILE in labels
        assert session.page.evaluate("window.pwned === undefined && document.querySelectorAll('#top img').length") == 0


def test_the_page_loads_nothing_from_outside_its_folder(exported: tuple[Path, ArtifactReport, Path]) -> None:
    folder, _, _ = exported
    with PageSession(folder) as session:
        policy = session.page.get_attribute("meta[http-equiv='Content-Security-Policy']", "content")
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy
        # the policy refuses a request to anywhere else before it is sent (the route never sees it)
        outcome = session.page.evaluate("fetch('http://127.0.0.2:9/x').then(() => 'sent', error => 'refused')")
        assert outcome == "refused"
        assert any("Content Security Policy" in error for error in session.errors)
        assert session.outside == []


def test_a_browser_without_relaxed_simd_falls_back_to_the_build_without_it(
    exported: tuple[Path, ArtifactReport, Path],
) -> None:
    folder, _, data = exported
    image = next((data / "val" / "class0").iterdir())
    with PageSession(folder) as simd:
        expected = simd.classify_bytes(image.read_bytes())["top"][0]["label"]
    session = PageSession(folder)
    # an engine without relaxed SIMD, as LiteRT.js probes it: its tiny probe modules fail to instantiate
    session.init_script = """
      const instantiate = WebAssembly.instantiate;
      WebAssembly.instantiate = (source, imports) => source.byteLength < 1024
        ? Promise.reject(new WebAssembly.CompileError("no relaxed SIMD here")) : instantiate(source, imports);"""
    with session:
        assert "without relaxed SIMD" in session.page.text_content("#runtime")
        assert session.classify_bytes(image.read_bytes())["top"][0]["label"] == expected
        assert "/litert/wasm/litert_wasm_compat_internal.wasm" in session.requested  # the build, not only the label
        assert "/litert/wasm/litert_wasm_internal.wasm" not in session.requested


def test_an_export_folder_needs_no_suffix_but_not_another_runtimes(
    exported: tuple[Path, ArtifactReport, Path], tmp_path: Path
) -> None:
    config = ExportConfig(str(tmp_path / "missing.pt"), "web", "ptq", out=str(tmp_path / "m.onnx"))
    with pytest.raises(MobiforgeError, match=r"suffix \.web"):
        export_checkpoint(config)
    folder, _, _ = exported  # a web folder already there is written over: past the name check, to the checkpoint
    with pytest.raises(MobiforgeError, match=r"missing\.pt"):
        export_checkpoint(ExportConfig(str(tmp_path / "missing.pt"), "web", "ptq", out=str(folder)))


def test_lan_binds_a_private_address_and_refuses_a_public_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import mobiforge.serve as serve
    from mobiforge.config import ServeConfig

    monkeypatch.setattr(serve, "lan_address", lambda: "192.168.1.23")
    assert serve.lan_host(ServeConfig("run", lan=True)) == "192.168.1.23"
    monkeypatch.setattr(serve, "lan_address", lambda: "8.8.8.8")
    with pytest.raises(MobiforgeError, match=r"--host 8\.8\.8\.8"):
        serve.lan_host(ServeConfig("run", lan=True))
    assert serve.lan_host(ServeConfig("run", lan=True, host="8.8.8.8")) == "8.8.8.8"  # named: the user's choice


def test_lan_without_a_web_folder_says_how_to_get_one(tmp_path: Path) -> None:
    from mobiforge.config import ServeConfig
    from mobiforge.serve import serve

    with pytest.raises(MobiforgeError, match="no web folder"):
        serve(ServeConfig(str(tmp_path), lan=True))


def test_serve_lan_shows_the_qr_code_of_its_address_on_the_page(
    exported: tuple[Path, ArtifactReport, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from playwright.sync_api import sync_playwright

    import mobiforge.serve as serve
    from mobiforge.backends.browser import chromium_path
    from mobiforge.config import ServeConfig

    folder, _, data = exported
    monkeypatch.setattr(serve, "lan_address", lambda: "127.0.0.1")  # the test's "LAN"
    server, url, terminal = serve.web_server(ServeConfig(str(folder.parent), lan=True, port=0), folder)
    assert "█" in terminal or "▀" in terminal  # a QR code drawn in the terminal
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("() => window.mobiforge && document.getElementById('qr-figure').hidden === false")
            assert page.evaluate("self.crossOriginIsolated")  # served with the headers that give the page threads
            page.set_input_files("#file", str(next((data / "val" / "class0").iterdir())))
            page.wait_for_function("() => document.querySelectorAll('#top li').length > 0")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_ship_with_the_web_as_its_runtime_ships_the_folder(tmp_path: Path) -> None:
    """``ship --runtime web``: every candidate is measured and gated as a web folder, and the shipped artifact is the
    folder itself (``RUN/model.web/``), which ``serve`` serves as the static page."""
    _requirements_or_skip()
    from mobiforge.serve import web_folder
    from mobiforge.ship import ship
    from tests.test_ship import tiny_config

    data = make_split_folder(tmp_path / "data", classes=3, train=12, val=4)
    result = ship(tiny_config(data, tmp_path / "run", runtime="web", time_budget_s=600))
    assert result.artifact == tmp_path / "run" / "model.web" and (result.artifact / "index.html").is_file()
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["accuracy"]["sdk"].startswith("the page in Chromium") and "web" not in card  # no second folder
    assert web_folder(tmp_path / "run") == result.artifact
    assert predict_artifact(result.artifact, [str(next((data / "val" / "class0").iterdir()))])[0]["top"]
