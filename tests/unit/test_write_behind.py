"""Write-behind (fileio.write_behind) through the RotatingWriter: a write the thread
cannot finish is raised as StreamError by the caller's next write, flush or close,
never dropped silently. The failing file is real: a child process with RLIMIT_FSIZE
and SIGXFSZ ignored gets EFBIG from write(2) past the limit (the limit would break
the test runner itself, hence the child)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from logvold.fileio.write_behind import WriteBehind

_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from logvold.core.policy import LogPolicy
    from logvold.errors import StreamError
    from logvold.fileio.rotating_writer import RotatingWriter

    path, fmt, mode, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    policy = LogPolicy(format=fmt, max_size_bytes=0, max_files=0)
    w = RotatingWriter(path, policy, background=False, write_behind=True)
    assert w._behind is not None, "write-behind is on for a regular file"
    raised = []
    chunk = b"".join(b'line %06d "quoted" \\\\ tab\\t\\n' % i for i in range(2000))
    calls = 0
    def attempt(name, fn):
        try:
            fn()
        except StreamError as exc:
            raised.append([name, str(exc)])
    if mode == "writes":
        while not raised and calls < 200:
            calls += 1
            attempt("write", lambda: w.write("stdout", chunk))
        attempt("close", w.close)
    elif mode == "flush":
        attempt("write", lambda: w.write("stdout", chunk))
        attempt("flush", w.flush)
        attempt("close", w.close)
    else:
        attempt("write", lambda: w.write("stdout", chunk))
        attempt("close", w.close)
    print(json.dumps({"raised": raised, "calls": calls, "size": w.size_bytes}))
    """
)


def _run_child(tmp_path: Path, fmt: str, mode: str, limit: int) -> dict[str, object]:
    path = tmp_path / "app.log"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), fmt, mode, str(limit)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, object] = json.loads(proc.stdout)
    assert path.stat().st_size == limit  # written up to the limit, not a byte past it
    return result


@pytest.mark.parametrize("fmt", ["cri", "json-file"])
def test_a_failed_write_is_raised_by_a_later_write(tmp_path: Path, fmt: str) -> None:
    result = _run_child(tmp_path, fmt, "writes", 256 * 1024)
    raised = result["raised"]
    assert isinstance(raised, list)
    # First by a write(); the chunk that write queued fails too and close() says so.
    assert [name for name, _ in raised] in (["write"], ["write", "close"]), raised
    assert all("File too large" in msg and "app.log" in msg for _, msg in raised)
    # The chunk that raised is the one after the failing one, or the failing one itself.
    assert isinstance(result["calls"], int) and result["calls"] >= 2


@pytest.mark.parametrize("mode", ["flush", "close"])
def test_a_failed_last_write_is_raised_by_flush_or_close(tmp_path: Path, mode: str) -> None:
    """One chunk past the limit: the error comes out of write() if the thread failed
    already, else out of the flush()/close() that waits for it - exactly once."""
    result = _run_child(tmp_path, "json-file", mode, 4096)
    raised = result["raised"]
    assert isinstance(raised, list)
    assert len(raised) == 1, raised
    assert raised[0][0] in ("write", mode)
    assert "File too large" in raised[0][1]
    assert result["size"] == 4096  # what was not written is not counted


def test_jobs_run_in_order_and_a_bad_fd_is_reported(tmp_path: Path) -> None:
    """Writes and calls run in FIFO order; EBADF (an fd closed under it) is kept for
    take_error, and later jobs still run."""
    path = tmp_path / "f"
    order: list[str] = []
    behind = WriteBehind()
    with path.open("wb") as f:
        for i in range(50):
            behind.write(f.fileno(), b"%d\n" % i)
        behind.call(lambda: order.append("after writes"))
        behind.drain()
        assert path.read_bytes() == b"".join(b"%d\n" % i for i in range(50))
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    behind.write(w, b"lost")
    behind.call(lambda: order.append("still runs"))
    behind.stop()
    failure = behind.take_error()
    assert failure is not None
    assert failure.error.errno == 9  # EBADF
    assert failure.lost == 4
    assert behind.take_error() is None  # reported once
    assert order == ["after writes", "still runs"]
