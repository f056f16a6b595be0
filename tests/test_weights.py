"""Pretrained weights: lookup order, checksums, the EfficientNet-Lite0 port, torchvision files, fine-tuning."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from mobiforge import create_model
from mobiforge.checkpoint import load_checkpoint
from mobiforge.data import DataConfig, eval_transform, load_rgb
from mobiforge.engine import OptimConfig
from mobiforge.errors import MobiforgeError
from mobiforge.models import weights as W
from mobiforge.train import TrainConfig, train
from tests.helpers import make_split_folder


@pytest.fixture
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty mobiforge and torch hub caches, so that only what a test puts there is found."""
    monkeypatch.setenv("MOBIFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch hub's cache: $TORCH_HOME/hub/checkpoints
    return tmp_path


def test_efficientnet_lite0_loads_from_its_package() -> None:
    model = create_model("efficientnet_lite0", pretrained=True)
    assert model.pretrained == "efficientnet_lite0.imagenet"
    assert model.spec == {"name": "efficientnet_lite0", "kwargs": {"tf_padding": True, "num_classes": 1000}}
    assert model.preprocess.mean == (0.5, 0.5, 0.5) and model.preprocess.interpolation == "bicubic"
    packaged = W._package_file(W.get_weights("efficientnet_lite0"))
    assert packaged is not None and W._sha256(packaged) == W.EFFICIENTNET_LITE0.sha256


def test_new_classifier_keeps_the_backbone() -> None:
    imagenet = create_model("efficientnet_lite0", pretrained=True)
    two = create_model("efficientnet_lite0", pretrained=True, num_classes=2)
    assert two.get_classifier()[-1].out_features == 2 and two.spec["kwargs"]["num_classes"] == 2
    assert torch.equal(two.features[5].block[1][0].weight, imagenet.features[5].block[1][0].weight)


def test_tf_same_padding_is_asymmetric() -> None:
    # 224 px, 3x3 stride 2: TensorFlow pads 0 before and 1 after; PyTorch's symmetric padding would give 1 and 1.
    tf = create_model("efficientnet_lite0", tf_padding=True).eval()
    plain = create_model("efficientnet_lite0").eval()
    plain.load_state_dict(tf.state_dict())
    x = torch.randn(1, 3, 224, 224)
    stem_tf, stem_plain = tf.features[0](x), plain.features[0](x)
    assert stem_tf.shape == stem_plain.shape == (1, 32, 112, 112)
    conv = tf.features[0][0]
    manual = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), manual)


def test_zero_shot_imagenet_on_hymenoptera(shared_dir: Path) -> None:
    root = shared_dir / "datasets" / "hymenoptera" / "val"
    if not root.is_dir():
        pytest.skip("hymenoptera is not present")
    model = create_model("efficientnet_lite0", pretrained=True).eval()
    transform = eval_transform(model.preprocess)
    categories = W.get_weights("efficientnet_lite0").categories()
    for folder, index in (("ants", 310), ("bees", 309)):
        assert categories[index] == folder[:-1]
        files = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        with torch.no_grad():
            predictions = model(torch.stack([transform(load_rgb(str(f))) for f in files])).argmax(1)
        share = (predictions == index).float().mean().item()
        assert share >= 0.75, f"{folder}: {share:.2%}"


def _generated_torchvision_file(folder: Path, name: str, filename: str) -> tuple[Path, torch.nn.Module]:
    reference = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    torch.save(reference.state_dict(), path)
    return path, reference


