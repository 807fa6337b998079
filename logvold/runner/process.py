"""Run the child: spawn it, forward termination signals, pump its output into the writer.

Stream plumbing mirrors the shell forms kube-log-runner replaces: without a log
file the child inherits our stdout (and stderr, or stdout for `2>&1`); with
one, stdout and a redirected stderr share ONE pipe, so their relative order
is exactly what `1>>file 2>&1` would give; cri / json-file read the two
streams on separate pipes so each line keeps its stream name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Literal, NoReturn

from logvold.core.log_policy import LogPolicy
from logvold.errors import StartError, StreamError

if TYPE_CHECKING:
    from logvold.fileio.rotating_writer import RotatingWriter

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
CHUNK_BYTES = 1 << 20
"""Largest read or splice; also the pipe capacity we ask for (Linux pipe-max-size default)."""
DRAIN_IDLE_S = 1.0
"""After the child exits, how long a silent pipe still held open (by a grandchild) is waited on."""
_F_SETPIPE_SZ = 1031
_POLL_IDLE_MS = 250
EPISODE_END_BYTES = CHUNK_BYTES
"""A failure episode (reported once) ends when this much was written after its last
failure: a write that fits only because the file was cut back to its last whole
event (a few bytes freed) does not end it."""
_SPLICE_BURST = 16
"""Splices in a row without a poll while each one fills what it asked for (each checks
the time triggers itself; the flush timer and idle checks wait at most one burst)."""


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What `logvold run` was asked to do (flags already validated)."""

    argv: tuple[str, ...]
    log_file: str = ""
    """"" = no file: output goes to our stdout, like kube-log-runner."""
    also_stdout: bool = False
    redirect_stderr: bool = True
    flush_interval_s: float = 0.0
    """fsync the log file this often; 0 = never (the kernel writes it back)."""
    copy: Literal["read", "splice"] = "read"
    """How raw output reaches the file: read into a buffer and write(2) it, or splice(2).

    read is the default because it measured faster and no more costly
    (benchmarks/runner.py, 2 CPUs, 512 MiB): splice holds the pipe's lock while the
    file system takes the bytes, so the child spins or waits to write its next chunk
    (1Mi segments: 1538 MB/s and 0.32 CPU s read, 1317 MB/s and 0.35 s spliced), and
    framing a spliced segment's end costs a read-back of its tail and a peek per cut
    (100Ki: 683 MB/s read, 402 spliced)."""
    policy: LogPolicy


def run(opts: RunOptions) -> int:
    """Run the command to completion; return its exit status (128+N if killed by signal N).

    Raises StartError when the command cannot be started and StreamError when
    the log file cannot be opened; output written before the child exits is
    always in the file when this returns.
    """
    with _forwarding_signals() as forwarder:
        if not opts.log_file:
            child = _spawn(opts.argv, stdout=None, stderr=1 if opts.redirect_stderr else None)
            forwarder.attach(child)
            return _exit_status(_wait(child))
        from logvold.fileio.rotating_writer import RotatingWriter  # only with a log file

        writer = RotatingWriter(opts.log_file, opts.policy, sync_segments=opts.flush_interval_s > 0)
        try:
            return _run_to_file(opts, writer, forwarder)
        finally:
            writer.close()


