"""An offset follower of the active file (`tail -F`, the stand-in for Fluent Bit `tail`
and Vector `file`) goes on undisturbed across punch rotations: with the default
`collapse: never` the file never shrinks, so it never takes a rotation for a truncation
(which re-reads: duplicates, a backward jump, a start mid-event)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from logvold.fileio.rotator import StreamRotator
from tests.integration.rotator_kit import make_info, start_writer, whole_stream
from tests.support.events import event_stream, split_raw, verify

COUNT = 12000
MAX_SIZE = 8 * 1024


def _wait(cond: object, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.skipif(shutil.which("tail") is None, reason="coreutils tail is part of Debian")
def test_tail_F_across_100_punch_rotations(tmp_path: Path) -> None:
    active = tmp_path / "app.log"
    active.touch()
    out = tmp_path / "tail.out"
    err = tmp_path / "tail.err"
    with out.open("wb") as o, err.open("wb") as e:
        tail = subprocess.Popen(
            ["tail", "-F", "-c", "+1", "-s", "0.05", str(active)], stdout=o, stderr=e
        )
    rot = StreamRotator(make_info(tmp_path, max_size_bytes=MAX_SIZE, max_files=0))
    assert rot.policy.collapse == "never"  # the default this test is about
    writer = start_writer(active, count=COUNT, rate=400, max_chunk=2048)
    rotations = 0
    sizes_seen: list[int] = []
    try:
        while writer.poll() is None or rot.needs_rotation() is not None:
            if rot.needs_rotation() is None:
                time.sleep(0.005)
                continue
            # Punch frees bytes the follower has read: wait until tail has everything that
            # is about to be cut. (A follower that lags behind a punch reads the hole as NUL
            # bytes: documented; not what this test is about.)
            size = active.stat().st_size
            _wait(lambda size=size: out.stat().st_size >= size, "tail to catch up")
            if rot.rotate("size") is not None:
                rotations += 1
            sizes_seen.append(active.stat().st_size)
        assert writer.wait() == 0
        final_size = active.stat().st_size
        _wait(lambda: out.stat().st_size >= final_size, "tail to read the last event")
    finally:
        tail.terminate()
        tail.wait()
    assert rotations >= 100, rotations
    assert sizes_seen == sorted(sizes_seen)  # the apparent size never went back
    tailed = out.read_bytes()
    assert b"\0" not in tailed
    assert b"truncated" not in err.read_bytes()  # tail never saw a truncation
    report = verify(split_raw([tailed], b"\n\n"), expected=range(COUNT))
    assert report.ok, report.summary()
    assert report.seen == COUNT  # every event exactly once: 0 lost, 0 duplicated
    written = sum(len(ev) for ev in event_stream(COUNT, seed=1, delimiter=b"\n\n"))
    assert tailed == b"".join(event_stream(COUNT, seed=1, delimiter=b"\n\n"))
    assert len(tailed) == written
    # ... and logvold's own view (segments + active file) holds the same events once.
    assert whole_stream(tmp_path) == tailed
    assert os.stat(active).st_blocks * 512 <= MAX_SIZE + 8 * 4096
