"""`logvold run` on a full disk: the command keeps running, the chunk that cannot be
written is dropped (reported once per episode), and the file keeps whole events only -
the event the failure cut is removed from the file and the rest of it is not written
after the space returns - so every event written after the disk frees up is whole and
found once, in order, across the segments."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_runner_integrity import ENV, REPO, RUNNER, stream_pieces
from tests.integration.test_runner_signals import wait_for
from tests.support.events import split_raw, verify
from tests.support.small_fs import free_bytes, mounted_tmpfs

BEFORE, AFTER = 6000, 3000
# Phase 1 fills the disk; the child then waits for `go` (made once the test freed the
# space) and writes phase 2. tests.support.writer writes checksummed events in chunks of
# up to 8 KiB, so a failing write usually ends inside an event.
CHILD = """
import os, subprocess, sys, time
done, go = sys.argv[1], sys.argv[2]
writer = [sys.executable, "-m", "tests.support.writer", "--max-chunk", "8192"]
subprocess.run([*writer, "--count", str(BEFORE)], check=True)
open(done, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
subprocess.run([*writer, "--count", str(AFTER), "--start", str(BEFORE)], check=True)
""".replace("BEFORE", str(BEFORE)).replace("AFTER", str(AFTER))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path, "4m") as mnt:
        yield mnt


@pytest.mark.root
@pytest.mark.parametrize("copy", ["read", "splice"])
def test_a_full_disk_drops_chunks_but_never_leaves_a_cut_event(
    small_fs: Path, tmp_path: Path, copy: str
) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (free_bytes(small_fs) - 192 * 1024))
    log = small_fs / "app.log"
    done, go = tmp_path / "phase1-done", tmp_path / "go"
    runner = subprocess.Popen(
        [*RUNNER, f"-log-file={log}", "-log-file-size=64Ki", f"-copy={copy}",
         sys.executable, "-c", CHILD, str(done), str(go)],
        env=ENV, cwd=REPO, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(done.exists, timeout_s=60)
        filler.unlink()
        go.touch()
        _, stderr = runner.communicate(timeout=120)
    finally:
        runner.kill()
    assert runner.returncode == 0, stderr
    assert b"No space left on device" in stderr, stderr
    # Reported per episode, not per dropped chunk (a cut-back frees a few bytes, so a
    # following write may fit and end an episode: a handful, never hundreds).
    assert 1 <= stderr.count(b"output is being dropped") <= 10, stderr
    pieces = stream_pieces(log)
    for name, body in pieces[:-1]:
        assert not body or body.endswith(b"\n"), f"{name} ends inside an event"
    report = verify(split_raw(d for _, d in pieces), expected=range(BEFORE, BEFORE + AFTER))
    # Phase 1 lost what did not fit; nothing cut, doubled or reordered anywhere.
    assert not report.corrupt, report.summary()
    assert not report.duplicated and not report.out_of_order, report.summary()
    assert report.lost == [], report.summary()
    assert report.first_seq == 0 and report.seen < BEFORE + AFTER, report.summary()
