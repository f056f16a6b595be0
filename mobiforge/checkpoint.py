"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and use the model without pickled modules: ``spec`` (the model's
rebuild dict), ``state_dict``, ``classes``, ``preprocess``, plus training state (``epoch``, ``optimizer``,
``scheduler``, ``ema``, ``rng``), ``metrics``, ``config`` and ``mobiforge_version``. The seed article's keys
(``epoch``, ``state_dict``, ``optimizer``) are among them, so code written for the article still loads it.

In code a checkpoint is a ``Checkpoint``: the typed view of that dict, with ``load``, ``save``, ``model()`` and
``require_classes``. The dict functions below stay the on-disk contract (and the article's way in).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiforge import __version__
from mobiforge.data import unprintable_class
from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
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
    """Write ``checkpoint`` to ``path`` atomically: a crash or a full disk never leaves a truncated file behind
    (``files.write_atomic``)."""
    return write_atomic(path, lambda stream: torch.save(checkpoint, stream))


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
    if isinstance(checkpoint, dict):
        return Checkpoint.from_dict(checkpoint).model()
    return Checkpoint.load(checkpoint).model()


# Keys with a field of their own in ``Checkpoint``; everything else rides along in ``extra``, stored as it came.
_FIELDS = ("spec", "state_dict", "classes", "preprocess", "epoch", "metrics", "config")


@dataclass
class Checkpoint:
    """A checkpoint in code. ``extra`` holds the training state (optimizer, scheduler, EMA, RNG...) and anything
    else a writer stored, untouched, so ``Checkpoint.load(p).save(q)`` keeps every key."""

    spec: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    classes: list[str] | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "checkpoint"  # where it came from, for messages (the path, when loaded)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
        return cls.from_dict(load_checkpoint(path, map_location), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> Checkpoint:
        """The typed view of a checkpoint dict; a field of the wrong type is a one-line error naming ``source``."""
        classes, preprocess, config = data.get("classes"), data.get("preprocess"), data.get("config")
        if classes is not None and not (
            isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)
        ):
            raise MobiforgeError(f"{source}: 'classes' must be a list of class names, got {type(classes).__name__}")
        if classes is not None and (bad := unprintable_class(list(classes))) is not None:
            raise MobiforgeError(f"{source}: the class name {bad!r} holds a control character; rename it and retrain")
        if config is not None and not isinstance(config, dict):
            raise MobiforgeError(f"{source}: 'config' must be a dict, got {type(config).__name__}")
        if not isinstance(data["state_dict"], dict):
            raise MobiforgeError(f"{source}: 'state_dict' must be a dict of tensors")
        try:
            epoch = int(data.get("epoch") or 0)
            if "preprocess" in data and not isinstance(preprocess, dict):  # absent: the article's checkpoints
                raise TypeError(f"it is {type(preprocess).__name__}, not a dict of img_size, crop_pct, mean, std")
            read_preprocess = Preprocess.from_dict(preprocess) if preprocess is not None else Preprocess()
        except (KeyError, TypeError, ValueError) as error:
            raise MobiforgeError(
                f"{source}: malformed 'preprocess' or 'epoch' ({type(error).__name__}: {error})"
            ) from None
        return cls(
            spec=data["spec"],
            state_dict=data["state_dict"],
            classes=list(classes) if classes is not None else None,
            preprocess=read_preprocess,
            epoch=epoch,
            metrics=dict(data.get("metrics") or {}),
            config=config,
            extra={key: value for key, value in data.items() if key not in _FIELDS},
            source=source,
        )

    @classmethod
    def of(
        cls, model: nn.Module, classes: list[str] | None = None, preprocess: Preprocess | None = None, **extra: Any
    ) -> Checkpoint:
        """The checkpoint of a model built by ``create_model`` (``extra``: more keys to store)."""
        return cls.from_dict(model_checkpoint(model, classes, preprocess, **extra))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "spec": self.spec,
            "state_dict": self.state_dict,
            "classes": self.classes,
            "preprocess": self.preprocess.to_dict(),
            "epoch": self.epoch,
            "metrics": self.metrics,
            "config": self.config,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_checkpoint(self.to_dict(), path)

    def model(self) -> nn.Module:
        """The model rebuilt from its spec, with these weights and this preprocessing, in eval mode."""
        model = build_from_spec(self.spec, self.source)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError:
            raise MobiforgeError(f"{self.source}: {_weights_mismatch(model, self.state_dict, self.spec)}") from None
        outputs = getattr(model, "num_classes", None)
        if self.classes is not None and outputs is not None and len(self.classes) != outputs:
            raise MobiforgeError(
                f"{self.source}: the model has {outputs} outputs but {len(self.classes)} class names; "
                "the file was edited or damaged"
            )
        model.preprocess = self.preprocess
        return model.eval()

    def named_classes(self) -> list[str]:
        """The class names, or a one-line error: a checkpoint without them cannot label anything."""
        if not self.classes:
            raise MobiforgeError(f"{self.source} has no class names; use a checkpoint written by mobiforge train")
        return self.classes

    def require_classes(self, classes: list[str], role: str, advice: str) -> None:
        """Fail with one line unless this checkpoint predicts exactly ``classes``, in that order."""
        own = self.classes or []
        if own != classes:
            raise MobiforgeError(
                f"{role} {self.source} predicts {len(own)} classes ({_preview(own)}), the data has {len(classes)} "
                f"({_preview(classes)}); {advice}"
            )


def _preview(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else "none"


def _weights_mismatch(model: nn.Module, state_dict: dict[str, Any], spec: dict[str, Any]) -> str:
    """One line on why ``state_dict`` does not fit ``model``: counts, and the first key of each kind."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    shaped = [
        key for key in own
        if key in state_dict and getattr(state_dict[key], "shape", None) != own[key].shape
    ]  # fmt: skip
    parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]  # fmt: skip
    if shaped:
        key = shaped[0]
        theirs = tuple(getattr(state_dict[key], "shape", ()))
        parts.append(f"{len(shaped)} of another shape (e.g. {key}: {theirs} stored, {tuple(own[key].shape)} built)")
    found = "; ".join(part for part in parts if part) or "tensors of another type"
    return f"its weights do not fit its spec {spec.get('name')!r}: {found}; the file was edited or mixed up"
