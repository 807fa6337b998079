"""A termination signal that lands after the child has finished - while `logvold run`
drains the pipe, closes its file, joins its maintenance thread or is already on its
way out - must not kill the runner (-15): it exits with the child's status, and every
event the child wrote is in the files exactly once.

The child ignores the forwarded signals, so its status (3) is the same whenever the
signal lands; a runner that died of SIGTERM would report -15 instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from tests.support.events import decode_cri, split_raw, verify

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
RUNNER = [sys.executable, "-m", "logvold", "run"]
ROUNDS = 20
CHILD_STATUS = 3

# Ignores the forwarded signals, writes COUNT multi-line-free events in random chunks,
# closes its output, then leaves a marker file (the test's "the pipes are closed now")
# and exits with the status it is given.
CHILD = """
import os, random, signal, sys
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
from tests.support.events import chunked, event_stream
count, seed, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for piece in chunked(event_stream(count, seed=seed), random.Random(seed), max_chunk=4096):
    view = memoryview(piece)
    while view:
        view = view[os.write(1, view):]
os.close(1)
os.close(2)
open(marker, "wb").close()
sys.exit(int(sys.argv[4]))
"""


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the child never finished (runner status {proc.returncode})")
        time.sleep(0.002)


def _read_files(log: Path) -> bytes:
    """Every segment, oldest first, then the active file."""
    names = os.listdir(log.parent)
    pieces = [log.parent / s.filename for s in segments_of(log.name, names)]
    return b"".join(p.read_bytes() for p in [*pieces, log] if p.exists())


@pytest.mark.parametrize(
    ("fmt", "sig"),
    [
        ("raw", signal.SIGTERM),
        ("cri", signal.SIGTERM),
        ("raw", signal.SIGINT),
    ],
    ids=["raw-TERM", "cri-TERM", "raw-INT"],
)
def test_signal_after_the_child_finished_keeps_its_status_and_every_event(
    tmp_path: Path, fmt: str, sig: signal.Signals
) -> None:
    statuses = []
    for round_no in range(ROUNDS):
        work = tmp_path / f"r{round_no}"
        work.mkdir()
        log = work / "app.log"
        marker = tmp_path / f"done{round_no}"
        count = 200 + 37 * round_no  # ~35-200 KiB: several 16Ki segments
        proc = subprocess.Popen(
            [
                *RUNNER,
                f"-log-file={log}",
                "-log-file-size=16Ki",
                f"-format={fmt}",
                sys.executable,
                "-c",
                CHILD,
                str(count),
                str(round_no),
                str(marker),
                str(CHILD_STATUS),
            ],
            env=ENV,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(marker, proc)
            # The child's pipes are closed: the signal lands at a different moment each
            # round - at once, while the runner drains or rotates, closes its file, or
            # as the interpreter shuts down (a 0-57 ms sweep).
            time.sleep(round_no * 0.003)
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        statuses.append(proc.returncode)
        assert b"Traceback" not in stderr, stderr
        data = _read_files(log)
        if fmt == "cri":
            bodies = [msg for stream, msg in decode_cri(data.splitlines()) if stream == "stdout"]
        else:
            bodies = list(split_raw([data]))
        report = verify(bodies, expected=range(count))
        assert report.ok and report.seen == count, f"round {round_no}: {report.summary()}"
    assert statuses == [CHILD_STATUS] * ROUNDS, statuses
