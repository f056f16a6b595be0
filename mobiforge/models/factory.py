"""``create_model`` and ``build_from_spec``: the public way to build a model, with or without pretrained weights.

Every model built here carries ``model.spec``, the plain dict ``{"name": ..., "kwargs": ...}`` that rebuilds the
same architecture (see ``build_from_spec``). This module sits above ``registry`` and ``weights`` and nothing in the
models package imports it, so the package has no import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiforge.errors import MobiforgeError
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


# A spec read from a file is data: it may name only a registered builder and that builder's own arguments
# (``build`` refuses others, ``pretrained`` and ``download`` among them), and it may not ask for more parameters
# than any mobile model has, so that an edited width or class count fails before allocating gigabytes.
MAX_SPEC_PARAMETERS = 100_000_000


def build_from_spec(spec: dict[str, Any], source: str = "the model spec") -> nn.Module:
    """Rebuild a model from its ``spec`` dict (as stored in checkpoints): no pickled modules involved, no weights
    loaded, nothing fetched. ``source`` names where the spec came from in the one-line errors."""
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("kwargs", {}), dict)):
        raise MobiforgeError(f"{source}: a model spec is {{'name': str, 'kwargs': dict}}, got {_short(spec)}")
    kwargs = dict(spec.get("kwargs", {}))
    if not all(isinstance(key, str) for key in kwargs):
        raise MobiforgeError(f"{source}: the spec's kwargs must be named by strings, got {_short(list(kwargs))}")
    with torch.device("meta"):  # count first: meta tensors take no memory
        parameters = sum(p.numel() for p in _built(spec["name"], kwargs, source).parameters())
    if parameters > MAX_SPEC_PARAMETERS:
        raise MobiforgeError(
            f"{source}: its spec {_short(spec)} asks for {parameters:,} parameters, over the {MAX_SPEC_PARAMETERS:,} "
            "any mobile model needs; the file was edited or damaged"
        )
    return _built(spec["name"], kwargs, source)


def _built(name: str, kwargs: dict[str, Any], source: str) -> nn.Module:
    try:
        return build(name, **kwargs)
    except MobiforgeError as error:
        raise MobiforgeError(f"{source}: {error}") from None
    except (TypeError, ValueError, OverflowError, RuntimeError) as error:  # a value of the wrong type or size
        raise MobiforgeError(f"{source}: cannot build {name!r} from {_short(kwargs)} ({error})") from None


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