def test_torchvision_file_in_hub_cache(isolated_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = W.get_weights("mobilenet_v3_small")
    assert entry.filename == "mobilenet_v3_small-047dcff4.pth" and entry.preprocess.crop_pct == 224 / 256
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    path, reference = _generated_torchvision_file(hub, "mobilenet_v3_small", entry.filename)
    # A generated file cannot carry the published checksum: it is refused as not being the published file ...
    with pytest.raises(MobiforgeError, match=r"does not match mobilenet_v3_small\.tv_imagenet1k_v1"):
        create_model("mobilenet_v3_small", pretrained=True)
    # ... and accepted once the entry describes it, which exercises lookup, key conversion and loading.
    patched = dataclasses.replace(entry, sha256=W._sha256(path))
    monkeypatch.setitem(W._WEIGHTS, ("mobilenet_v3_small", entry.tag), patched)
    model = create_model("mobilenet_v3_small", pretrained=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


def test_explicit_weights_file_and_shufflenet_conversion(tmp_path: Path) -> None:
    path, reference = _generated_torchvision_file(tmp_path, "shufflenet_v2_x0_5", "my-shufflenet.pth")
    model = create_model("shufflenet_v2_x0_5", weights=path).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)
    with pytest.raises(MobiforgeError, match="no such file"):
        create_model("shufflenet_v2_x0_5", weights=tmp_path / "missing.pth")


def test_offline_and_missing_says_where_and_how(isolated_caches: Path) -> None:
    with pytest.raises(MobiforgeError) as error:
        create_model("mobilenet_v2", pretrained=True)
    message = str(error.value)
    assert "mobilenet_v2-7ebf99e0.pth" in message and str(isolated_caches / "home" / "weights") in message
    assert "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth" in message and "--download" in message
    with pytest.raises(MobiforgeError, match="no pretrained weights for 'mobilenet_seed'"):
        create_model("mobilenet_seed", pretrained=True)
    with pytest.raises(MobiforgeError, match="no weights tagged 'nope'"):
        create_model("mobilenet_v2", pretrained="nope")


def test_download_only_when_allowed(isolated_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, _ = _generated_torchvision_file(isolated_caches / "server", "mobilenet_v3_small", "served.pth")
    fetched: list[str] = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:  # no network in tests
        fetched.append(url)
        shutil.copyfile(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    entry = W.get_weights("mobilenet_v3_small")
    with pytest.raises(MobiforgeError, match="not found"):
        W.find_weights_file(entry)
    assert fetched == []  # never without permission
    with pytest.raises(MobiforgeError, match="does not match"):  # fetched, but not the published file
        W.find_weights_file(entry, download=True)
    assert fetched == [entry.url]


def test_fine_tuning_freezes_then_unfreezes(tmp_path: Path) -> None:
    data = make_split_folder(tmp_path / "data", classes=3, train=16, val=4)
    pretrained = create_model("efficientnet_lite0", pretrained=True)
    config = TrainConfig(
        model="efficientnet_lite0",
        pretrained=True,
        data=DataConfig(data=str(data), img_size=32, batch_size=8, workers=0),
        optim=OptimConfig(lr=0.01),
        epochs=1,
        freeze_epochs=1,
        backbone_lr_scale=0.1,
        runs_dir=str(tmp_path / "runs"),
        name="frozen",
        tensorboard=False,
    )
    run = train(config).run_dir
    checkpoint = load_checkpoint(run / "last.pt")
    state = checkpoint["state_dict"]
    for key, value in pretrained.state_dict().items():
        if not key.startswith("classifier"):
            assert torch.equal(state[key], value), key  # weights and BN statistics untouched while frozen
    assert checkpoint["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # the weights' normalisation, not ImageNet's
    assert checkpoint["spec"]["kwargs"]["tf_padding"] is True
    lrs = sorted({group["lr"] for group in checkpoint["optimizer"]["param_groups"]})
    assert lrs[-1] == pytest.approx(10 * lrs[0])  # backbone at a tenth of the head's rate
    resumed = train(TrainConfig(resume=str(run / "last.pt"), epochs=2))  # now unfrozen
    after = load_checkpoint(resumed.run_dir / "last.pt")["state_dict"]
    assert not torch.equal(after["features.0.0.weight"], state["features.0.0.weight"])


@pytest.mark.slow
def test_fine_tuned_on_hymenoptera_predicts_held_out_photos(shared_dir: Path, tmp_path: Path) -> None:
    from mobiforge.inference import predict

    root = shared_dir / "datasets" / "hymenoptera"
    if not root.is_dir():
        pytest.skip("hymenoptera is not present")
    config = TrainConfig(
        model="efficientnet_lite0",
        pretrained=True,
        data=DataConfig(data=str(root), batch_size=16, workers=2, min_scale=0.25),
        optim=OptimConfig(lr=0.01, scheduler="cosine"),
        epochs=1,
        freeze_epochs=1,
        runs_dir=str(tmp_path),
        name="ants-bees",
        tensorboard=False,
    )
    run = train(config).run_dir
    photos = {name: sorted((root / "val" / name).glob("*.jpg"))[:4] for name in ("ants", "bees")}  # never trained on
    results = predict(run / "best.pt", [str(p) for files in photos.values() for p in files], top_k=1)
    predicted = [item["top"][0]["class"] for item in results]
    assert predicted == ["ants"] * 4 + ["bees"] * 4


def test_a_failed_download_names_the_url_and_the_file(isolated_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 44 item 15: offline, --download said only `error:: <urlopen error ...>`."""
    import urllib.error

    def offline(url: str, dst: str, progress: bool = True) -> None:
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    entry = W.get_weights("mobilenet_v3_small")
    with pytest.raises(MobiforgeError) as error:
        W.find_weights_file(entry, download=True)
    message = str(error.value)
    assert entry.url in message and entry.filename in message and "name resolution" in message
    assert "--weights FILE" in message and "\n" not in message
