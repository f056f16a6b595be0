"""The model zoo: importing this package registers every family."""

from __future__ import annotations

from mobiforge.models import (  # noqa: F401  (importing a family registers its models)
    convpool,
    efficientnet_lite,
    mobilenet_seed,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    resnet_cifar,
    shufflenet_v2,
)
from mobiforge.models.base import MobileClassifier, Preprocess
from mobiforge.models.factory import build_from_spec, create_model
from mobiforge.models.registry import Traits, is_model, list_models, model_traits, register_model

__all__ = [
    "MobileClassifier",
    "Preprocess",
    "Traits",
    "build_from_spec",
    "create_model",
    "is_model",
    "list_models",
    "model_traits",
    "register_model",
]
