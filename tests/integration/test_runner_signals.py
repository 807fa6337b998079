"""Signals reach the child, exit statuses come back as a shell reports them, and bad
input gets a clear message with no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.events import split_raw, verify

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
RUNNER = [sys.executable, "-m", "logvold", "run"]

# Reports the signal it got on stdout, then exits 7: proves the runner forwarded it.
TRAPPER = """
import os, signal, sys
def got(signum, frame):
    os.write(1, b"got %d\\n" % signum)
    os._exit(7)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, got)
os.write(1, b"ready\\n")
while True:
    signal.pause()
"""


def wait_for(predicate: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*RUNNER, *args], env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name
)
def test_signal_is_forwarded_and_child_status_returned(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "app.log"
    proc = start([f"-log-file={log}", sys.executable, "-c", TRAPPER])
    wait_for(lambda: log.exists() and b"ready\n" in log.read_bytes())
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 7, err
    assert log.read_bytes() == b"ready\ngot %d\n" % sig
    assert out == b"" and b"Traceback" not in err


def test_child_killed_by_signal_is_128_plus_n(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    proc = start([f"-log-file={log}", "sh", "-c", "echo up; exec sleep 30"])
    wait_for(lambda: log.exists() and log.read_bytes() == b"up\n")
    proc.send_signal(signal.SIGTERM)  # forwarded; sleep dies of it
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM
    killed = subprocess.run([*RUNNER, "sh", "-c", "kill -KILL $$"], env=ENV, check=False)
    assert killed.returncode == 128 + signal.SIGKILL


def test_silent_grandchild_holding_the_pipe_does_not_keep_the_runner(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    t0 = time.monotonic()
    done = subprocess.run(
        [*RUNNER, f"-log-file={log}", "-log-file-size=1Mi", "sh", "-c", "sleep 60 & echo bye"],
        env=ENV,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == b""
    assert time.monotonic() - t0 < 30  # exits ~1 s after its child, not with the 60 s sleep
    assert log.read_bytes() == b"bye\n"


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code_is_the_childs(code: int) -> None:
    done = subprocess.run([*RUNNER, "sh", "-c", f"exit {code}"], env=ENV, check=False)
    assert done.returncode == code


def test_output_up_to_exit_is_never_lost(tmp_path: Path) -> None:
    """A child that writes fast and is stopped by SIGTERM mid-stream: every event it
    wrote is in the file, and the runner exits only after it."""
    log = tmp_path / "app.log"
    child = [sys.executable, "-m", "tests.support.writer", "--count", "200000", "--rate", "2000"]
    proc = start([f"-log-file={log}", "-log-file-size=64Ki", *child])
    wait_for(lambda: len(list(tmp_path.iterdir())) >= 3)  # two segments cut
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM
    data = (
        b"".join(p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.name != "app.log")
        + log.read_bytes()
    )
    events = list(split_raw([data]))
    if not data.endswith(b"\n"):
        events.pop()  # the child died mid-write: its last event is partial in the pipe too
    report = verify(events)
    assert report.ok and report.seen > 100, report.summary()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["-bogus", "true"], 2, b"flag provided but not defined: -bogus"),
        (["-log-file-age=7d", "true"], 2, b'invalid value "7d" for flag -log-file-age'),
        (["-log-file-size=ten", "true"], 2, b'invalid value "ten" for flag -log-file-size'),
        (["-format=cri", "-delimiter=\\n\\n", "true"], 2, b"-delimiter must be"),
        (["-log-file=/tmp/x"], 2, b"not enough arguments to run"),
        ([], 2, b"not enough arguments to run"),
        (["no-such-command-xyz"], 127, b"cannot start 'no-such-command-xyz'"),
        (["{tmp}/data.txt"], 126, b"data.txt': permission denied"),
        (["-log-file=/etc/hostname/app.log", "true"], 1, b"cannot open log file"),
    ],
    ids=[
        "unknown-flag",
        "go-duration",
        "quantity",
        "cri-delimiter",
        "no-command",
        "nothing",
        "not-found",
        "not-executable",
        "unwritable-log",
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], status: int, message: bytes) -> None:
    (tmp_path / "data.txt").write_text("not a program\n")  # mode 0644: no exec bit
    args = [a.format(tmp=tmp_path) for a in args]
    done = subprocess.run([*RUNNER, *args], env=ENV, capture_output=True, check=False, timeout=30)
    assert done.returncode == status
    assert message in done.stderr
    assert b"Traceback" not in done.stderr
    assert done.stdout == b""


def test_help_prints_go_usage() -> None:
    done = subprocess.run([*RUNNER, "-h"], env=ENV, capture_output=True, check=False)
    assert done.returncode == 0
    assert done.stderr.startswith(b"Usage of logvold run:\n  -also-stdout\n")
    assert b"  -redirect-stderr\n    \ttreat stderr same as stdout (default true)\n" in done.stderr
