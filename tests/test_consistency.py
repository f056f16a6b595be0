"""One image, one answer (issue 42): every way of running an exported file gives the same top-1 for the same image.

For every row of the runtime table that runs here, and for the fake runtime of ``test_backends``, one small model is
exported as ship exports it (int8 where the runtime takes it, uint8 pixels for LiteRT), and the same val images go
through the export gate, ``eval``, ``predict`` (on the folder), the ``serve`` endpoint, and, for ``.tflite``,
MediaPipe's ``ImageClassifier``. The ExecuTorch page in Chromium is the regression test for the page that scrambled
ExecuTorch inputs (a channels-last tensor handed to a runtime that reads NCHW). A runtime enters the matrix by being
in the table.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mobiforge.backend_api import BACKENDS, Interface, register_backend, unregister_backend
from mobiforge.errors import MobiforgeError
from mobiforge.export import NEAR_TIE, ExportConfig, export_checkpoint
from mobiforge.inference import prepare_images
from mobiforge.models.base import Preprocess
from mobiforge.runtimes import artifact_info, evaluate_artifact, predict_artifact
from mobiforge.train import train
from tests.helpers import make_split_folder, small_train_config
from tests.test_backends import FAKE

PROBABILITY_TOLERANCE = 1e-5  # the same runtime on the same input: only float summation order may differ
RUNTIMES = [name for name, backend in BACKENDS.items() if backend.runs_here] + [FAKE.name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("consistency")
    data = make_split_folder(root / "data", classes=3, train=16, val=5)
    # a model that has learnt the classes (100% val here): confident answers, so that a scrambled input shows
    checkpoint = train(small_train_config(data, root / "runs", epochs=8, img_size=24)).run_dir / "best.pt"
    return checkpoint, data


@pytest.fixture(scope="module")
def fake_runtime() -> Iterator[None]:
    register_backend(FAKE)
    try:
        yield
    finally:
        unregister_backend(FAKE.name)


def _export(runtime: str, checkpoint: Path, out: Path) -> tuple[Path, dict]:
    backend = BACKENDS[runtime]
    int8 = "ptq" if runtime in ("executorch", "tflite") else None  # the shipped precision; the others as fp32
    config = ExportConfig(
        str(checkpoint), runtime, int8=int8, out=str(out), workers=0, latency_seconds=0.02, threads=(1,),
        calibration_images=16, pixel_input=backend.pixel_input,
    )  # fmt: skip
    export_checkpoint(config)
    return out, json.loads(Path(f"{out}.json").read_text())


def _label_of(image: str, classes: list[str]) -> int:
    return classes.index(Path(image).parent.name)


def _post(url: str, image: Path) -> dict:
    request = urllib.request.Request(f"{url}/predict", data=image.read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_way_of_running_a_file_gives_the_same_answer(
    runtime: str, trained: tuple[Path, Path], fake_runtime: None, tmp_path: Path, usual_umask: None
) -> None:
    from mobiforge.serve import make_server, served_artifact

    checkpoint, data = trained
    path, sidecar = _export(runtime, checkpoint, tmp_path / f"model{BACKENDS[runtime].suffix}")
    classes = sidecar["classes"]
    for written in (Path(f"{path}.json"), path.parent / "labels.txt"):  # shared beside the file: no local path
        assert str(tmp_path) not in written.read_text() and str(data) not in written.read_text()
        assert written.stat().st_mode & 0o777 == 0o644  # readable by others, as the umask (022) says

    # eval: the sidecar's data and split, no --data: the gate's confusion, to the image
    evaluated = evaluate_artifact(path)
    assert evaluated.result.images == sidecar["images"]
    assert evaluated.result.confusion.tolist() == sidecar["confusion"]
    assert evaluated.result.top1 == pytest.approx(sidecar["top1"], abs=1e-4)  # float32 there

    # predict on the val folder: its top-1s make the gate's confusion too
    predicted = predict_artifact(path, [str(data / "val")])
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for item in predicted:
        confusion[_label_of(item["image"], classes), classes.index(item["top"][0]["class"])] += 1
    assert confusion.tolist() == sidecar["confusion"]

    # the page's endpoint: the same classes in the same order, the same probabilities
    httpd = make_server(served_artifact(path))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = "http://{}:{}".format(*httpd.server_address[:2])
        for item in predicted:
            answer = _post(url, Path(item["image"]))
            assert [entry["class"] for entry in answer["top"]] == [entry["class"] for entry in item["top"]]
            for got, expected in zip(answer["top"], item["top"], strict=True):
                assert got["probability"] == pytest.approx(expected["probability"], abs=PROBABILITY_TOLERANCE)
    finally:
        httpd.shutdown()
        httpd.server_close()

    # the app-side SDK that loads the file on phones, on the same pixels: the same top-1 outside near ties
    if BACKENDS[runtime].sdk_package:
        pre = artifact_info(path).preprocess
        batch = prepare_images([item["image"] for item in predicted], pre).numpy()
        pixels = Interface(pre.mean, pre.std).to_pixels(batch).transpose(0, 2, 3, 1)
        in_sdk = BACKENDS[runtime].impl().sdk_top1(path, ((image, None) for image in pixels))
        assert in_sdk is not None
        _, sdk_top1 = in_sdk
        for item, index in zip(predicted, sdk_top1.tolist(), strict=True):
            first, second = item["top"][0]["probability"], item["top"][1]["probability"]
            assert classes[index] == item["top"][0]["class"] or first - second < NEAR_TIE
        assert sidecar["sdk_app_top1"] is not None  # and as an app runs it, on the files themselves (measured)


def test_the_page_classifies_with_an_executorch_file_as_predict_does_in_a_real_browser(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """The regression test of the page that showed a val "3" as 7 (41%) from ship's default format."""
    from mobiforge.serve import make_server, served_artifact
    from tests.test_serve import chromium_or_skip

    executable, sync_playwright = chromium_or_skip()
    checkpoint, data = trained
    path, _ = _export("executorch", checkpoint, tmp_path / "model.pte")
    images = sorted(str(image) for image in (data / "val").rglob("*.png"))
    expected = [item["top"][0]["class"] for item in predict_artifact(path, images)]
    httpd = make_server(served_artifact(tmp_path))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = chromium.new_page()
            page.goto("http://{}:{}".format(*httpd.server_address[:2]))
            page.set_input_files("#files", images)
            page.wait_for_function(f"document.querySelectorAll('.result .top1').length === {len(images)}",
                                   timeout=60_000)  # fmt: skip
            shown = page.eval_on_selector_all(".result .top1", "nodes => nodes.map(node => node.textContent)")
            chromium.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert shown[::-1] == expected  # the newest result is on top


