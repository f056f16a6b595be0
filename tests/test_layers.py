"""The import structure: every module sits in a layer, imports only from its own layer or lower ones, and the
package has no import cycle (docs/architecture.md draws the layers and says why they are cut where they are)."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mobiforge"

# Lowest first. A module may import from its own layer and the ones before it. Shell patterns match submodules.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "mobiforge",
            "mobiforge.errors",
            "mobiforge.paths",
            "mobiforge.progress",
            "mobiforge.log",
            "mobiforge.files",
            "mobiforge.units",
            "mobiforge.backend_api",  # the runtime table and the interface; the implementations are deploy
            "mobiforge.config",
            "mobiforge.options",  # the flags generated from the configs, and written back from them
            "mobiforge.card",  # the model card ship writes, read by serve and predict
        ),
    ),
    ("models", ("mobiforge.models", "mobiforge.models.*")),
    ("data", ("mobiforge.checkpoint", "mobiforge.data", "mobiforge.data.*", "mobiforge.plots", "mobiforge.profile")),
    (
        "training primitives",
        ("mobiforge.engine", "mobiforge.losses", "mobiforge.runs", "mobiforge.callbacks", "mobiforge.onnx_int8"),
    ),
    ("training", ("mobiforge.trunk", "mobiforge.transfer", "mobiforge.train", "mobiforge.inference")),
    ("compress", ("mobiforge.quantize", "mobiforge.prune")),
    (
        "deploy",
        ("mobiforge.backends", "mobiforge.backends.*", "mobiforge.untrusted", "mobiforge.runtimes", "mobiforge.export"),
    ),
    (
        "recipes",
        (
            "mobiforge.distill",
            "mobiforge.doctor",
            "mobiforge.doctor.*",
            "mobiforge.ship",
            "mobiforge.ship.*",
            "mobiforge.serve",
        ),
    ),
    ("cli", ("mobiforge.cli", "mobiforge.cli.*", "mobiforge.cli.progress", "mobiforge.__main__")),
)
# Only the CLI imports internal modules inside functions: `mobiforge --help` must not pay for torch.
LAZY_IMPORTS_ALLOWED = ("mobiforge.cli", "mobiforge.cli.*")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def internal_imports(module: str) -> list[tuple[str, bool]]:
    """(imported mobiforge module, imported inside a function) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(child) for child in ast.walk(node) if child is not node)
    found = []  # `if TYPE_CHECKING:` imports count: a cycle through type hints is still one for a reader
    for node in ast.walk(tree):
        lazy = id(node) in in_function
        if isinstance(node, ast.Import):
            found += [(alias.name, lazy) for alias in node.names if alias.name.split(".")[0] == "mobiforge"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mobiforge":
            for alias in node.names:  # `from mobiforge import engine` imports the module mobiforge.engine
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if submodule in MODULES else node.module, lazy))
    return found


def test_every_module_is_in_one_layer() -> None:
    for module in MODULES:
        matches = [name for name, patterns in LAYERS if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
        assert len(matches) == 1, f"{module} matches layers {matches}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    for imported, _ in internal_imports(module):
        assert imported in MODULES, f"{module} imports {imported}, which does not exist"
        assert layer_of(imported) <= layer_of(module), (
            f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} from the higher layer "
            f"{LAYERS[layer_of(imported)][0]}"
        )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_internal_imports_are_at_module_level(module: str) -> None:
    if any(fnmatch.fnmatchcase(module, pattern) for pattern in LAZY_IMPORTS_ALLOWED):
        return
    lazy = sorted({imported for imported, is_lazy in internal_imports(module) if is_lazy})
    assert not lazy, f"{module} imports {', '.join(lazy)} inside a function; import it at the top"


def test_there_is_no_import_cycle() -> None:
    graph = {module: {imported for imported, _ in internal_imports(module)} - {module} for module in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = [*path[path.index(imported) :], imported] if imported in path else [module, imported]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_command_line_starts_without_torch() -> None:
    """`mobiforge --help` and `--version` parse arguments only: importing torch would cost about a second."""
    code = "import sys, mobiforge.cli; mobiforge.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


BENCHMARKS = sorted((PACKAGE.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_benchmarks_use_the_public_api_as_modules(script: Path) -> None:
    """`python -m benchmarks.NAME` from the repository root: no sys.path edits, no private mobiforge names."""
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
            raise AssertionError(f"{script.name} touches sys.path; run it as python -m benchmarks.{script.stem}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mobiforge"):
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            assert not private, f"{script.name} imports private {', '.join(private)} from {node.module}"


DOCS = [PACKAGE.parent / "README.md", *sorted((PACKAGE.parent / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", DOCS, ids=lambda path: path.name)
def test_doc_links_point_at_files_that_exist(page: Path) -> None:
    import re

    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
