"""No file operation by path outside `fileio/safedir.py`: the package is scanned (ast) for
opens, renames, unlinks, listings, stats and path resolutions, and each one must be in
safedir.py, made on a SafeDir, or on the allowlist below with the reason it cannot reach
a file a pod controls. A new `open(path)` of a volume file fails this test.

A receiver counts as a SafeDir when it is a parameter annotated `SafeDir`, or a name bound
(`with ... as x`, `x = ...`) to `open_stream_dir(...)`, `SafeDir.open_root/open_beneath(...)`,
`<SafeDir>.subdir(...)` or `self._opened()`, or a name annotated `SafeDir`
(`d: SafeDir | None = ...`).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "logvold"
DOOR = "fileio/safedir.py"

#: Module functions that take a path: flagged as `os.open`, `os.path.realpath`, ...
MODULE_CALLS = {
    "os": {
        "open",
        "rename",
        "replace",
        "unlink",
        "remove",
        "listdir",
        "scandir",
        "stat",
        "lstat",
        "mkdir",
        "makedirs",
        "rmdir",
        "link",
        "symlink",
        "readlink",
        "walk",
        "truncate",
        "mkfifo",
    },
    "os.path": {"realpath", "abspath"},
    "shutil": {"copyfile", "copy", "copy2", "move", "rmtree"},
}
#: Methods of pathlib.Path that open, list, resolve or change a file by path (not
#: `.replace`: str and dataclasses share the name; `os.replace` is caught above).
PATH_METHODS = {
    "open",
    "read_bytes",
    "read_text",
    "write_bytes",
    "write_text",
    "iterdir",
    "resolve",
    "unlink",
    "rename",
    "lstat",
    "stat",
    "glob",
    "rglob",
    "readlink",
    "symlink_to",
    "hardlink_to",
    "mkdir",
    "rmdir",
    "touch",
    "chmod",
    "samefile",
}
#: Methods that also exist on SafeDir (fd-relative there): fine on a SafeDir receiver.
SAFEDIR_METHODS = {"lstat", "unlink", "rename"}
_SAFEDIR_FACTORIES = (
    "open_stream_dir",
    "SafeDir.open_root",
    "SafeDir.open_beneath",
    ".subdir",
    "self._opened",
)

#: (module, call) -> why it never reaches a file inside a pod's volume.
ALLOWED: dict[tuple[str, str], str] = {
    ("client/cli.py", "os.open"): "the `logvold logs` client CLI writes the user's own output",
    ("config/yaml_file.py", ".read_bytes"): "reads the operator's config file",
    (
        "daemon/config_watch.py",
        ".read_bytes",
    ): "digest of the operator's config file (reload check)",
    ("daemon/reload.py", ".mkdir"): "creates the operator's configured default volume directory",
    ("driver/logger.py", ".mkdir"): "the containerd driver creates its own log directory",
    (
        "fileio/rotating_writer.py",
        "os.open",
    ): "logvold is the writer (`run`, `driver`): its own output files in its own directory",
    ("fileio/rotating_writer.py", "os.listdir"): "logvold's own output directory",
    ("fileio/rotating_writer.py", "os.path.abspath"): "logvold's own output file (a name only)",
    ("fileio/rotating_writer.py", "os.lstat"): "logvold's own output directory",
    ("fileio/rotating_writer.py", "os.replace"): "logvold's own spare file and segments",
    ("fileio/rotating_writer.py", ".unlink"): "logvold's own segments and spare file",
    ("fileio/rotating_writer.py", ".stat"): "logvold's own segments",
    ("fileio/spare_files.py", "os.open"): "the writer's next active files, in its own directory",
    ("fileio/spare_files.py", "os.link"): "names the writer's own next active file",
    ("fileio/spare_files.py", "os.rename"): "names the writer's own next active file",
    ("fileio/spare_files.py", "os.unlink"): "the writer's own spare files",
    (
        "runner/reopen.py",
        ".open",
    ): "the reopen action's pid file: operator config only (pods may not set `reopen`)",
    ("fileio/stream_files.py", ".iterdir"): "open_writers scans /proc, not a volume",
    ("fileio/stream_files.py", ".read_text"): "open_writers reads /proc/<pid>/fdinfo",
    ("fileio/stream_files.py", ".readlink"): "open_writers reads /proc/<pid>/fd links",
    (
        "fileio/stream_files.py",
        ".stat",
    ): "open_writers stats /proc/<pid>/fd magic links (compared by device and inode only)",
    ("config/host_checks.py", ".read_text"): "reads /proc/self/cgroup (which unit runs us)",
    ("config/host_checks.py", ".open"): "reads the installed systemd unit file and its drop-ins",
    ("config/host_checks.py", ".iterdir"): "lists the systemd unit's drop-in directory (bounded)",
    (
        "config/host_checks.py",
        "os.path.realpath",
    ): "the operator's configured volume path vs the unit's ReadWritePaths (no open)",
    ("server/access.py", ".open"): "reads /proc/<pid>/status of the client (its groups)",
    ("server/access.py", ".read_bytes"): "reads /proc/net/tcp{,6} (the client's uid)",
    (
        "server/access.py",
        ".stat",
    ): "permission bits only (may the client read this?); the read itself goes through "
    "safedir, which refuses symlinked components",
    ("server/access.py", "os.lstat"): "permission bits only, as above",
    ("server/app.py", ".unlink"): "the operator's configured unix socket path",
    ("server/app.py", ".stat"): "the operator's configured unix socket path",
    ("server/app.py", ".mkdir"): "the operator's configured unix socket directory",
    ("server/app.py", "os.lstat"): "the operator's configured unix socket path",
    ("server/app.py", ".chmod"): "the operator's configured unix socket path",
    ("server/logs.py", "open()"): "wraps an fd the reader opened through safedir (sendfile)",
    (
        "daemon/workers.py",
        "os.lstat",
    ): "the size hint compares device, inode and size with the trigger a safedir walk "
    "noted; it only decides whether to schedule a step, which walks again",
    (
        "server/logs.py",
        ".lstat",
    ): "a follower's wake-up signature (identity, size, mtime): nothing is read or served "
    "through it",
    (
        "server/nodelog/files.py",
        "os.open",
    ): "node log query: its own confinement to logDir (realpath + O_NOFOLLOW, tested)",
    ("server/nodelog/files.py", "os.path.realpath"): "node log query confinement to logDir",
    ("server/nodelog/files.py", "os.scandir"): "node log query listing of logDir",
}

# --- end of the readers branch section ---


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_safedir_factory(node: ast.expr | None) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = ast.unparse(node.func)
    return any(name == f or (f.startswith(".") and name.endswith(f)) for f in _SAFEDIR_FACTORIES)


def _safedir_names(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names: set[str] = set()
    for arg in (*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs):
        if arg.annotation is not None and "SafeDir" in ast.unparse(arg.annotation):
            names.add(arg.arg)
    for node in ast.walk(func):
        if (
            isinstance(node, ast.withitem)
            and _is_safedir_factory(node.context_expr)
            and isinstance(node.optional_vars, ast.Name)
        ):
            names.add(node.optional_vars.id)
        if isinstance(node, ast.Assign) and _is_safedir_factory(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and "SafeDir" in ast.unparse(node.annotation)
        ):
            names.add(node.target.id)
    return names


def file_calls(source: str) -> Counter[str]:
    """The path-based file operations in `source`, by kind (`os.open`, `.iterdir`, ...)."""
    tree = ast.parse(source)
    found: Counter[str] = Counter()
    scopes: list[tuple[ast.AST, set[str]]] = [(tree, set())]
    scopes += [
        (f, _safedir_names(f))
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    seen: set[int] = set()
    for scope, safe in reversed(scopes):  # innermost functions first
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call) or id(node) in seen:
                continue
            seen.add(id(node))
            f = node.func
            if isinstance(f, ast.Name) and f.id == "open":
                found["open()"] += 1
            elif isinstance(f, ast.Attribute):
                owner = _dotted(f.value)
                if f.attr in MODULE_CALLS.get(owner, ()):
                    found[f"{owner}.{f.attr}"] += 1
                elif owner not in MODULE_CALLS and f.attr in PATH_METHODS:
                    if f.attr in SAFEDIR_METHODS and owner in safe:
                        continue
                    found[f".{f.attr}"] += 1
    return found


def test_the_scanner_finds_what_it_must() -> None:
    sample = """
import os
from pathlib import Path
def bad(path, d: SafeDir):
    os.open(path, os.O_RDONLY)
    open(path)
    Path(path).read_bytes()
    os.path.realpath(path)
    path.unlink()
    d.unlink("x")
    with open_stream_dir(info) as sd:
        sd.rename("a", "b")
        sd.unlink("c")
        other.rename("a", "b")
"""
    assert file_calls(sample) == Counter(
        {
            "os.open": 1,
            "open()": 1,
            ".read_bytes": 1,
            "os.path.realpath": 1,
            ".unlink": 1,
            ".rename": 1,
        }
    )


def test_every_file_operation_goes_through_safedir_or_is_allowed() -> None:
    allowed = ALLOWED
    problems = []
    used: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module == DOOR:
            continue
        for call in file_calls(path.read_text()):
            if (module, call) in allowed:
                used.add((module, call))
            else:
                problems.append(
                    f"{module}: {call} by path (use fileio.safedir, or add it to "
                    "ALLOWED with the reason it never reaches a volume file)"
                )
    assert problems == [], "\n".join(problems)
    stale = sorted(set(allowed) - used)
    assert stale == [], f"allowlist entries no longer needed: {stale}"
    assert all(reason.strip() for reason in allowed.values())