def _card_beside(folder: Path, preprocess: Preprocess, classes: list[str], file: str = "model.onnx") -> Path:
    from mobiforge.card import CARD_FILE, CardArtifact, CardInput, ModelCard

    given = CardInput(
        crop=preprocess.img_size, resize=preprocess.resize_size, crop_pct=preprocess.crop_pct,
        interpolation=preprocess.interpolation, mean=list(preprocess.mean), std=list(preprocess.std),
    )  # fmt: skip
    card = ModelCard(artifact=CardArtifact(file=file), classes=classes, preprocessing=given)
    (folder / CARD_FILE).write_text(json.dumps(card.to_dict()))
    artifact = folder / "model.onnx"
    artifact.write_bytes(b"")
    return artifact


def test_a_shipped_file_is_classified_as_its_model_card_says(tmp_path: Path) -> None:
    """Issue 45: predict, eval and serve read ship's typed card beside its file, to the crop, before any report."""
    preprocess = Preprocess(40, crop_pct=0.9, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bicubic")
    artifact = _card_beside(tmp_path, preprocess, ["cat", "dog"])
    (tmp_path / "model.onnx.json").write_text(json.dumps({"classes": ["x", "y"], "preprocess": Preprocess().to_dict()}))
    info = artifact_info(artifact)
    assert info.classes == ["cat", "dog"] and info.preprocess == preprocess
    assert info.preprocess.resize_size == 44  # floor(40 / 0.9): the card's crop_pct, not crop / resize, rebuilt it

    other = tmp_path / "other"
    other.mkdir()
    artifact = _card_beside(other, preprocess, ["cat", "dog"], file="model.tflite")  # the card is another file's
    (other / "model.onnx.json").write_text(json.dumps({"classes": ["x", "y"], "preprocess": Preprocess().to_dict()}))
    assert artifact_info(artifact).classes == ["x", "y"]

    (tmp_path / "model_card.json").write_text("[1, 2]")
    with pytest.raises(MobiforgeError, match=r"model_card\.json: not a model card \(not a JSON object\); ship"):
        artifact_info(tmp_path / "model.onnx")
