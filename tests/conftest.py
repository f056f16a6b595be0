from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_dir() -> Path:
    """The read-only ../shared folder (datasets, seed article); tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask (022) while the test runs, whatever the one it was started with."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


@pytest.fixture(autouse=True)
def _private_speed_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own speed cache: ship's probes must not be skipped because an earlier test measured them."""
    import mobiforge.ship.speeds

    path = tmp_path_factory.mktemp("speeds") / "speeds.json"
    monkeypatch.setattr(mobiforge.ship.speeds, "cache_file", lambda: path)


@pytest.fixture(scope="session")
def _session_vetted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vetted") / "vetted.txt"


@pytest.fixture(autouse=True)
def _private_vetted_list(_session_vetted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The artifacts seen to load, remembered for the session in a temp folder, not in the user's home."""
    import mobiforge.untrusted

    monkeypatch.setattr(mobiforge.untrusted, "_vetted_path", lambda: _session_vetted)
