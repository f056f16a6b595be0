"""Artifacts from elsewhere are opened first in a child process, so that a crafted file cannot abort this one.

A ``.pte`` with ExecuTorch's header and damage after it made the runtime abort the whole process (SIGABRT, exit 134,
nothing printed: 27 of 40 header mutations in a bounded fuzz). Guessing which bytes each native parser trips on is
a race with their parsers; instead, a file this machine has not seen before is loaded, its input shape read and one
blank input run in a child (``python -m mobiforge.untrusted FILE``). When the child dies, the parent says so in one
line; when it survives, the file's SHA-256 is remembered in ``$MOBIFORGE_HOME/vetted.txt`` and later loads of the
same bytes skip the child. Files mobiforge export writes itself are remembered when written.

The cost is one child process per new file (RESULTS.md#untrusted_artifact_cost), paid once per file, not per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from mobiforge.backend_api import backend_for
from mobiforge.errors import MobiforgeError
from mobiforge.paths import mobiforge_home

VETTED_FILE = "vetted.txt"  # under mobiforge_home(): the SHA-256 of every artifact seen to load, one per line
CHILD_TIMEOUT_S = 300.0


def digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _vetted_path() -> Path:
    return mobiforge_home() / VETTED_FILE


def _vetted() -> set[str]:
    try:
        return set(_vetted_path().read_text().split())
    except OSError:
        return set()


def trust(path: Path) -> None:
    """Remember ``path``'s bytes as loadable (export wrote them; or a child loaded them). One short append: lines
    from concurrent processes do not mix."""
    try:
        _vetted_path().parent.mkdir(parents=True, exist_ok=True)
        with open(_vetted_path(), "a") as stream:
            stream.write(digest(backend_for(path).loaded_file(path)) + "\n")
    except OSError:
        pass  # a read-only home only costs the child next time


def vet(path: Path) -> None:
    """Load ``path`` in a child first unless its bytes were seen to load before; a child that dies or fails is a
    one-line MobiforgeError naming the file. A runtime that does not run on this host (Core ML) reads nothing."""
    backend = backend_for(path)
    path = backend.loaded_file(path)  # a folder artifact's runtime reads one file in it
    if not backend.runs_here or digest(path) in _vetted():
        return
    child = subprocess.Popen(
        [sys.executable, "-m", "mobiforge.untrusted", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    with contextlib.suppress(MobiforgeError):  # meanwhile, the runtime's own slow imports, which loading it here needs
        backend.require(to_run=True)
    try:
        child.wait(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        raise MobiforgeError(
            f"{path}: {backend.title} did not finish loading it in {CHILD_TIMEOUT_S:.0f} s; the file is damaged or "
            "not made by mobiforge export: export it again"
        ) from None
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:  # a signal number this platform has no name for
            name = f"signal {-child.returncode}"
        raise MobiforgeError(
            f"{path}: {backend.title} crashed reading it ({name}); the file is damaged or not made by mobiforge "
            "export: export it again"
        )
    if child.returncode == 0:
        trust(path)
    # otherwise the runtime raised an exception there, which it raises here too, where it becomes a one-line error


def _load_in_this_process(path: Path) -> None:
    """What the parent does with the file: read its input shape, load it, run one blank input (a file that takes
    pixels needs its normalisation for that: it is loaded only)."""
    backend = backend_for(path)
    impl = backend.impl()
    shape = tuple(impl.input_shape(path))
    if backend.pixel_input:
        impl.runner(path, 1, None)
        return
    impl.runner(path, 1)(np.zeros(shape, dtype=np.float32))


if __name__ == "__main__":
    try:
        _load_in_this_process(Path(sys.argv[1]))
    except Exception:
        sys.exit(3)
