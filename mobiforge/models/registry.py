"""Model registry, the leaf of the models package: one decorator registers a builder; ``build`` makes the bare
architecture of any registered name.

The import chain points one way, as timm's does: ``registry`` <- ``weights`` <- ``factory``. ``create_model`` (in
``factory``) adds pretrained weights on top of ``build``; modules that only need architectures (the torchvision key
map, the weights loaders) import this module and never the factory.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, overload

from torch import nn

from mobiforge.errors import MobiforgeError, UnknownModelError

WidthReader = Callable[[nn.Module], dict[str, Any]]


@dataclass(frozen=True)
class Traits:
    """What the rest of mobiforge needs to know of a model, declared with its builder in the family's own file (as
    timm declares its ``default_cfgs`` beside each model): adding a family touches that file and nothing else, ship's
    candidate grid aside."""

    family: str = ""  # the name several models share (``resnet`` for resnet20..56), which ``--models`` takes
    widths: WidthReader | None = None  # reads a pruned model's widths back as spec kwargs; None: not prunable
    not_prunable: str = ""  # why it cannot be pruned, when ``widths`` is None and the reason is not just "no reader"
    truncatable: bool = False  # takes ``depth``: a prefix of its blocks, with a new head
    small_images_only: bool = False  # a CIFAR-style network: ship searches it for small images only
    identity_start: bool = False  # a plain conv stack, for which airbench's identity start and fast BN biases help
    epoch_efficient: bool = False  # learns more per epoch than the other families from scratch on small images


_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_MODULE: dict[str, str] = {}
_MODEL_TRAITS: dict[str, Traits] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


@overload
def register_model(fn: F, *, traits: Traits | None = None) -> F: ...
@overload
def register_model(fn: None = None, *, traits: Traits | None = None) -> Callable[[F], F]: ...
def register_model(fn: F | None = None, *, traits: Traits | None = None) -> F | Callable[[F], F]:
    """Register a model builder under its function name, with its ``traits``: ``@register_model`` or
    ``@register_model(traits=...)``. A duplicate name is an error, not a silent override."""

    def register(builder: F) -> F:
        name = builder.__name__
        if name in _MODEL_BUILDERS:
            raise ValueError(f"model {name!r} is already registered (by {_MODEL_MODULE[name]})")
        _MODEL_BUILDERS[name] = builder
        _MODEL_MODULE[name] = builder.__module__
        _MODEL_TRAITS[name] = traits or Traits()
        return builder

    return register(fn) if fn is not None else register


def model_traits(name: str) -> Traits:
    """The traits ``name`` was registered with, its family filled in (a model with none is its own family)."""
    check_name(name)
    traits = _MODEL_TRAITS[name]
    return traits if traits.family else replace(traits, family=name)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (e.g. ``"mobilenet_v3*"``)."""
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return sorted(name for name in _MODEL_BUILDERS if fnmatch.fnmatch(name, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_BUILDERS


def check_name(name: str) -> None:
    """Raise ``UnknownModelError`` with the closest names when ``name`` is not registered."""
    if name not in _MODEL_BUILDERS:
        close = difflib.get_close_matches(name, _MODEL_BUILDERS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `mobiforge models` to list them."
        raise UnknownModelError(f"unknown model {name!r}; {hint}")


def build(name: str, **kwargs: Any) -> nn.Module:
    """The architecture registered as ``name``, with random weights and ``model.spec`` set.

    ``None`` values in ``kwargs`` are dropped (as in timm), so callers can pass optional flags through unchanged
    and a model's own defaults stay in force.
    """
    check_name(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    builder = _MODEL_BUILDERS[name]
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MobiforgeError(f"model {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    try:
        model = builder(**kwargs)
    except ValueError as error:  # an inconsistent width list or the like: say which model and why
        raise MobiforgeError(f"cannot build {name!r}: {error}") from None
    model.spec = {"name": name, "kwargs": plain(kwargs)}
    return model


def plain(value: Any) -> Any:
    """Turn tuples into lists so that a spec survives JSON/YAML and ``torch.load(weights_only=True)`` alike."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
