"""The layout's rules, checked on the source: which package may import which, no import cycle, the
daemon loads nothing of the trainer, and no module or function grows past what a reader takes in.

docs/ARCHITECTURE.md draws the layers these rules keep.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = {"hitveto": ROOT / "service" / "hitveto", "hitveto_client": ROOT / "clients" / "hitveto_client"}
# Which layers each layer may import (besides itself). Serving never reaches into offline; the
# client imports nothing of the service.
ALLOWED = {
    "hitveto_client": set(),
    "hitveto.config": set(),
    "hitveto.models": {"hitveto_client"},
    "hitveto.io": {"hitveto.models", "hitveto_client"},
    "hitveto.sim": {"hitveto.io", "hitveto_client"},
    "hitveto.serving": {"hitveto.config", "hitveto.models", "hitveto.io", "hitveto_client"},
    "hitveto.offline": {
        "hitveto.config", "hitveto.models", "hitveto.io", "hitveto.serving", "hitveto_client",
    },
    "hitveto.demo": {
        "hitveto.io", "hitveto.models", "hitveto.offline", "hitveto.serving", "hitveto.sim", "hitveto_client",
    },
    "hitveto.cli": {
        "hitveto.config", "hitveto.demo", "hitveto.io", "hitveto.models", "hitveto.offline",
        "hitveto.serving", "hitveto.sim", "hitveto_client",
    },
}  # fmt: skip
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
SIZE_CHECKED = ("service", "clients", "benchmarks", "tests")


def _modules() -> dict[str, Path]:
    found = {}
    for root in PACKAGES.values():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(path: Path) -> Iterator[str]:
    """Every module name an import statement in the file names (also inside functions), except
    those only a type checker reads (`if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imported(path):
            while imported and imported not in modules:  # `from pkg import function` -> pkg
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] == "hitveto_client" else ".".join(parts[:2])


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in _graph() if m != "hitveto"} <= set(ALLOWED)


def test_layers_import_only_what_they_may():
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in _graph().items()
        for d in deps
        if _layer(d) != _layer(m) and m != "hitveto" and _layer(d) not in ALLOWED[_layer(m)]
    )
    assert wrong == []


def test_no_import_cycle():
    graph, done, cycles = _graph(), set(), []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            if dep in path:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []


def _loaded_after(code: str) -> str:
    """What a fresh interpreter prints after running `code`."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_daemon_loads_nothing_of_the_trainer():
    # tqdm, matplotlib and h5py blocked (torch itself imports tqdm when it can, and copes without):
    # the import fails if the serving stack needs one of them.
    blocked = "import sys; sys.modules.update(dict.fromkeys(['tqdm', 'matplotlib', 'h5py'])); "
    offline = "print(sorted(m for m in sys.modules if m.startswith(('hitveto.offline', 'hitveto.sim'))))"
    assert _loaded_after(blocked + "import hitveto.serving.daemon, hitveto.cli; " + offline) == "[]"


def test_the_client_loads_only_numpy_zmq_msgpack():
    """The DAQ-side client must stay light: neither torch nor psana nor h5py nor the service."""
    client = "import sys, hitveto_client.veto, hitveto_client.hitwriter, hitveto_client.protocol; "
    heavy = "print(sorted({'torch', 'psana', 'h5py', 'prometheus_client', 'hitveto'} & set(sys.modules)))"
    assert _loaded_after(client + heavy) == "[]"


def _python_files() -> Iterator[Path]:
    for folder in SIZE_CHECKED:
        yield from sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", list(_python_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    long_functions = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{lines} lines"
    assert long_functions == []
