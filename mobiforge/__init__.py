"""mobiforge: train, compress and ship MobileNet-family image classifiers to phones and edge devices.

The names below are imported on first use (PEP 562), not with the package: ``import mobiforge`` and
``mobiforge --help`` stay fast because nothing here loads torch until a model is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_from_spec": "mobiforge.models",
    "create_model": "mobiforge.models",
    "list_models": "mobiforge.models",
    "register_model": "mobiforge.models",
}

__all__ = ["__version__", "build_from_spec", "create_model", "list_models", "register_model"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mobiforge' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
