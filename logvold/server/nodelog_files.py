"""Plain log files for the node log query: confined opening, tail and pattern filter, listing.

Sync and blocking (the handler runs it in a worker thread). Never reads a whole file: forward in
fixed blocks, tails backwards in fixed blocks, memory bounded by the response byte cap.
"""

from __future__ import annotations

import contextlib
import errno
import html
import os
import stat
import time
import urllib.parse
from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

BLOCK_BYTES = 64 * 2**10
"""Read size forwards and backwards."""
MAX_LINE_BYTES = 2**20
"""A line longer than this (no newline in sight) is matched and sent in pieces of this size."""


class LineMatcher(Protocol):
    """What the reader needs of a compiled pattern (an RE2 object over bytes)."""

    def search(self, text: bytes) -> object: ...


class FileQueryError(Exception):
    """A log file that cannot be served; `missing` tells "not there" from other refusals."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class DeadlineExceeded(Exception):
    """The query's deadline passed while reading a file."""


@dataclass(frozen=True)
class OpenedLog:
    """An open file descriptor inside the log dir, and what it is."""

    fd: int
    path: str
    """Real path, for messages."""
    is_dir: bool


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def open_in_log_dir(log_dir: str, name: str) -> OpenedLog:
    """Open `name` (relative; a leading `/` is the log dir) with every symlink resolved inside it.

    Raises FileQueryError if it does not exist, escapes the log dir (`..`, a symlink out) or is
    neither a regular file nor a directory. The check is repeated on the opened descriptor, so
    a path swapped for a symlink between check and open is still refused.
    """
    try:
        root = os.path.realpath(log_dir, strict=True)
        real = os.path.realpath(f"{root}/{name.lstrip('/')}")
    except (OSError, ValueError) as exc:
        missing = isinstance(exc, FileNotFoundError)
        raise FileQueryError(f"cannot resolve {name!r}: {exc}", missing=missing) from exc
    if not _inside(root, real):
        raise FileQueryError(f"{name!r} resolves outside the log directory {log_dir}")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)
        reason = "no such file" if missing else os.strerror(exc.errno or 0)
        raise FileQueryError(f"{name!r}: {reason}", missing=missing) from exc
    try:
        opened = os.path.realpath(f"/proc/self/fd/{fd}")
        if opened.startswith("/") and not _inside(root, opened):
            raise FileQueryError(f"{name!r} resolves outside the log directory {log_dir}")
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise FileQueryError(f"{name!r} is not a regular file")
        # Back to blocking reads: O_NONBLOCK only kept a FIFO from hanging the open.
        os.set_blocking(fd, True)
        return OpenedLog(fd=fd, path=real, is_dir=stat.S_ISDIR(mode))
    except BaseException:
        os.close(fd)
        raise


def open_service_log(log_dir: str, service: str) -> OpenedLog | None:
    """The kubelet's heuristics: `<dir>/<svc>`, `<dir>/<svc>.log`, `<dir>/<svc>/<svc>.log`.

    The first regular file wins; a directory or a missing or escaping path tries the next.
    None when none exists. Other errors (permissions) raise FileQueryError.
    """
    for candidate in (service, f"{service}.log", f"{service}/{service}.log"):
        try:
            opened = open_in_log_dir(log_dir, candidate)
        except FileQueryError as exc:
            if exc.missing or "outside the log directory" in str(exc):
                continue
            raise
        if not opened.is_dir:
            return opened
        os.close(opened.fd)
    return None


def _check(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise DeadlineExceeded


def iter_forward(
    fd: int, matcher: LineMatcher | None, deadline: float
) -> Generator[bytes, None, None]:
    """The file from its start in chunks; with a matcher only the lines that match.

    Closes `fd` when exhausted or closed. A last line without a newline is kept as it is.
    """
    with os.fdopen(fd, "rb", buffering=0) as f:
        pending = b""
        while True:
            _check(deadline)
            block = f.read(BLOCK_BYTES)
            if not block:
                break
            if matcher is None:
                yield block
                continue
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            out = [line + b"\n" for line in lines if matcher.search(line) is not None]
            while len(pending) > MAX_LINE_BYTES:
                piece, pending = pending[:MAX_LINE_BYTES], pending[MAX_LINE_BYTES:]
                if matcher.search(piece) is not None:
                    out.append(piece)
            if out:
                yield b"".join(out)
        if pending and (matcher is None or matcher.search(pending) is not None):
            yield pending


@dataclass
class Tail:
    """The last lines of a file, oldest first, and whether older matching lines were left out."""

    lines: list[bytes]
    truncated: bool


def read_tail(
    fd: int, count: int, matcher: LineMatcher | None, deadline: float, max_bytes: int
) -> Tail:
    """The last `count` lines (matching lines, with a matcher), reading backwards in blocks.

    Holds at most `max_bytes` of lines: when the wanted lines do not fit, the newest that do
    are returned with `truncated` set. Closes `fd`.
    """
    newest_first: list[bytes] = []
    held = 0
    with os.fdopen(fd, "rb", buffering=0) as f:
        pos = os.fstat(f.fileno()).st_size
        if count <= 0 or pos == 0:
            return Tail([], truncated=False)
        f.seek(pos - 1)
        # A final newline ends the newest line; without one the newest line is sent as it is.
        terminator = b"\n" if f.read(1) == b"\n" else b""
        if terminator:
            pos -= 1
        carry = b""  # the newest line whose start is not found yet, without its newline
        while True:
            _check(deadline)
            at_start = pos == 0
            if at_start:
                complete = [carry]
            else:
                start = max(0, pos - BLOCK_BYTES)
                f.seek(start)
                parts = (f.read(pos - start) + carry).split(b"\n")
                pos = start
                carry = parts[0]
                complete = parts[1:]
            for line in reversed(complete):
                if matcher is None or matcher.search(line) is not None:
                    out = line + terminator
                    if held + len(out) > max_bytes:
                        return Tail(newest_first[::-1], truncated=True)
                    newest_first.append(out)
                    held += len(out)
                    if len(newest_first) == count:
                        return Tail(newest_first[::-1], truncated=False)
                terminator = b"\n"
            if at_start:
                return Tail(newest_first[::-1], truncated=False)
            if len(carry) > max_bytes:
                return Tail(newest_first[::-1], truncated=True)


def listing_html(fd: int) -> bytes:
    """A directory listing shaped like Go's http.FileServer (what the kubelet serves): names
    sorted, directories with a trailing `/`, in a `<pre>` of links. Closes `fd`."""
    try:
        names = []
        with contextlib.suppress(OSError), os.scandir(fd) as entries:
            for entry in entries:
                is_dir = False
                with contextlib.suppress(OSError):
                    is_dir = entry.is_dir(follow_symlinks=True)
                names.append(entry.name + ("/" if is_dir else ""))
    finally:
        os.close(fd)
    rows = []
    for name in sorted(names):
        href = html.escape(urllib.parse.quote(name), quote=True)
        rows.append(f'<a href="{href}">{html.escape(name, quote=False)}</a>\n')
    page = '<!doctype html>\n<meta name="viewport" content="width=device-width">\n<pre>\n'
    return (page + "".join(rows) + "</pre>\n").encode("utf-8", "surrogateescape")
