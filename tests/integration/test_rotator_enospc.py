"""A full filesystem: rotations fail cleanly (no torn segment, nothing committed, counted),
retention frees space in place without a copy, and the stream then rotates again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold.errors import StreamError
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from logvold.telemetry.metrics import Metrics
from tests.integration.rotator_kit import leftovers, make_info, start_writer, whole_stream
from tests.support.events import split_raw, verify
from tests.support.small_fs import mounted_tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path, "2m") as mnt:
        yield mnt


def _segments(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("app.log."))


def _check(d: Path, **kw: object) -> None:
    report = verify(split_raw([whole_stream(d)], b"\n\n"), **kw)  # type: ignore[arg-type]
    assert report.ok, report.summary()


@pytest.mark.root
def test_enospc_fails_cleanly_then_recovers(small_fs: Path) -> None:
    d = small_fs
    (d / "filler").write_bytes(b"\0" * 128 * 1024)
    metrics = Metrics()
    info = make_info(d, max_size_bytes=64 * 1024, max_files=0, delimiter=b"\n\n")
    rot = StreamRotator(info, metrics)
    writer = start_writer(d / "app.log", mode="append", count=10**6, rate=0)
    assert writer.wait() != 0  # died of ENOSPC: the filesystem is full
    size = (d / "app.log").stat().st_size
    assert size > 1024 * 1024

    # Completely full: even the intent cannot be saved. Nothing happens.
    with pytest.raises(StreamError):
        rot.rotate("size")
    assert _segments(d) == [] and leftovers(d) == []
    assert not (d / ".logvold").exists() or leftovers(d / ".logvold") == []

    # Room for the state file but not for the segment: the copy fails, tmp removed, intent gone.
    os.truncate(d / "filler", 96 * 1024)
    with pytest.raises(StreamError, match="nothing was committed"):
        rot.rotate("size")
    assert _segments(d) == [] and leftovers(d) == []
    state = load_state(d, "app.log")
    assert state is None or (state.intent is None and state.committed_offset == 0)
    assert metrics.io_errors.labels("rotate-copy", "ENOSPC")._value.get() == 1
    assert metrics.rotation_failures.labels("default", "pod", "app", "io")._value.get() == 2
    assert (d / "app.log").stat().st_size == size
    _check(d, allow_missing_prefix=False)
    StreamRotator(info, None).recover()  # a restart now finds nothing to undo
    _check(d, allow_missing_prefix=False)

    # A byte budget frees space in place (punch, no copy): rotation works again.
    tight = make_info(
        d, max_size_bytes=64 * 1024, max_files=0, delimiter=b"\n\n", max_total_size_bytes=256 * 1024
    )
    rot = StreamRotator(tight, metrics)
    res = rot.enforce_retention()
    assert res.dropped_active_bytes >= size - 256 * 1024 and res.bytes_freed > 0
    assert rot.rotate("size") is not None
    # ~256 KiB left after the drop: cut in maxSize (64 KiB) pieces.
    assert len(_segments(d)) >= 4 and leftovers(d) == []
    assert max((d / n).stat().st_size for n in _segments(d)) <= 64 * 1024
    st = (d / "app.log").stat()
    assert st.st_size == size and st.st_blocks * 512 <= 8192
    _check(d, allow_missing_prefix=True)

    # The writer can go on (a new process continuing the sequence) and rotations follow.
    os.unlink(d / "filler")
    report = verify(split_raw([whole_stream(d)], b"\n\n"), allow_missing_prefix=True)
    assert report.last_seq is not None
    with (d / "app.log").open("rb+") as f:  # drop the torn event the dying writer left
        f.seek(size - 64 * 1024)
        tail = f.read()
        f.truncate(size - len(tail) + tail.rindex(b"\n\n") + 2)
    writer = start_writer(
        d / "app.log",
        mode="append",
        count=3000,
        rate=0,
        extra=("--start", str(report.last_seq + 1)),
    )
    assert writer.wait() == 0
    assert rot.rotate("size") is not None
    report = verify(split_raw([whole_stream(d)], b"\n\n"), allow_missing_prefix=True)
    assert report.ok and report.last_seq is not None, report.summary()
