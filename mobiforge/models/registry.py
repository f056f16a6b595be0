"""Model registry: one decorator registers a builder, ``create_model`` builds any model by name.

As in timm, keyword arguments that are ``None`` are dropped before the builder is called, so CLI flags can
default to ``None`` without overriding a model's own defaults. Every model built here carries ``model.spec``,
the plain dict ``{"name": ..., "kwargs": ...}`` that rebuilds the same architecture (see ``build_from_spec``).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from mobiforge.errors import MobiforgeError, UnknownModelError

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_FAMILY: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Register a model builder under its function name. A duplicate name is an error, not a silent override."""
    name = fn.__name__
    if name in _MODEL_BUILDERS:
        raise ValueError(f"model {name!r} is already registered (by {_MODEL_FAMILY[name]})")
    _MODEL_BUILDERS[name] = fn
    _MODEL_FAMILY[name] = fn.__module__
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (e.g. ``"mobilenet_v3*"``)."""
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return sorted(name for name in _MODEL_BUILDERS if fnmatch.fnmatch(name, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_BUILDERS


def _check_name(name: str) -> None:
    if name not in _MODEL_BUILDERS:
        close = difflib.get_close_matches(name, _MODEL_BUILDERS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `mobiforge models` to list them."
        raise UnknownModelError(f"unknown model {name!r}; {hint}")


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
    _check_name(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if pretrained or weights is not None:
        return _create_pretrained(name, pretrained or True, weights, download, kwargs)
    builder = _MODEL_BUILDERS[name]
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MobiforgeError(f"model {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    try:
        model = builder(**kwargs)
    except ValueError as error:  # an inconsistent width list or the like: say which model and why
        raise MobiforgeError(f"cannot build {name!r}: {error}") from None
    model.spec = {"name": name, "kwargs": _plain(kwargs)}
    return model


def _create_pretrained(
    name: str, tag: bool | str, file: str | Path | None, download: bool, kwargs: dict[str, Any]
) -> nn.Module:
    from mobiforge.models.weights import find_weights_file, get_weights, load_pretrained

    entry = get_weights(name, tag)
    num_classes = kwargs.pop("num_classes", entry.num_classes)
    path = find_weights_file(entry, file, download)  # before building: a missing file fails fast
    model = create_model(name, **{**kwargs, **entry.model_kwargs, "num_classes": entry.num_classes})
    load_pretrained(model, entry, path, num_classes)
    model.spec = {"name": name, "kwargs": _plain({**kwargs, **entry.model_kwargs, "num_classes": num_classes})}
    model.pretrained = entry.name
    return model


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its ``spec`` dict (as stored in checkpoints): no pickled modules involved."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a model spec is a dict with 'name' and 'kwargs', got {spec!r}")
    return create_model(spec["name"], **dict(spec.get("kwargs", {})))


def _plain(value: Any) -> Any:
    """Turn tuples into lists so that a spec survives JSON/YAML and ``torch.load(weights_only=True)`` alike."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
