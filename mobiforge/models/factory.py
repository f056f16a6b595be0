"""``create_model`` and ``build_from_spec``: the public way to build a model, with or without pretrained weights.

Every model built here carries ``model.spec``, the plain dict ``{"name": ..., "kwargs": ...}`` that rebuilds the
same architecture (see ``build_from_spec``). This module sits above ``registry`` and ``weights`` and nothing in the
models package imports it, so the package has no import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mobiforge.models.registry import build, check_name, plain
from mobiforge.models.weights import find_weights_file, get_weights, load_pretrained


def create_model(
    name: str,
    pretrained: bool | str = False,
    weights: str | Path | None = None,
    download: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally with pretrained weights.

    Args:
        name: a name from ``list_models()``.
        pretrained: ``True`` for the model's default weights, or a weights tag (``mobiforge models --weights``).
        weights: an explicit weights file in the entry's format (implies ``pretrained``).
        download: allow fetching the weights from the publisher when no local copy exists (never implicit).
        **kwargs: builder arguments (``num_classes``, ``width_mult``, ``small_input``, explicit channel lists...).
            ``None`` values are dropped so that callers can pass optional flags through unchanged.

    Returns:
        The model, with ``model.spec == {"name": name, "kwargs": <the non-None kwargs>}``: the architecture only,
        so rebuilding from a spec never loads weights. With weights, ``model.pretrained`` names the entry and the
        classifier is replaced when ``num_classes`` differs from the weights'.
    """
    if pretrained or weights is not None:
        check_name(name)
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        return _create_pretrained(name, pretrained or True, weights, download, kwargs)
    return build(name, **kwargs)


def _create_pretrained(
    name: str, tag: bool | str, file: str | Path | None, download: bool, kwargs: dict[str, Any]
) -> nn.Module:
    entry = get_weights(name, tag)
    num_classes = kwargs.pop("num_classes", entry.num_classes)
    path = find_weights_file(entry, file, download)  # before building: a missing file fails fast
    model = build(name, **{**kwargs, **entry.model_kwargs, "num_classes": entry.num_classes})
    load_pretrained(model, entry, path, num_classes)
    model.spec = {"name": name, "kwargs": plain({**kwargs, **entry.model_kwargs, "num_classes": num_classes})}
    model.pretrained = entry.name
    return model


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its ``spec`` dict (as stored in checkpoints): no pickled modules involved."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a model spec is a dict with 'name' and 'kwargs', got {spec!r}")
    return build(spec["name"], **dict(spec.get("kwargs", {})))
