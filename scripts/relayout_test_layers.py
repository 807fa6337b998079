"""Imports point down the layers only: read every module's imports with ast.

The folders are the layers. Every package (and every module at the package root)
has a layer; a module may import only its own layer or lower ones. Core (layer 1)
is pure stdlib; file I/O (layer 2) uses no adapter library; the composition layer
(4) is imported by nothing below it. Imports under `if TYPE_CHECKING:` are not
run, so they do not count. A new package or root module fails
`test_every_package_has_a_layer` until it is given one here (and in ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "logvold"
# Package (or root module) under logvold -> layer. Keys are relative to logvold.
LAYERS: dict[str, int] = {
    "": 1,  # logvold/__init__.py: the version only
    "errors": 1,
    "core": 1,
    "fileio": 2,
    "config": 3,  # reads YAML: the adapter of pyyaml
    "sources": 3,
    "server": 3,
    "telemetry": 3,
    "runner": 3,
    "driver": 3,
    "client": 3,
    "daemon": 4,
    "cli": 4,
    "__main__": 4,
}
LAYER_NAMES = {1: "core", 2: "file I/O", 3: "adapters", 4: "composition"}
# Third-party libraries layer 2 may use: codecs and the RE2 engine in fileio,
# where segments are decoded and the `pattern` read filter runs.
LAYER2_THIRD_PARTY = {"fileio": {"zstandard", "re2"}}
YAML_IMPORTER = "logvold.config.yaml_file"


@dataclass(frozen=True)
class Import:
    module: str
    """Dotted name of the imported module (a `from X import submodule` names the submodule)."""
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package_module(dotted: str) -> bool:
    relative = Path(*dotted.split("."))
    base = PACKAGE_ROOT.parent / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST, *, type_checking: bool = False) -> list[ast.AST]:
    """Every node except those inside `if TYPE_CHECKING:` bodies (unless type_checking)."""
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def imports_of(path: Path, *, type_checking: bool = False) -> list[Import]:
    """The runtime imports of one module (with type_checking, also those under
    `if TYPE_CHECKING:`), relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in _runtime_nodes(tree, type_checking=type_checking):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_submodule = base.startswith("logvold") and _is_package_module(candidate)
                found.append(Import(candidate if is_submodule else base, node.lineno))
    return found


MODULES = sorted(PACKAGE_ROOT.rglob("*.py"))