def _run_to_file(opts: RunOptions, writer: RotatingWriter, forwarder: _Forwarder) -> int:
    if (
        not writer.rotates
        and opts.policy.format == "raw"
        and not opts.also_stdout
        and not opts.flush_interval_s
    ):
        # Nothing will ever be cut: the child appends to the file itself, exactly
        # like `cmd 1>>file 2>&1` (and kube-log-runner), at no cost per byte.
        fd = writer.fileno()
        child = _spawn(opts.argv, stdout=fd, stderr=fd if opts.redirect_stderr else None)
        forwarder.attach(child)
        return _exit_status(_wait(child))
    streams: dict[int, str] = {}
    child_ends: list[int] = []
    try:
        out_r, out_w = _pipe()
        streams[out_r] = "stdout"
        child_ends.append(out_w)
        err_w: int | None = out_w if opts.redirect_stderr else None
        if opts.redirect_stderr and opts.policy.format != "raw":
            err_r, err_w = _pipe()
            streams[err_r] = "stderr"
            child_ends.append(err_w)
        child = _spawn(opts.argv, stdout=out_w, stderr=err_w)
    except BaseException:
        for fd in [*streams, *child_ends]:
            os.close(fd)
        raise
    for fd in child_ends:
        os.close(fd)
    forwarder.attach(child)
    try:
        pump(streams, writer, child, opts)
    finally:
        for fd in streams:
            with contextlib.suppress(OSError):
                os.close(fd)
    return _exit_status(_wait(child))


def pump(
    streams: dict[int, str],
    writer: RotatingWriter,
    child: subprocess.Popen[bytes],
    opts: RunOptions,
) -> None:
    """Move bytes from the pipes to the writer (and our stdout with -also-stdout) until
    every pipe is at end of input, or the child is gone and the pipes stay silent.

    Closes each pipe at its end and removes it from `streams`, so the caller
    closes only what is left (never a number the writer has since reused).
    """
    tee_fd: int | None = 1 if opts.also_stdout else None
    zero_copy = tee_fd is None and len(streams) == 1 and opts.copy == "splice"
    # Raw bytes are written from where they were read: one buffer for every read, no
    # fresh 1 MiB object (and its page faults) per chunk. cri / json-file encode the
    # chunk into new bytes anyway.
    buffer = bytearray(CHUNK_BYTES) if opts.policy.format == "raw" and not zero_copy else None
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
        if zero_copy:
            # Splice until the pipe is empty rather than poll before every splice.
            os.set_blocking(fd, False)
    open_fds = streams  # shared with the caller: what is closed here leaves it
    flush_every = opts.flush_interval_s
    next_flush = time.monotonic() + flush_every if flush_every else None
    child_gone_at: float | None = None
    last_data = time.monotonic()
    write_failed = False
    written_since_failure = 0
    while open_fds:
        timeout_s = _POLL_IDLE_MS / 1000
        period_s = writer.seconds_to_next_period()
        if period_s is not None:
            timeout_s = min(timeout_s, period_s + 0.001)
        if next_flush is not None:
            timeout_s = min(timeout_s, max(0.0, next_flush - time.monotonic()))
        ready = poller.poll(int(timeout_s * 1000) + 1)
        now = time.monotonic()
        for fd, _events in ready:
            try:
                if zero_copy:
                    moved = _splice_burst(writer, fd)
                elif buffer is not None:
                    moved = os.readv(fd, [buffer])
                    if moved and tee_fd is not None:
                        tee_fd = _tee(tee_fd, memoryview(buffer)[:moved])
                    writer.write(open_fds[fd], buffer, moved)
                else:
                    data = os.read(fd, CHUNK_BYTES)
                    moved = len(data)
                    if data and tee_fd is not None:
                        tee_fd = _tee(tee_fd, data)
                    writer.write(open_fds[fd], data)
                written_since_failure += max(moved, 0)
                if written_since_failure >= EPISODE_END_BYTES:
                    write_failed = False
            except StreamError as exc:
                # Keep the workload running: report once per failure episode, drop
                # this chunk (the disk is full or gone) and try again with the next.
                if not write_failed:
                    os.write(2, f"logvold run: {exc}; output is being dropped\n".encode())
                write_failed = True
                written_since_failure = 0
                moved = _drop(fd, writer) if zero_copy else 1
            if moved == 0:
                poller.unregister(fd)
                os.close(fd)
                del open_fds[fd]
            elif moved > 0:
                last_data = now
        try:
            writer.tick()
            if next_flush is not None and now >= next_flush:
                writer.flush()
                next_flush = now + flush_every
        except StreamError as exc:
            os.write(2, f"logvold run: {exc}\n".encode())
        if not ready and child_gone_at is None and child.poll() is not None:
            child_gone_at = now
        if child_gone_at is not None and now - max(last_data, child_gone_at) >= DRAIN_IDLE_S:
            break  # the child is gone; a descendant keeps the pipe open but silent


