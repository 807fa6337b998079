#!/usr/bin/env python3
"""Move logvold's loose root modules into packages that are the layers (issue #17).

Run from the repository root on a clean tree, then review and commit:

    python3 scripts/relayout.py            # move, rewrite references, sort imports
    python3 scripts/relayout.py --format   # also `ruff format` the tree and add
                                           # `ruff format --check` to scripts/test
    python3 scripts/relayout.py --verify   # then ruff, mypy and the unit tests

Why a script and not a diff: the move touches the imports of nearly every file,
so it is done once, at the end, on whatever main is by then. It therefore works
from a TABLE of old module -> new module and rewrites every file that mentions an
old name, rather than from a fixed list of edits:

- a module in the table that is neither at its old nor at its new place stops the
  run before anything changes (someone renamed it: update the table);
- a root module (or a `discovery/` / `server/nodelog_*` module) the table does not
  place also stops the run, listed by name (add it to MOVES or STAY_AT_ROOT);
- running it again is a no-op (moves already done are skipped; rewrites only
  touch names that are still old).

What it rewrites (.py, .md, .toml, .yaml, .cfg, .service, Dockerfile, scripts):
`from logvold.X import ...`, `import logvold.X`, `from logvold[.pkg] import X`,
dotted names in strings (monkeypatch targets, `python -m logvold.X`, entry points
`logvold.X:main`), `__import__("logvold.X").X.attr`, and file paths
(`logvold/X.py`, and paths relative to the package such as "daemon.py" in tests).
The layers test (tests/unit/test_layers.py) was installed by the first run; the script
reads the layer of each package from it, and regenerates the module map of
ARCHITECTURE.md from each module's first docstring paragraph (`--map-only` does only
that, on any layout).

Stdlib only; uses git (git mv keeps history) and, for import order, ruff from
.venv if present.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PACKAGE = "logvold"

# old dotted module -> new dotted module. Names that become packages themselves
# (logvold.daemon, logvold.driver, logvold.server.nodelog) "shadow": see _rewrite_names.
MOVES: dict[str, str] = {
    "logvold.daemon": "logvold.daemon.serve",
    "logvold.workers": "logvold.daemon.workers",
    "logvold.survey": "logvold.daemon.survey",
    "logvold.scheduler": "logvold.daemon.scheduler",
    "logvold.sdnotify": "logvold.daemon.sdnotify",
    "logvold.activity": "logvold.daemon.activity",
    "logvold.host_checks": "logvold.config.host_checks",
    # Followers in server/ wait on change notices, so they live with the sources
    # of changes (layer 3), not in the composition layer.
    "logvold.changes": "logvold.sources.changes",
    "logvold.static_source": "logvold.sources.static",
    "logvold.watcher": "logvold.sources.watcher",
    "logvold.discovery.kubernetes": "logvold.sources.kubernetes",
    "logvold.discovery.apiclient": "logvold.sources.kube_api",
    "logvold.discovery.annotation": "logvold.sources.annotation",
    "logvold.config_file": "logvold.config.yaml_file",
    "logvold.serve_settings": "logvold.config.serve_settings",
    "logvold.driver": "logvold.driver.logger",
    "logvold.driver_args": "logvold.driver.args",
    "logvold.metrics": "logvold.telemetry.metrics",
    "logvold.logsetup": "logvold.telemetry.logsetup",
    "logvold.server.nodelog": "logvold.server.nodelog.handler",
    "logvold.server.nodelog_files": "logvold.server.nodelog.files",
    "logvold.server.journal": "logvold.server.nodelog.journal",
}
# Names of an old module that live elsewhere than the module its file moved to: the
# old daemon.py became daemon/serve.py (main_serve stays there), and its Daemon class
# went to daemon/lifecycle.py when serve.py was split (issue #17).
NAME_MOVES: dict[str, str] = {"logvold.daemon.Daemon": "logvold.daemon.lifecycle"}
# Packages that disappear; any module left in them moves to the new package
# under its own name (listed in the output).
PACKAGE_MOVES: dict[str, str] = {"logvold.discovery": "logvold.sources"}
NEW_PACKAGES: dict[str, str] = {
    "logvold.daemon": "The composition layer of `logvold serve`: the daemon, its step workers, "
    "survey, scheduler and systemd notify.",
    "logvold.sources": "Where streams and their changes come from: the config's static volumes, "
    "Kubernetes pods on this node, inotify hints and per-stream change notices.",
    "logvold.config": "The config file (YAML, the only yaml importer) and the settings of "
    "`logvold serve`.",
    "logvold.driver": "`logvold driver`: containerd's `binary://` logger and its arguments.",
    "logvold.telemetry": "logvold's own signals: Prometheus metrics and structured log lines.",
    "logvold.server.nodelog": "The kubelet's node log query (KEP-2258): the handler, journalctl "
    "and plain log files.",
}
# Children of the packages that replace a module of the same name (for telling
# `from logvold.daemon import workers` (a child) from `... import Daemon` (old module).
MOVES_CHILDREN: dict[str, tuple[str, ...]] = {
    old: tuple(n.rpartition(".")[2] for n in MOVES.values() if n.rpartition(".")[0] == old)
    for old, new in MOVES.items()
    if new.startswith(old + ".")
}
STAY_AT_ROOT = {"__init__", "__main__", "cli", "errors"}
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".toml",
    ".yaml",
    ".yml",
    ".cfg",
    ".ini",
    ".txt",
    ".service",
    ".sh",
    ".in",
    ".json",
}
TEXT_NAMES = {"Dockerfile", "test", "Makefile", "MANIFEST.in"}
SKIP_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "build",
    "dist",
}
LAYERS_TEMPLATE = Path("tests/unit/test_layers.py")  # installed: the test is its own template
LAYERS_TEST = Path("tests/unit/test_layers.py")
FORMAT_CHECK = ".venv/bin/ruff format --check logvold tests benchmarks"


class RelayoutError(Exception):
    """The tree is not what the table expects; nothing or only moves were done."""


def _rel(dotted: str) -> Path:
    return Path(*dotted.split(".")).with_suffix(".py")


def _git(*args: str) -> None:
    subprocess.run(["git", *args], check=True)


def _all_moves(root: Path) -> dict[str, str]:
    """MOVES plus every leftover module of a disappearing package."""
    moves = dict(MOVES)
    for old_pkg, new_pkg in PACKAGE_MOVES.items():
        folder = root / Path(*old_pkg.split("."))
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            name = f"{old_pkg}.{path.stem}"
            if path.stem != "__init__" and name not in moves:
                moves[name] = f"{new_pkg}.{path.stem}"
                print(f"placing {name} -> {moves[name]} (not in the table: its package moves)")
    return moves


def preflight(root: Path, moves: dict[str, str]) -> list[tuple[str, str]]:
    """The moves still to do; raise if the tree does not match the table."""
    problems: list[str] = []
    todo: list[tuple[str, str]] = []
    for old, new in moves.items():
        old_path, new_path = root / _rel(old), root / _rel(new)
        if old_path.is_file() and new_path.is_file():
            problems.append(f"{old} exists at both {old_path} and {new_path}")
        elif old_path.is_file():
            todo.append((old, new))
        elif not new_path.is_file():
            problems.append(f"expected module {old} is missing (neither {old_path} nor {new_path})")
    placed = {m.rpartition(".")[2] for m in moves if m.count(".") == 1}
    unplaced = [
        p.name
        for p in sorted((root / PACKAGE).glob("*.py"))
        if p.stem not in STAY_AT_ROOT and p.stem not in placed
    ]
    unplaced += [
        str(p.relative_to(root))
        for p in sorted((root / PACKAGE / "server").glob("nodelog*.py"))
        if f"logvold.server.{p.stem}" not in moves
    ]
    if unplaced:
        problems.append(
            "modules the table does not place (add them to MOVES or STAY_AT_ROOT in "
            f"scripts/relayout.py): {', '.join(unplaced)}"
        )
    if problems:
        raise RelayoutError("\n".join(problems))
    return todo


def do_moves(root: Path, todo: list[tuple[str, str]]) -> None:
    shadowing = [
        (o, n)
        for o, n in todo
        if (root / Path(*o.split("."))).as_posix() == (root / _rel(n)).parent.as_posix()
    ]
    parked: dict[str, Path] = {}
    for old, _new in shadowing:  # daemon.py must leave before daemon/ can exist
        src = root / _rel(old)
        parked[old] = src.with_name(f"_relayout_{src.name}")
        _git("mv", str(src), str(parked[old]))
    for pkg, doc in NEW_PACKAGES.items():
        init = root / Path(*pkg.split(".")) / "__init__.py"
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            text = textwrap.fill(f'"""{doc}"""', width=99)
            init.write_text(text + "\n", encoding="utf-8")
            _git("add", str(init))
    for old, new in todo:
        src = parked.get(old, root / _rel(old))
        dst = root / _rel(new)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _git("mv", str(src), str(dst))
        print(f"moved {_rel(old)} -> {_rel(new)}")
    for old_pkg in PACKAGE_MOVES:
        folder = root / Path(*old_pkg.split("."))
        init = folder / "__init__.py"
        if init.is_file() and not [p for p in folder.glob("*.py") if p.name != "__init__.py"]:
            _git("rm", "-q", str(init))
        if folder.is_dir() and not [
            p for p in folder.rglob("*") if "__pycache__" not in p.parts and p.is_file()
        ]:
            shutil.rmtree(folder)


# --- rewriting ---------------------------------------------------------------------------


def _children(root: Path, package: str) -> set[str]:
    folder = root / Path(*package.split("."))
    return {p.stem for p in folder.glob("*.py")} | {
        p.parent.name for p in folder.glob("*/__init__.py")
    }


def _name_pattern(moves: dict[str, str]) -> re.Pattern[str]:
    names = sorted([*moves, *PACKAGE_MOVES], key=len, reverse=True)
    return re.compile(
        r"(?<![\w.])(" + "|".join(re.escape(n) for n in names) + r")(?![\w])((?:\.\w+)?)"
    )


def _rewrite_names(text: str, root: Path, moves: dict[str, str], moved_now: set[str]) -> str:
    """Dotted names: `logvold.daemon.X` -> `logvold.daemon.serve.X` unless X is already a
    child of the new package; a bare shadowing name (`logvold.daemon`, now the package)
    only in the run that moved it, so a second run leaves the package's own name alone."""
    all_names = {**moves, **PACKAGE_MOVES}
    pattern = _name_pattern(moves)

    def repl(m: re.Match[str]) -> str:
        old, tail = m.group(1), m.group(2)
        new = all_names[old]
        if f"{old}{tail}" in NAME_MOVES:  # `logvold.daemon.Daemon` (a monkeypatch target)
            return f"{NAME_MOVES[old + tail]}{tail}"
        if new.startswith(old + "."):  # shadowing: the old module name is now a package
            children = _children(root, old) | {new.rpartition(".")[2]}
            if tail and tail[1:] in children:
                return m.group(0)
            followed = m.string[m.end() : m.end() + 8]
            if not tail and (old not in moved_now or re.match(r"\s+import\b", followed)):
                # the package itself (a second run), or `from <package> import <child>`
                # written by _rewrite_from_imports
                return m.group(0)
        elif old in PACKAGE_MOVES and tail and f"{old}{tail}" in all_names:
            return all_names[f"{old}{tail}"]
        return new + tail

    return pattern.sub(repl, text)


