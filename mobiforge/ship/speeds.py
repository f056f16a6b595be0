"""Measured training speeds, kept per machine so that a second ``ship`` there skips the probes it already has.

``$MOBIFORGE_HOME/speeds.json`` (default ``~/.cache/mobiforge``) maps a key to the images per second a candidate
trained at in its probe, fp32 and bf16. The key names everything the speed depends on: the CPU model and its
vector flags, the threads, the torch version, and the candidate (model, width, input size, batch). A damaged or
foreign file is ignored and rewritten; a write that fails loses only the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from mobiforge.errors import MobiforgeError
from mobiforge.files import write_atomic
from mobiforge.paths import mobiforge_home

SPEEDS_FILE = "speeds.json"
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "asimd", "sve")


def cache_file() -> Path:
    return mobiforge_home() / SPEEDS_FILE


def machine_key() -> str:
    """The CPU model, its vector flags that decide the kernels, the threads and torch's version."""
    model, flags = platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
    vector = ",".join(flag for flag in VECTOR_FLAGS if flag in flags)
    return f"{model}|{vector}|{torch.get_num_threads()} threads|torch {torch.__version__}"


def speed_key(model: str, width_mult: float | None, img_size: int, batch: int) -> str:
    return hashlib.sha256(f"{machine_key()}|{model}|{width_mult}|{img_size}px|batch {batch}".encode()).hexdigest()[:24]


def load() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(key: str) -> dict[str, float] | None:
    """The speeds recorded under ``key`` ({"fp32": img/s, "bf16": img/s or 0}), or None."""
    found = load().get(key)
    if isinstance(found, dict) and isinstance(found.get("fp32"), int | float) and found["fp32"] > 0:
        return {"fp32": float(found["fp32"]), "bf16": float(found.get("bf16") or 0.0)}
    return None


def record(key: str, fp32: float, bf16: float) -> None:
    """Keep a probe's speeds; a cache that cannot be written is skipped (the run does not depend on it)."""
    data = load()
    data[key] = {"fp32": fp32, "bf16": bf16}
    with contextlib.suppress(MobiforgeError):
        write_atomic(cache_file(), json.dumps(data, indent=1, sort_keys=True))
