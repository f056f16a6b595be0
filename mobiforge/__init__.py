"""mobiforge: train, compress and ship MobileNet-family image classifiers to phones and edge devices."""

from __future__ import annotations

__version__ = "0.1.0"

from mobiforge.models import build_from_spec, create_model, list_models, register_model

__all__ = ["__version__", "build_from_spec", "create_model", "list_models", "register_model"]
