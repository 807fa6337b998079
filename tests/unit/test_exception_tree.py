"""One exception tree: every public exception class logvold defines lives in
logvold/errors.py under LogvoldError, so callers catch one family and the HTTP
middleware maps exactly one (BadRequest) to a 400. Private control-flow exceptions may
stay in their module only if they are listed here with a reason and never named
outside it (so they cannot escape to a caller that has to know them)."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
from pathlib import Path

import pytest

from logvold import errors

PACKAGE = Path(errors.__file__).resolve().parent

PRIVATE_ALLOWED = {
    ("logvold.server.nodelog.handler", "_CapReached"): (
        "raised by _Body.write when nodeLogQuery.maxBytes is reached and caught in _stream,"
        " which turns it into the 'output truncated' notice"
    ),
    ("logvold.sources.kubernetes", "_Gone"): (
        "a 410 Gone / expired resourceVersion; caught in the watch loop, which relists"
    ),
    ("logvold.core.steps", "_ForgedField"): (
        "a forged field of a state file's step marker; caught in step_from_dict, which"
        " returns a RefusedStep naming the reason"
    ),
    ("logvold.client.cli", "_HelpShown"): (
        "argparse printed --help; caught in _run, which exits 0"
    ),
}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


@functools.cache
def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            continue  # running it would start the CLI
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _exception_classes(module_name: str, path: Path) -> list[str]:
    """Names of the exception classes a module defines (top level: imported and checked;
    nested in a function: recognised by a base named like an exception)."""
    tree = _tree(path)
    module = importlib.import_module(module_name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        obj = getattr(module, node.name, None)
        if inspect.isclass(obj) and obj.__module__ == module_name:
            if issubclass(obj, BaseException):
                found.append(node.name)
        elif any(
            ast.unparse(b).split(".")[-1].endswith(("Error", "Exception", "Exit", "Interrupt"))
            for b in node.bases
        ):
            found.append(node.name)
    return found


def _defined_outside_errors() -> dict[tuple[str, str], Path]:
    return {
        (name, cls): path
        for name, path in _modules()
        if name != "logvold.errors"
        for cls in _exception_classes(name, path)
    }


def test_the_walk_sees_every_module_and_the_errors_module() -> None:
    names = {name for name, _ in _modules()}
    assert "logvold.errors" in names and "logvold.server.app" in names
    assert len(names) > 60
    # The walker recognises exception classes: errors.py's own are found.
    assert {"LogvoldError", "BadRequest", "StartError"} <= set(
        _exception_classes("logvold.errors", Path(errors.__file__))
    )


def test_no_public_exception_class_outside_errors_py() -> None:
    public = sorted(
        f"{module}.{cls} ({path.relative_to(PACKAGE.parent)})"
        for (module, cls), path in _defined_outside_errors().items()
        if not cls.startswith("_")
    )
    assert public == [], "move these into logvold/errors.py under LogvoldError: " + ", ".join(
        public
    )


def test_private_exceptions_are_allowlisted_with_a_reason() -> None:
    private = {key for key in _defined_outside_errors() if key[1].startswith("_")}
    assert private == set(PRIVATE_ALLOWED), (
        "a private exception class needs an entry in PRIVATE_ALLOWED saying where it is"
        " caught (or remove a stale entry)"
    )


@pytest.mark.parametrize(("module", "cls"), sorted(PRIVATE_ALLOWED))
def test_a_private_exception_is_never_named_outside_its_module(module: str, cls: str) -> None:
    for name, path in _modules():
        if name == module:
            continue
        tree = _tree(path)
        named = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
        }
        assert cls not in named, f"{cls} of {module} is used in {name}: make it public in errors.py"


def test_every_exception_in_errors_py_is_a_logvold_error() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if obj.__module__ == "logvold.errors" and issubclass(obj, BaseException)
    ]
    assert len(classes) >= 15
    assert [c.__name__ for c in classes if not issubclass(c, errors.LogvoldError)] == []


def test_the_moved_classes_sit_in_the_right_family() -> None:
    # A bad listing page is a request error (the middleware's 400), not a ValueError
    # (which the middleware treats as a bug: 500).
    assert issubclass(errors.BadListParam, errors.BadRequest)
    assert not issubclass(errors.BadListParam, ValueError)
    # Bad flags are usage errors (exit 2); asking for help is not (exit 0).
    assert issubclass(errors.FlagError, errors.UsageError)
    assert not issubclass(errors.HelpRequested, errors.UsageError)
    start = errors.StartError("cannot start 'x': no such file or command", exit_code=127)
    assert (start.exit_code, start.op) == (127, "start")
    api = errors.ApiStatusError(403, "pods is forbidden", {"reason": "Forbidden"})
    assert str(api) == "API server answered 403: pods is forbidden"
    assert (api.status, api.body) == (403, {"reason": "Forbidden"})