def _splice_burst(writer: RotatingWriter, fd: int) -> int:
    """Splice from non-blocking pipe `fd` while each call moves all it asked for (the
    size trigger's splice stops short of a full chunk, and the peek for the event end
    follows without a poll), up to _SPLICE_BURST times: bytes moved, 0 at end of
    input, -1 when it held nothing (a spurious wake-up). A call that moved less emptied
    the pipe: back to poll, not to a splice that fails with EAGAIN."""
    total = 0
    for _ in range(_SPLICE_BURST):
        try:
            moved = writer.splice_from(fd, CHUNK_BYTES)
        except BlockingIOError:
            break
        if moved == 0:
            return total  # the end: the next poll reports it again and it is closed then
        total += moved
        if writer.drained:
            break
    return total or -1


def _drop(fd: int, writer: RotatingWriter) -> int:
    """Read and discard a chunk the file could not take: bytes read, 0 at end, -1 if none.
    The writer hears of what was dropped (writer.dropped): an empty pipe dropped nothing,
    so an event a partial splice left half-written stays - its rest is still to come."""
    try:
        data = os.read(fd, CHUNK_BYTES)
    except BlockingIOError:
        return -1
    writer.dropped(data)
    return len(data)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once stdout and stderr are flushed, skipping the
    interpreter's teardown of every imported module (~10 ms, counted in every short
    job's run time, and waited for by a shim that runs the driver): by now the child
    is reaped and the log file closed. For `run`, `kube-log-runner` and the driver."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _tee(fd: int, data: bytes | memoryview) -> int | None:
    """Copy to our stdout; a closed stdout stops the copy but never the log file."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.EBADF):
            return None
        raise
    return fd


def widen_pipe(fd: int) -> None:
    """Ask for a CHUNK_BYTES pipe: fewer, larger reads. Best effort (64 KiB also works)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK_BYTES)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    widen_pipe(r)
    return r, w


def _spawn(
    argv: Sequence[str], *, stdout: int | None, stderr: int | None
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(list(argv), stdout=stdout, stderr=stderr, close_fds=True)
    except FileNotFoundError as exc:
        raise StartError(
            f"cannot start {argv[0]!r}: no such file or command (checked PATH)", exit_code=127
        ) from exc
    except PermissionError as exc:
        raise StartError(f"cannot start {argv[0]!r}: permission denied", exit_code=126) from exc
    except OSError as exc:
        raise StartError(f"cannot start {argv[0]!r}: {exc.strerror or exc}", exit_code=126) from exc


def _wait(child: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Forwarder:
    """Signal handlers that pass SIGTERM/INT/HUP/QUIT on to the child (queued until it exists)."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._pending: list[int] = []

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._child is None:
            self._pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            self._child.send_signal(signum)

    def attach(self, child: subprocess.Popen[bytes]) -> None:
        self._child = child
        for signum in self._pending:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
        self._pending.clear()


@contextlib.contextmanager
def _forwarding_signals() -> Iterator[_Forwarder]:
    """Forward the termination signals while the child runs; ignore them afterwards.

    Never restores the previous (default) handlers: `run` returns only for the
    process to exit with the child's status, and a SIGTERM landing between a
    restore and the exit - a supervisor signalling as the child's pipes close -
    would kill the runner (-15) instead. SIG_IGN, unlike a Python handler, also
    survives the interpreter's shutdown, which resets Python-level handlers to
    the default action.
    """
    forwarder = _Forwarder()
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forwarder.handle)
    try:
        yield forwarder
    finally:
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