def _within(module: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _is_stdlib(module: str) -> bool:
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names or top == "__future__"


def _layer_key(dotted: str) -> str | None:
    """The LAYERS key a logvold module belongs to ('' for the package itself)."""
    parts = dotted.split(".")
    if parts[0] != "logvold":
        return None
    return parts[1] if len(parts) > 1 else ""


def layer_of(dotted: str) -> int | None:
    key = _layer_key(dotted)
    return None if key is None else LAYERS.get(key)


def _violations(path: Path) -> list[str]:
    name = _module_name(path)
    own = layer_of(name)
    if own is None:
        return [f"{name} has no layer: add {_layer_key(name)!r} to LAYERS"]
    problems: list[str] = []
    for imp in imports_of(path):
        where = f"{path.relative_to(PACKAGE_ROOT.parent)}:{imp.line} imports {imp.module}"
        if _within(imp.module, ("logvold",)):
            theirs = layer_of(imp.module)
            if theirs is not None and theirs > own:
                problems.append(
                    f"{where}: upward import from layer {own} ({LAYER_NAMES[own]}) "
                    f"to layer {theirs} ({LAYER_NAMES[theirs]})"
                )
        elif _is_stdlib(imp.module):
            continue
        elif own == 1:
            problems.append(f"{where}: core may import only stdlib, logvold.core, logvold.errors")
        elif own == 2:
            allowed = LAYER2_THIRD_PARTY.get(_layer_key(name) or "", set())
            if not _within(imp.module, allowed):
                problems.append(f"{where}: third-party library not allowed in layer 2")
    return problems


@pytest.mark.parametrize(
    "path", MODULES, ids=[str(p.relative_to(PACKAGE_ROOT.parent)) for p in MODULES]
)
def test_imports_point_down(path: Path) -> None:
    assert _violations(path) == []


def test_every_package_has_a_layer() -> None:
    keys = {_layer_key(_module_name(p)) for p in MODULES}
    assert keys - set(LAYERS) == set(), "give these a layer in LAYERS"


def test_the_checker_sees_the_layers_it_guards() -> None:
    names = {_module_name(p) for p in MODULES}
    assert {"logvold.core.policy", "logvold.errors", YAML_IMPORTER, "logvold.cli"} <= names
    for key in LAYERS:
        if key:
            assert any(n == f"logvold.{key}" or n.startswith(f"logvold.{key}.") for n in names), key


def test_config_yaml_file_is_the_only_yaml_importer() -> None:
    importers = {
        _module_name(p) for p in MODULES if any(_within(i.module, ("yaml",)) for i in imports_of(p))
    }
    assert importers == {YAML_IMPORTER}


def import_cycles() -> list[list[str]]:
    """Groups of logvold modules that import each other, directly or through others
    (lazy imports and `if TYPE_CHECKING:` imports count: a cycle is a design knot
    even when Python tolerates it)."""
    graph = {
        _module_name(p): {
            i.module for i in imports_of(p, type_checking=True) if _within(i.module, ("logvold",))
        }
        for p in MODULES
    }
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w == v or w not in graph:
                continue
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return cycles


def test_file_io_layer_runs_no_processes_and_sends_no_signals() -> None:
    """The reopen action (a signal or a command) is the runner's, injected as a Reopener."""
    found = []
    for path in MODULES:
        if not _module_name(path).startswith("logvold.fileio"):
            continue
        for imp in imports_of(path):
            if _within(imp.module, ("subprocess", "signal", "multiprocessing")):
                found.append(f"{path.name}:{imp.line} imports {imp.module}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("kill", "killpg", "system"):
                found.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    assert found == []


def test_no_import_cycles() -> None:
    assert import_cycles() == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        pytest.param(
            "core/fake.py", "import yaml\n", "core may import only stdlib", id="core-yaml"
        ),
        pytest.param(
            "core/fake.py", "from logvold.fileio import state\n", "upward import from layer 1",
            id="core-upwards",
        ),
        pytest.param(
            "core/fake.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from logvold.fileio.state import StreamState\n", None, id="core-type-checking-ok",
        ),
        pytest.param(
            "core/fake.py", "from .. import errors\nfrom . import layout\n", None,
            id="core-relative-ok",
        ),
        pytest.param(
            "fileio/fake.py", "import aiohttp\n", "third-party library not allowed in layer 2",
            id="fileio-aiohttp",
        ),
        pytest.param(
            "fileio/fake.py", "def f():\n    from logvold.server import app\n",
            "upward import from layer 2", id="fileio-lazy-server",
        ),
        pytest.param(
            "fileio/fake.py", "from logvold.telemetry.metrics import Metrics\n",
            "upward import from layer 2", id="fileio-metrics",
        ),
        pytest.param(
            "server/fake.py", "from logvold import daemon\n", "upward import from layer 3",
            id="server-imports-daemon",
        ),
        pytest.param(
            "server/fake.py", "from logvold.daemon.serve import Daemon\n",
            "upward import from layer 3", id="server-imports-daemon-module",
        ),
        pytest.param(
            "sources/fake.py", "from logvold.config import yaml_file\nimport aiohttp\n", None,
            id="adapters-import-each-other-and-libraries",
        ),
        pytest.param(
            "newpkg/fake.py", "import os\n", "has no layer", id="package-without-layer",
        ),
    ],
)  # fmt: skip
def test_checker_catches_violations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, expected: str | None
) -> None:
    # A throwaway package tree that mirrors logvold's, so names and relative imports resolve.
    fake_root = tmp_path / "logvold"
    for real in MODULES:
        target = fake_root / real.relative_to(PACKAGE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    path = fake_root / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_ROOT", fake_root)
    found = _violations(path)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1
        assert expected in found[0]
