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
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Protocol

from logvold.errors import DeadlineExceeded as DeadlineExceeded
from logvold.errors import FileQueryError as FileQueryError

BLOCK_BYTES = 64 * 2**10
"""Read size forwards and backwards."""
MAX_LINE_BYTES = 2**20
"""A line longer than this (no newline in sight) is matched and sent in pieces of this size."""


class Match(Protocol):
    def start(self) -> int: ...

    def end(self) -> int: ...


class Matcher(Protocol):
    """What the reader needs of a compiled RE2 pattern over bytes."""

    def search(self, text: bytes, pos: int = ...) -> Match | None: ...

    def finditer(self, text: bytes, pos: int = ...) -> Iterator[Match]: ...


class LineMatcher:
    """Which lines match a pattern, at RE2 speed on whole buffers.

    `line` is the pattern as given, applied to one line (a Python call per line: slow).
    `block`, when given, is the same pattern in multi-line mode, run over a whole buffer: one
    step per match instead of one call per line, and lines without a match cost nothing. It
    matches wherever the per-line pattern does, so no line is missed; see _scan for the rest.
    """

    def __init__(self, line: Matcher, block: Matcher | None) -> None:
        self.line = line
        self.block = block

    def search(self, text: bytes) -> Match | None:
        """Match one line (no newline in `text`)."""
        return self.line.search(text)

    def spans(self, buf: bytes) -> Iterator[tuple[int, int]]:
        """(start, end) of each matching line of `buf`, a run of lines each ending in a newline."""
        if self.block is None:
            start = 0
            while start < len(buf):
                end = buf.index(b"\n", start)
                if self.line.search(buf[start:end]) is not None:
                    yield start, end
                start = end + 1
            return
        pos = 0
        while pos < len(buf):
            pos = yield from self._scan(buf, pos)

    def _scan(self, buf: bytes, pos: int) -> Generator[tuple[int, int], None, int]:
        """Matching lines from `pos` on; returns where to scan again (len(buf) when done).

        A match inside one line proves that line matches (RE2's assertions see a newline
        where a line sees its edge). A match running over a newline proves nothing and may
        have swallowed the start of the next line: re-check its line, then scan afresh.
        """
        assert self.block is not None
        line_start = line_end = -1
        for found in self.block.finditer(buf, pos):
            at, stop = found.start(), found.end()
            if at >= len(buf):
                break
            if at > line_end:  # a new line: (line_start, line_end) is the line holding `at`
                line_start = buf.rfind(b"\n", 0, at) + 1
                line_end = buf.index(b"\n", at)
                if stop <= line_end or self.line.search(buf[line_start:line_end]) is not None:
                    yield line_start, line_end
            if stop > line_end:
                return line_end + 1
        return len(buf)

    def filter(self, lines: list[bytes]) -> tuple[list[bytes], bool]:
        """The matching lines of `lines` (no newlines) and whether the last one is among them."""
        if not lines:
            return [], False
        buf = b"\n".join(lines) + b"\n"
        spans = list(self.spans(buf))
        return [buf[s:e] for s, e in spans], bool(spans) and spans[-1][1] == len(buf) - 1


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
            buf = pending + block
            cut = buf.rfind(b"\n") + 1
            whole, pending = buf[:cut], buf[cut:]
            out = [whole[s : e + 1] for s, e in matcher.spans(whole)]
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
            if matcher is None:
                kept, newest_kept = complete, bool(complete)
            else:
                kept, newest_kept = matcher.filter(complete)
            for i, line in enumerate(reversed(kept)):
                out = line + (terminator if i == 0 and newest_kept else b"\n")
                if held + len(out) > max_bytes:
                    return Tail(newest_first[::-1], truncated=True)
                newest_first.append(out)
                held += len(out)
                if len(newest_first) == count:
                    return Tail(newest_first[::-1], truncated=False)
            if complete:
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
