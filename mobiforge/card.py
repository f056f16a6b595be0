"""The model card as a typed record: ``model_card.json`` is ``ModelCard.to_dict()``, and every reader (the report,
``MODEL_CARD.md``, the app snippets, ``--json``, and ``predict``, ``eval`` and ``serve`` on a shipped file) reads the
record, not the JSON's keys.

The JSON layout is the one ship has always written; ``from_dict`` reads it back, filling what an older or a
partial card lacks with the defaults below (a snippet needs only the file, the classes and the preprocessing)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CARD_FILE = "model_card.json"  # beside the shipped file, in ship's run folder


def _known(cls: type[T], data: dict[str, Any] | None) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{key: value for key, value in (data or {}).items() if key in names})


@dataclass
class CardArtifact:
    """The shipped file."""

    file: str = ""
    format: str = ""  # the runtime's name (``backend_api``)
    precision: str = ""
    float_layers: list[str] = field(default_factory=list)  # left in float: int8 lost too much there
    bytes: int = 0


@dataclass
class CardModel:
    candidate: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    params: int = 0
    macs: int = 0
    distilled: bool = False
    epochs: int = 0


@dataclass
class CardInput:
    """What the file takes: uint8 RGB pixels, NHWC, normalised inside the graph; or normalised float32 NCHW."""

    input_shape: list[int] = field(default_factory=list)
    layout: str = "NCHW"
    dtype: str = "float32"
    resize: int = 0
    crop: int = 0
    crop_pct: float | None = None  # crop / resize as the model's preprocessing holds it (None: a card before it)
    interpolation: str = "bilinear"
    scale: str = "RGB / 255"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def pixels(self) -> bool:
        return self.dtype == "uint8"


@dataclass
class CardAccuracy:
    split: str = "val"
    images: int = 0
    top1_in_runtime: float = 0.0
    top1_fp32_pytorch: float = 0.0
    drop: float = 0.0
    sdk: str | None = None  # the same file in the app-side SDK that loads it (MediaPipe Tasks for LiteRT)
    top1_in_sdk: float | None = None
    sdk_agreement: float | None = None  # % of images with the runtime's top-1
    sdk_clear_disagreements: int | None = None
    top1_in_sdk_app: float | None = None  # the SDK resizing the full-size val images, as in an app
    data: str = ""
    leaked_val: int = 0  # gate images with a copy in train (the doctor's data health)
    top1_without_leaked: float | None = None  # the runtime's top-1 on the other gate images


@dataclass
class CardLatency:
    median: float = 0.0
    p90: float = 0.0
    batch: int = 1
    threads: int = 1


@dataclass
class CardBudget:
    max_size_bytes: int = 0
    max_latency_ms: float = 0.0
    max_drop: float = 0.0
    time_budget_s: float = 0.0
    time_used_s: float = 0.0
    verdicts: dict[str, bool] = field(default_factory=dict)
    met: bool = False
    shortfall: dict[str, Any] | None = None  # ``shortfall.Shortfall.to_dict()``: the budget was not enough


@dataclass
class CardCoreML:
    """The Core ML package beside the shipped file: what was checked without a Mac, and that it was not run."""

    file: str = ""
    bytes: int = 0
    precision: str = ""
    ran_on_this_host: bool = False
    top1_pytorch_as_it_computes: float = 0.0
    images: int = 0
    checks: list[str] = field(default_factory=list)


@dataclass
class CardWeb:
    """The web folder beside the shipped file: a page that runs the model in the browser, and its gate there (the
    page in headless Chromium against LiteRT in Python on the same file)."""

    folder: str = ""
    model_bytes: int = 0
    precision: str = ""
    images: int = 0
    top1_in_runtime: float = 0.0  # LiteRT in Python, the same file
    page: str = ""  # the browser, the page's runtime, its threads and latency
    top1_in_page: float | None = None  # the page on the pixels at the model's input
    agreement: float | None = None  # % of images where the page's top-1 and ONNX Runtime's agree
    clear_disagreements: int | None = None  # of those that differ, the ones that are not near ties (the gate: none)
    top1_in_page_full_size: float | None = None  # the page on the full-size photos, its own decode and resize
    passed: bool = False
    screenshot: str = ""  # in the run folder


@dataclass
class ModelCard:
    """What an app developer needs to use the artifact, and the evidence that it meets the budget."""

    name: str = ""
    version: str = ""
    license: str = "not stated"  # asked for (--license), never assumed
    description: str = ""
    intended_use: str = ""
    limitations: list[str] = field(default_factory=list)
    shipped: bool = False
    artifact: CardArtifact = field(default_factory=CardArtifact)
    model: CardModel = field(default_factory=CardModel)
    classes: list[str] = field(default_factory=list)
    preprocessing: CardInput = field(default_factory=CardInput)
    accuracy: CardAccuracy = field(default_factory=CardAccuracy)
    latency_ms: CardLatency = field(default_factory=CardLatency)
    budget: CardBudget = field(default_factory=CardBudget)
    versions: dict[str, str] = field(default_factory=dict)
    command: str = ""
    created: str = ""
    core_ml: CardCoreML | None = None
    web: CardWeb | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for extra in ("core_ml", "web"):
            if data[extra] is None:
                data.pop(extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        nested = {
            "artifact": CardArtifact, "model": CardModel, "preprocessing": CardInput, "accuracy": CardAccuracy,
            "latency_ms": CardLatency, "budget": CardBudget,
        }  # fmt: skip
        card = _known(cls, {key: value for key, value in data.items() if key not in (*nested, "core_ml", "web")})
        for name, kind in nested.items():
            setattr(card, name, _known(kind, data.get(name)))
        card.core_ml = _known(CardCoreML, data["core_ml"]) if data.get("core_ml") else None
        card.web = _known(CardWeb, data["web"]) if data.get("web") else None
        return card

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """The card in ``path``; OSError, ValueError or TypeError when it is not one."""
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(data)