def _rewrite_dunder_import(text: str, moves: dict[str, str]) -> str:
    """`__import__("logvold.workers").workers.X` -> `__import__("logvold.daemon.workers")...`."""

    def repl(m: re.Match[str]) -> str:
        old, attrs = m.group(1), m.group(2)
        new, old_tail = moves.get(old), old.partition(".")[2]
        if new is None or not attrs.startswith(old_tail + "."):
            return m.group(0)
        return f'__import__("{new}").{new.partition(".")[2]}{attrs[len(old_tail) :]}'

    return re.sub(r'__import__\("(logvold\.[\w.]+)"\)\.([\w.]+)', repl, text)


def _rewrite_from_imports(text: str, moves: dict[str, str]) -> str:
    """`from logvold[.pkg] import mod` where pkg.mod moved: one statement per moved module."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        if not (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            continue
        target = moves.get(node.module)
        if target is not None and target.startswith(node.module + "."):
            # `from logvold.daemon import Daemon`: the old module is now a package.
            kids = {target.rpartition(".")[2]} | set(MOVES_CHILDREN.get(node.module, ()))
            if not any(a.name in kids for a in node.names):
                by_target: dict[str, list[ast.alias]] = {}
                for a in node.names:
                    name_target = NAME_MOVES.get(f"{node.module}.{a.name}", target)
                    by_target.setdefault(name_target, []).append(a)
                if len(by_target) == 1 and node.end_lineno is not None:
                    (only,) = by_target
                    first = lines[node.lineno - 1]
                    lines[node.lineno - 1] = first.replace(
                        f"from {node.module} import", f"from {only} import", 1
                    )
                elif node.end_lineno is not None:  # e.g. `import Daemon, main_serve`
                    indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)  # type: ignore[union-attr]
                    edits.append(
                        (
                            node.lineno - 1,
                            node.end_lineno,
                            "".join(
                                f"{indent}from {module} import "
                                + ", ".join(
                                    a.name + (f" as {a.asname}" if a.asname else "") for a in names
                                )
                                + "\n"
                                for module, names in sorted(by_target.items())
                            ),
                        )
                    )
            continue
        moved = [a for a in node.names if f"{node.module}.{a.name}" in moves]
        if not moved or node.end_lineno is None:
            continue
        indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)  # type: ignore[union-attr]
        kept = [a for a in node.names if a not in moved]
        out: list[str] = []
        if kept:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in kept)
            out.append(f"{indent}from {node.module} import {names}\n")
        for a in moved:
            new = moves[f"{node.module}.{a.name}"]
            parent, _, leaf = new.rpartition(".")
            alias = a.asname or a.name
            out.append(
                f"{indent}from {parent} import {leaf}"
                + (f" as {alias}" if alias != leaf else "")
                + "\n"
            )
        edits.append((node.lineno - 1, node.end_lineno, "".join(out)))
    for start, end, new_text in sorted(edits, reverse=True):
        lines[start:end] = [new_text]
    return "".join(lines)


def _path_map(moves: dict[str, str]) -> dict[str, str]:
    """Paths relative to logvold/: 'daemon.py' -> 'daemon/serve.py', and old package dirs."""
    out = {
        _rel(o).relative_to(PACKAGE).as_posix(): _rel(n).relative_to(PACKAGE).as_posix()
        for o, n in moves.items()
    }
    for o, n in PACKAGE_MOVES.items():
        out[Path(*o.split(".")).relative_to(PACKAGE).as_posix() + "/"] = (
            Path(*n.split(".")).relative_to(PACKAGE).as_posix() + "/"
        )
    return out


def _rewrite_paths(text: str, moves: dict[str, str]) -> str:
    paths = _path_map(moves)
    pattern = re.compile(
        r"(?<![\w/.-])((?:logvold/)?)("
        + "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
        + r")(?![\w])"
    )
    return pattern.sub(lambda m: m.group(1) + paths[m.group(2)], text)


def _text_files(root: Path) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout.split("\n")
    files: list[Path] = []
    for rel in out:
        if not rel:
            continue
        path = root / rel
        if set(Path(rel).parts) & SKIP_DIRS or not path.is_file():
            continue
        if rel in ("scripts/relayout.py", LAYERS_TEMPLATE.as_posix()):
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            files.append(path)
    return files


def rewrite_tree(root: Path, moves: dict[str, str], moved_now: set[str]) -> int:
    changed = 0
    for path in _text_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = text
        if path.suffix == ".py":
            new = _rewrite_from_imports(new, moves)
        new = _rewrite_dunder_import(new, moves)
        new = _rewrite_names(new, root, moves, moved_now)
        new = _rewrite_paths(new, moves)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    return changed


# --- layers test and ARCHITECTURE.md --------------------------------------------------------


def install_layers_test(root: Path) -> None:
    template = root / LAYERS_TEMPLATE
    if not template.is_file():
        raise RelayoutError(f"{template} is missing")
    if template.resolve() == (root / LAYERS_TEST).resolve():
        return
    (root / LAYERS_TEST).write_text(template.read_text(encoding="utf-8"), encoding="utf-8")


def _first_paragraph(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc:
        return None
    para = doc.strip().split("\n\n")[0]
    return " ".join(para.split()).replace("|", "\\|")


def module_map(root: Path) -> str:
    rows = ["| module | job |", "|---|---|"]
    base = root / PACKAGE
    for path in sorted(base.rglob("*.py"), key=lambda p: p.relative_to(base).as_posix()):
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in path.parts:
            continue
        para = _first_paragraph(path) or "(no docstring)"
        rows.append(f"| `{path.relative_to(base).as_posix()}` | {para} |")
    return "\n".join(rows) + "\n"


def _layers_from_template(root: Path) -> dict[str, int]:
    """LAYERS of the installed layers test (after the move), else of the template."""
    for source in (LAYERS_TEST, LAYERS_TEMPLATE):
        if not (root / source).is_file():
            continue
        tree = ast.parse((root / source).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "LAYERS":
                assert node.value is not None
                value = ast.literal_eval(node.value)
                assert isinstance(value, dict)
                return value
    raise RelayoutError(f"neither {LAYERS_TEST} nor {LAYERS_TEMPLATE} defines LAYERS")


def _with_layers_section(root: Path, text: str) -> str:
    """A '## Layers' table (folder -> layer) before the module map, from the layers test."""
    names = {
        1: "core (pure, stdlib only)",
        2: "file I/O (stdlib + codecs/RE2)",
        3: "adapters (each the only importer of its library)",
        4: "composition",
    }
    by_layer: dict[int, list[str]] = {}
    layers = _layers_from_template(root)
    base = root / PACKAGE
    if not all(k == "" or (base / k).is_dir() or (base / f"{k}.py").is_file() for k in layers):
        return text  # not moved yet (--map-only on the old layout): no layers table
    for key, layer in layers.items():
        shown = (
            "`logvold/__init__.py`"
            if key == ""
            else (f"`{key}/`" if (root / PACKAGE / key).is_dir() else f"`{key}.py`")
        )
        by_layer.setdefault(layer, []).append(shown)
    rows = [
        "## Layers (the folders)",
        "",
        "A module imports its own layer or lower ones only; tests/unit/test_layers.py "
        "assigns every package a layer and fails on an upward import.",
        "",
        "| layer | packages and modules |",
        "|---|---|",
    ]
    rows += [f"| {n} {names[n]} | {', '.join(by_layer[n])} |" for n in sorted(by_layer)]
    section = "\n".join(rows) + "\n\n"
    existing = re.search(r"## Layers \(the folders\)\n(?:(?!## ).*\n)*", text)
    if existing:
        return text[: existing.start()] + section + text[existing.end() :]
    at = text.index("## Module map")
    return text[:at] + section + text[at:]


def regenerate_module_map(root: Path) -> bool:
    """Replace the table under '## Module map' with one row per module."""
    arch = root / "ARCHITECTURE.md"
    text = arch.read_text(encoding="utf-8")
    m = re.search(
        r"(## Module map[^\n]*\n(?:(?!\| module).*\n)*)(\| module \| job \|\n(?:\|.*\n)*)", text
    )
    if m is None:
        raise RelayoutError("ARCHITECTURE.md has no '## Module map' table")
    new = text[: m.start(2)] + module_map(root) + text[m.end(2) :]
    new = _with_layers_section(root, new)
    if new != text:
        arch.write_text(new, encoding="utf-8")
    return new != text


# --- pytest-asyncio ------------------------------------------------------------------------


def _is_run_of(stmt: ast.stmt, name: str) -> bool:
    """`asyncio.run(name())` as a statement."""
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        return False
    call = stmt.value
    inner = call.args[0] if len(call.args) == 1 and not call.keywords else None
    return (
        isinstance(call.func, ast.Attribute)
        and call.func.attr == "run"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "asyncio"
        and isinstance(inner, ast.Call)
        and isinstance(inner.func, ast.Name)
        and inner.func.id == name
        and not inner.args
        and not inner.keywords
    )


def _own_nodes(fn: ast.AsyncFunctionDef) -> list[ast.AST]:
    """Nodes of `fn`'s body, not descending into nested functions or classes."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _convertible(test: ast.FunctionDef) -> ast.AsyncFunctionDef | None:
    """The inner coroutine of `def test_x(): async def scenario(): ...; asyncio.run(scenario())`
    when inlining it cannot change meaning (no return, nonlocal, multi-line strings)."""
    if len(test.body) < 2 or not isinstance(test.body[-2], ast.AsyncFunctionDef):
        return None
    inner = test.body[-2]
    if inner.decorator_list or inner.args.args or inner.args.kwonlyargs:
        return None
    if not _is_run_of(test.body[-1], inner.name):
        return None
    uses = [n for n in ast.walk(test) if isinstance(n, ast.Name) and n.id == inner.name]
    if len(uses) != 1:
        return None
    for node in [inner, *_own_nodes(inner)]:
        if isinstance(node, (ast.Return, ast.Nonlocal, ast.Global, ast.Yield, ast.YieldFrom)):
            return None
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (str, bytes))
            and (node.lineno != node.end_lineno)
        ):
            return None
    return inner


