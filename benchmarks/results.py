"""Write a benchmark's section of benchmarks/RESULTS.md with the command, machine, versions and date."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Every figure here was printed by a script in `benchmarks/`; each section names the command that produced it,\n"
    "the machine, the library versions and the date. Rerun the command to reproduce (numbers vary by machine).\n"
    "Commands recorded as `python benchmarks/NAME.py ...` (before 2026-12-01) run today, from the repository\n"
    "root, as `python -m benchmarks.NAME ...`.\n"
)


def environment() -> str:
    import torch
    import torchvision

    import mobiforge

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The vector ISA decides what pays off on CPU (bf16 is native only with AVX512-BF16/AMX), so name it.
    from mobiforge.engine import cpu_has_native_bf16

    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    cpu = f"{cpu} ({torch.backends.cpu.get_cpu_capability()}, {bf16})"
    return (
        f"{cpu}, {os.cpu_count()} cores visible; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, mobiforge {mobiforge.__version__}"
    )


def _how_run() -> list[str]:
    """``-m benchmarks.NAME`` as it was run (the way that works from the repository root), else the script path."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return ["-m", spec.name] if spec is not None else [Path(sys.argv[0]).as_posix()]


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    command = shlex.join(["python", *_how_run(), *sys.argv[1:]])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- {name}:start -->\n{body.rstrip()}\n\n"
        f"Command: `{command}` · Machine: {environment()} · Date: {stamp}\n<!-- {name}:end -->"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text.rstrip()}\n\n{section}\n"
    RESULTS.write_text(text)
