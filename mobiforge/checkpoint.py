"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and use the model without pickled modules: ``spec`` (the model's
rebuild dict), ``state_dict``, ``classes``, ``preprocess``, plus training state (``epoch``, ``optimizer``,
``scheduler``, ``ema``, ``rng``), ``metrics``, ``config`` and ``mobiforge_version``. The seed article's keys
(``epoch``, ``state_dict``, ``optimizer``) are among them, so code written for the article still loads it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiforge import __version__
from mobiforge.errors import MobiforgeError
from mobiforge.models.base import Preprocess
from mobiforge.models.factory import build_from_spec

REQUIRED_KEYS = ("spec", "state_dict")


def model_checkpoint(
    model: nn.Module, classes: list[str] | None = None, preprocess: Preprocess | None = None, **extra: Any
) -> dict[str, Any]:
    """The checkpoint dict of a model built by ``create_model`` (anything in ``extra`` is stored alongside)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise MobiforgeError("this model has no .spec; build it with mobiforge.create_model so it can be rebuilt")
    preprocess = preprocess or getattr(model, "preprocess", None) or Preprocess()
    return {
        "spec": spec,
        "state_dict": model.state_dict(),
        "classes": list(classes) if classes is not None else None,
        "preprocess": preprocess.to_dict(),
        "mobiforge_version": __version__,
        **extra,
    }


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a crash mid-write never leaves a truncated file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs on load); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MobiforgeError(f"checkpoint {path} does not exist; pass the path of a .pt file written by mobiforge")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types here (pickle, zip, runtime)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MobiforgeError(f"cannot read checkpoint {path}: {first_line}") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise MobiforgeError(
            f"{path} is not a mobiforge checkpoint (it needs the keys {', '.join(REQUIRED_KEYS)}); "
            "a bare state_dict can be loaded with model.load_state_dict()"
        )
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any] | str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model of a checkpoint (dict or path) from its spec and load its weights, in eval mode."""
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    model = build_from_spec(checkpoint["spec"])
    model.load_state_dict(checkpoint["state_dict"])
    if checkpoint.get("preprocess"):
        model.preprocess = Preprocess.from_dict(checkpoint["preprocess"])
    return model.eval()