def _wrap_def(line: str, width: int = 100) -> str:
    """A one-line `def` longer than `width`, with its parameters on a line of their own."""
    if len(line.rstrip("\n")) <= width or not line.rstrip().endswith(":"):
        return line
    indent = re.match(r"\s*", line).group(0)  # type: ignore[union-attr]
    head, _, rest = line.partition("(")
    params, _, tail = rest.rpartition(")")
    return f"{head}(\n{indent}    {params}\n{indent}){tail}"


def convert_async_tests(root: Path) -> list[str]:
    """Hand-written event-loop runners -> `@pytest.mark.asyncio async def test_...`.

    Only the plain shape is converted (the test's last two statements are
    `async def scenario() -> None: ...` and `asyncio.run(scenario())`); the names of the
    tests left with their own runner are returned for a person to look at.
    """
    left: list[str] = []
    for path in sorted((root / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "asyncio.run(" not in text and "new_event_loop" not in text:
            continue
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        edits: list[tuple[int, int, list[str]]] = []
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            inner = _convertible(node)
            uses_runner = any(
                isinstance(n, ast.Attribute)
                and n.attr in ("run", "new_event_loop")
                and isinstance(n.value, ast.Name)
                and n.value.id == "asyncio"
                for n in ast.walk(node)
            )
            if inner is None:
                if uses_runner:
                    left.append(f"{path.relative_to(root)}::{node.name}")
                continue
            assert node.end_lineno is not None and inner.end_lineno is not None
            first = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
            indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)  # type: ignore[union-attr]
            body_start = inner.body[0].lineno - 1
            # comments/blank lines between the inner def and its first statement stay
            head_end = inner.lineno - 1
            while not lines[head_end].rstrip().endswith(":") and head_end < body_start:
                head_end += 1
            body = lines[head_end + 1 : inner.end_lineno]
            width = len(re.match(r"\s*", lines[body_start]).group(0)) - (  # type: ignore[union-attr]
                len(re.match(r"\s*", lines[inner.lineno - 1]).group(0))  # type: ignore[union-attr]
            )
            dedented = [ln[width:] if ln[:width].strip() == "" else ln for ln in body]
            new = lines[first : node.lineno - 1]
            new = [f"{indent}@pytest.mark.asyncio\n", *new]
            new.append(_wrap_def(lines[node.lineno - 1].replace("def ", "async def ", 1)))
            new.extend(lines[node.lineno : inner.lineno - 1])
            new.extend(dedented)
            edits.append((first, node.end_lineno, new))
        if not edits:
            continue
        for start, end, new_lines in sorted(edits, reverse=True):
            lines[start:end] = new_lines
        out = "".join(lines)
        if not re.search(r"^import pytest$", out, re.M):
            out = out.replace("\nimport ", "\nimport pytest\nimport ", 1)
        path.write_text(out, encoding="utf-8")
    subprocess.run(
        [_tool(root, "ruff"), "check", "--fix", "--select", "F401,I", "--quiet", "tests"],
        check=False,
        cwd=root,
    )
    return left


# --- tools ---------------------------------------------------------------------------------


def _tool(root: Path, name: str) -> str:
    local = root / ".venv" / "bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RelayoutError(f"{name} not found: create .venv (pip install -e '.[test]') first")
    return found


def fix_import_order(root: Path) -> None:
    subprocess.run(
        [
            _tool(root, "ruff"),
            "check",
            "--fix",
            "--select",
            "I",
            "--quiet",
            "logvold",
            "tests",
            "benchmarks",
        ],
        check=False,
        cwd=root,
    )


def format_tree(root: Path) -> None:
    subprocess.run(
        [_tool(root, "ruff"), "format", "--quiet", "logvold", "tests", "benchmarks"],
        check=True,
        cwd=root,
    )
    script = root / "scripts" / "test"
    text = script.read_text(encoding="utf-8")
    if "ruff format --check" not in text:
        anchor = ".venv/bin/ruff check logvold tests benchmarks\n"
        if anchor not in text:
            raise RelayoutError(f"scripts/test has no line {anchor.strip()!r} to add the check to")
        script.write_text(text.replace(anchor, anchor + FORMAT_CHECK + "\n"), encoding="utf-8")
    long_lines = subprocess.run(
        [
            _tool(root, "ruff"),
            "check",
            "--select",
            "E501",
            "--output-format",
            "concise",
            "--quiet",
            "logvold",
            "tests",
            "benchmarks",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    ).stdout.strip()
    if long_lines:
        raise RelayoutError(
            "moved and formatted, but `ruff format` left lines it cannot shorten (split the "
            f"literal by hand, then run `ruff check` again):\n{long_lines}"
        )


def verify(root: Path) -> int:
    python = str(root / ".venv/bin/python") if (root / ".venv").exists() else sys.executable
    steps = [
        # the console scripts (logvold-driver -> logvold.driver.logger:main) are regenerated
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", "."],
        [_tool(root, "ruff"), "check", "logvold", "tests", "benchmarks"],
        [_tool(root, "mypy")],
        [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/unit"],
    ]
    for step in steps:
        print("$", " ".join(step), flush=True)
        rc = subprocess.run(step, cwd=root, check=False).returncode
        if rc:
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--format",
        action="store_true",
        help="ruff format the tree afterwards and add `ruff format --check` to scripts/test",
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="turn `asyncio.run(scenario())` tests into pytest-asyncio tests",
    )
    parser.add_argument("--verify", action="store_true", help="run ruff, mypy, unit tests after")
    parser.add_argument(
        "--map-only", action="store_true", help="only regenerate ARCHITECTURE.md's module map"
    )
    parser.add_argument("--allow-dirty", action="store_true", help="run on a tree with changes")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / PACKAGE / "__init__.py").is_file() or not (root / "pyproject.toml").is_file():
        print(
            "run from the repository root (where pyproject.toml and logvold/ are)", file=sys.stderr
        )
        return 2
    if args.map_only:
        regenerate_module_map(root)
        return 0
    started = time.monotonic()
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if dirty and not args.allow_dirty:
            raise RelayoutError("the tree has uncommitted changes (commit them or --allow-dirty)")
        moves = _all_moves(root)
        todo = preflight(root, moves)
        do_moves(root, todo)
        changed = rewrite_tree(root, moves, {old for old, _ in todo})
        install_layers_test(root)
        fix_import_order(root)
        regenerate_module_map(root)
        if args.asyncio:
            left = convert_async_tests(root)
            print(
                f"relayout: {len(left)} tests keep their own event loop runner (not the "
                "plain shape):",
                *left,
                sep="\n  ",
            )
        if args.format:
            format_tree(root)
    except RelayoutError as exc:
        print(f"relayout: {exc}", file=sys.stderr)
        return 1
    print(
        f"relayout: {len(todo)} modules moved, {changed} files rewritten "
        f"in {time.monotonic() - started:.1f}s; review with `git status` and commit"
    )
    return verify(root) if args.verify else 0


if __name__ == "__main__":
    sys.exit(main())
