"""Spare files: the rotating writer's next active files, made ahead on a thread.

Real files in tmp_path (ext4 or tmpfs: both support O_TMPFILE); the named
fallback, used where a file system refuses O_TMPFILE, is forced by its switch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from logvold.core.policy import LogPolicy
from logvold.fileio import spare_files
from logvold.fileio.rotating_writer import RotatingWriter
from logvold.fileio.spare_files import SpareFiles
from tests.support.events import event_stream, split_raw, verify


def _take(spares: SpareFiles, path: str, *, close_fd: int = -1) -> int:
    """A spare, once the thread has made one (polls: no fixed sleep)."""
    deadline = time.monotonic() + 30
    while True:
        fd = spares.take(path, close_fd=close_fd)
        if fd >= 0:
            return fd
        close_fd = -1  # handed over by the first call
        assert time.monotonic() < deadline, "no spare made in 30 s"
        time.sleep(0.01)


@pytest.mark.parametrize("anonymous", [True, False], ids=["O_TMPFILE", "named"])
def test_take_names_an_empty_writable_file(tmp_path: Path, anonymous: bool) -> None:
    active = tmp_path / "app.log"
    spares = SpareFiles(str(active), anonymous=anonymous)
    try:
        fd = _take(spares, str(active))
        os.write(fd, b"hello\n")
        os.close(fd)
        assert active.read_bytes() == b"hello\n"
        # The name is taken again by the next rotation: move this one away first.
        active.rename(tmp_path / "seg1")
        fd = _take(spares, str(active))
        os.close(fd)
        assert active.read_bytes() == b""
    finally:
        spares.stop()
    hidden = sorted(n for n in os.listdir(tmp_path) if n.startswith("."))
    assert hidden == []  # every spare not taken is gone with stop()
    assert sorted(os.listdir(tmp_path)) == ["app.log", "seg1"]


def test_anonymous_spares_have_no_name_while_waiting(tmp_path: Path) -> None:
    """Nothing for a crash (kill -9) to leave behind: the ready spares are unnamed."""
    active = tmp_path / "app.log"
    spares = SpareFiles(str(active))
    try:
        fd = _take(spares, str(active))  # at least one was made
        os.close(fd)
        deadline = time.monotonic() + 30
        while spares._ready.qsize() < spare_files.DEPTH - 1:  # the pool refills
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.listdir(tmp_path) == ["app.log"]
    finally:
        spares.stop()


def test_a_taken_name_is_refused_not_overwritten(tmp_path: Path) -> None:
    active = tmp_path / "app.log"
    active.write_bytes(b"someone else's\n")
    spares = SpareFiles(str(active))
    try:
        deadline = time.monotonic() + 30
        while spares._ready.empty():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert spares.take(str(active)) == -1
        assert active.read_bytes() == b"someone else's\n"
    finally:
        spares.stop()


def test_close_fd_is_closed_by_the_thread(tmp_path: Path) -> None:
    active = tmp_path / "app.log"
    old = os.open(tmp_path / "old", os.O_WRONLY | os.O_CREAT, 0o644)
    old_id = (os.fstat(old).st_dev, os.fstat(old).st_ino)
    spares = SpareFiles(str(active))
    try:
        os.close(_take(spares, str(active), close_fd=old))
        deadline = time.monotonic() + 30
        while True:
            try:
                st = os.fstat(old)
            except OSError:
                break  # closed
            if (st.st_dev, st.st_ino) != old_id:
                break  # closed, and the number already reused by a new spare
            assert time.monotonic() < deadline, "the handed-over descriptor stayed open"
            time.sleep(0.01)
    finally:
        spares.stop()


@pytest.mark.parametrize("anonymous", [True, False], ids=["O_TMPFILE", "named"])
def test_writer_rotating_every_few_events_keeps_every_event_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anonymous: bool
) -> None:
    real = SpareFiles

    def make(path: str) -> SpareFiles:
        return real(path, anonymous=anonymous)

    monkeypatch.setattr("logvold.fileio.rotating_writer.SpareFiles", make)
    path = tmp_path / "app.log"
    w = RotatingWriter(str(path), LogPolicy(max_size_bytes=2000, max_files=0), sync_segments=False)
    stream = b"".join(event_stream(3000))
    for start in range(0, len(stream), 7777):
        w.write("stdout", stream[start : start + 7777])
    w.close()
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if n.startswith(".")]
    assert w.rotations > 100
    segments = sorted(n for n in names if n != "app.log")
    data = b"".join((tmp_path / n).read_bytes() for n in [*segments, "app.log"])
    assert data == stream
    report = verify(split_raw([data]))
    assert report.ok and report.seen == 3000, report.summary()
