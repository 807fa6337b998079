"""`logvold driver`: a containerd `binary://` logger that writes a container's stdout and
stderr through the rotating, event-preserving writer of `logvold run`.

The shim (containerd's NewBinaryIO) starts us with the read ends of the container's
stdout and stderr pipes on fds 3 and 4 and a pipe on fd 5 that the container's start
waits on until we close it; env CONTAINER_ID / CONTAINER_NAMESPACE; the URI's query
pairs as argv. When the task is deleted the shim closes its pipe ends and sends
SIGTERM; we drain what is left and exit 0 (it kills us after 12 s otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, cast

from logvold.core.log_policy import LogPolicy
from logvold.core.raw_framing import RawFramer
from logvold.driver.args import KEYS, MAX_LINE_BYTES, DriverOptions, parse_driver_args
from logvold.errors import LogvoldError, StreamError
from logvold.fileio.rotating_writer import STREAMS, RotatingWriter
from logvold.runner.process import RunOptions, exit_now, pump, widen_pipe

if TYPE_CHECKING:
    import subprocess

STDOUT_FD = 3
STDERR_FD = 4
READY_FD = 5
"""The shim waits for end of input on this pipe before it starts the container."""
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGINT)

USAGE = """\
usage: logvold driver [key value ...]
       logvold-driver [key value ...]   (for ctr run --log-uri binary:///path/to/logvold-driver?k=v)

A containerd binary:// log driver: started by the shim with the container's
stdout on fd 3, stderr on fd 4, a ready pipe on fd 5, and CONTAINER_ID /
CONTAINER_NAMESPACE in the environment. Keys (the URI's query pairs):
"""


class _TaskEnd:
    """Stands in for `logvold run`'s child in the shared pump: "exited" once the shim sent
    SIGTERM, from when the pump drains what is left (to end of input, or until the pipes
    stay silent for the pump's drain interval) and returns."""

    def __init__(self) -> None:
        self.signalled: int | None = None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = signum

    def poll(self) -> int | None:
        return None if self.signalled is None else 0


class _RawWholeEvents(RotatingWriter):
    """format raw: stdout and stderr share one file, so each stream's bytes go in only up
    to its own last event end; an event of one stream never has the other's bytes inside
    (a held tail is bounded by maxEventSize, past which the framer cuts and counts it)."""

    def __init__(self, path: str, policy: LogPolicy, *, sync_segments: bool) -> None:
        super().__init__(path, policy, sync_segments=sync_segments)
        self._tails: dict[str, tuple[RawFramer, bytearray]] = {
            name: (RawFramer(policy.delimiter, policy.max_event_size_bytes), bytearray())
            for name in STREAMS
        }

    def write(self, stream: str, data: bytes | bytearray, stop: int | None = None) -> None:
        framer, held = self._tails[stream]
        n = len(data) if stop is None else stop
        framer.last_boundary(data, n)
        whole = len(held) + n - framer.pending
        if whole <= 0:
            held += memoryview(data)[:n]
            return
        # The held head of the event that crosses into this chunk, then the chunk up to
        # its last event end - written from `data` itself: no copy of the chunk.
        if held:
            super().write(stream, bytes(held))
            whole -= len(held)
            held.clear()
        super().write(stream, data, whole)
        held += memoryview(data)[whole:n]

    def close(self) -> None:
        try:
            for name, (_framer, held) in self._tails.items():
                if held:  # the stream ended inside an event: keep what it wrote
                    super().write(name, bytes(held))
                    held.clear()
        finally:
            super().close()


def main(argv: Sequence[str] | None = None) -> int:
    """`logvold-driver`: the console script a `binary://` URI names (argv = query pairs)."""
    return main_driver(sys.argv[1:] if argv is None else argv, prog="logvold-driver")


def main_driver(argv: Sequence[str], *, prog: str = "logvold driver") -> int:
    """Run the driver protocol and exit the process: 0 after a clean drain, 2 for bad
    pairs, 1 if the file fails.

    Exits without the interpreter's teardown (os._exit, after flushing stdout and
    stderr): the log is closed by then, and tearing down every imported module took
    ~10 ms - while the shim and `ctr task delete` wait for us to exit."""
    exit_now(_main_driver(argv, prog=prog))


def _main_driver(argv: Sequence[str], *, prog: str) -> int:
    # First of all, before anything could spawn a process: none of the shim's
    # descriptors may outlive us in a child (an inherited fd 5 hangs `ctr run`).
    inherited = [fd for fd in (STDOUT_FD, STDERR_FD, READY_FD) if _is_open(fd)]
    for fd in inherited:
        os.set_inheritable(fd, False)
    if list(argv[:1]) in (["-h"], ["--help"]):
        keys = "".join(f"  {key:<15} {text}\n" for key, text in KEYS.items())
        sys.stdout.write(USAGE + keys)
        return 0
    ready = _ReadyPipe(READY_FD in inherited)
    task_end = _TaskEnd()
    for sig in TERMINATING_SIGNALS:
        signal.signal(sig, task_end.handle)
    try:
        try:
            opts = parse_driver_args(argv, os.environ)
        except ValueError as exc:
            sys.stderr.write(f"{prog}: {exc}\n")
            ready.signal()  # never keep the container waiting, even when we give up
            return 2
        if STDOUT_FD not in inherited:
            sys.stderr.write(
                f"{prog}: fd {STDOUT_FD} (the container's stdout) is not open: "
                "containerd's shim starts this program via --log-uri binary://\n"
            )
            ready.signal()
            return 2
        streams = {
            fd: name
            for fd, name in ((STDOUT_FD, "stdout"), (STDERR_FD, "stderr"))
            if fd in inherited
        }
        return run_driver(opts, streams, task_end, ready)
    except LogvoldError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    finally:
        # The shim closes the pipes and then signals, so SIGTERM may land after the
        # drain, as we leave. Ignored, not restored: the interpreter's exit resets
        # Python-level handlers to the default action, which would make it -15.
        for sig in TERMINATING_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def run_driver(
    opts: DriverOptions, streams: dict[int, str], task_end: _TaskEnd, ready: _ReadyPipe
) -> int:
    """Open the log, tell the shim we are ready, pump until end of input or SIGTERM + drain."""
    try:
        try:
            directory = Path(opts.path).parent
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise StreamError(
                f"cannot create {directory}: {exc.strerror}", path=str(directory), op="mkdir"
            ) from exc
        writer = (
            _RawWholeEvents(opts.path, opts.policy, sync_segments=False)
            if opts.policy.format == "raw" and len(streams) > 1
            else RotatingWriter(
                opts.path, opts.policy, sync_segments=False, max_line_bytes=MAX_LINE_BYTES
            )
        )
    except BaseException:
        ready.signal()
        raise
    try:
        for fd in streams:
            widen_pipe(fd)
        # What start-up made lives to the end: out of the collector's sight, so its
        # occasional full passes walk only what the pump allocates (was ~4% of the
        # CPU of a json-file stream).
        gc.freeze()
        ready.signal()
        pump_opts = RunOptions(argv=(), log_file=opts.path, policy=opts.policy)
        # The pump only asks its "child" whether it has exited (poll()).
        pump(streams, writer, cast("subprocess.Popen[bytes]", task_end), pump_opts)
    finally:
        for fd in streams:
            with contextlib.suppress(OSError):
                os.close(fd)
        writer.close()
    return 0


class _ReadyPipe:
    """fd 5: closed once, and only if the shim gave it (else the number may be a file of ours)."""

    def __init__(self, inherited: bool) -> None:
        self._open = inherited

    def signal(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(OSError):
                os.close(READY_FD)


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True
