"""The segment bound: a backlog (file present at start, writer faster than rotation, a
restart) is cut into maxSize pieces at event boundaries; a step is bounded and says when
more work is left; holes are skipped, never copied; a volume short of space still rotates
piece by piece once retention frees room. Every event once, with real writers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold.core.pieces import FREE_SPACE_RESERVE, MAX_PIECES_PER_STEP
from logvold.core.steps import PieceMark, PiecesStep
from logvold.errors import StreamError
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import StreamState, load_state, save_state
from logvold.telemetry.metrics import Metrics
from tests.integration.rotator_kit import leftovers, make_info, start_writer, whole_stream
from tests.support.events import event_stream, split_raw, verify
from tests.support.hostile import plant_marker
from tests.support.small_fs import free_bytes, mounted_tmpfs

DELIM = b"\n\n"


def _segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith("app.log."))


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def _events(count: int, start: int = 0) -> bytes:
    return b"".join(event_stream(count, seed=21, start=start, delimiter=DELIM))


def _biggest_event(data: bytes) -> int:
    return max(len(e) + len(DELIM) for e in data.split(DELIM)[:-1])


def _check_bound(d: Path, max_size: int, biggest_event: int) -> int:
    """Largest segment; over maxSize only when one event alone is bigger."""
    sizes = [p.stat().st_size for p in _segments(d)]
    for p in _segments(d):
        size = p.stat().st_size
        if size > max_size:
            assert p.read_bytes().count(DELIM) == 1 and size <= biggest_event, (p.name, size)
    return max(sizes)


@pytest.mark.parametrize("strategy", ["punch", "copytruncate"])
def test_a_megabyte_present_at_start_becomes_maxsize_segments(
    tmp_path: Path, strategy: str
) -> None:
    data = _events(8000)
    cut = data.rindex(DELIM, 0, 2**20) + 2
    _append(tmp_path / "app.log", data[:cut] + data[cut : cut + 100])  # a partial event last
    metrics = Metrics()
    rot = StreamRotator(
        make_info(
            tmp_path, max_size_bytes=64 * 1024, max_files=0, delimiter=DELIM, strategy=strategy
        ),
        metrics,
    )
    res = rot.rotate("size")
    assert res is not None and not res.more_work
    segs = _segments(tmp_path)
    assert len(segs) >= 16 and len(res.cuts) == len(segs)
    assert max(p.stat().st_size for p in segs) <= 64 * 1024
    assert sum(p.stat().st_size for p in segs) == cut
    assert [p.name for p in segs] == [c.segment for c in res.cuts]  # names sort in cut order
    assert metrics.rotations.labels("default", "pod", "app", "size", strategy)._value.get() == len(
        segs
    )
    report = verify(split_raw([b"".join(p.read_bytes() for p in segs)], DELIM))
    assert report.ok and (report.first_seq, report.last_seq) == (0, report.seen - 1)
    if strategy == "punch":
        assert report.ok and verify(split_raw([whole_stream(tmp_path)], DELIM)).ok
        st = (tmp_path / "app.log").stat()
        assert st.st_blocks * 512 <= 2 * 4096
    else:
        assert (tmp_path / "app.log").stat().st_size == 0  # truncated after the last piece
    assert leftovers(tmp_path) == []


def test_a_step_is_bounded_and_reports_more_work(tmp_path: Path) -> None:
    """More pieces than a step may cut: the step stops at MAX_PIECES_PER_STEP and says so;
    the next steps go on where it stopped; the daemon's stop ends a step after a piece."""
    data = _events(12000)
    _append(tmp_path / "app.log", data)
    rot = StreamRotator(
        make_info(tmp_path, max_size_bytes=4096, max_files=0, delimiter=DELIM), None
    )
    first = rot.rotate("size")
    assert first is not None and first.more_work and len(first.cuts) == MAX_PIECES_PER_STEP
    rot.stop_pieces = lambda: True  # the daemon is stopping: one piece, then return
    one = rot.rotate("size")
    assert one is not None and one.more_work and len(one.cuts) == 1
    rot.stop_pieces = lambda: False
    steps = 0
    while (res := rot.rotate("size")) is not None and res.cuts:
        steps += 1
        assert steps < 100
    _check_bound(tmp_path, 4096, _biggest_event(data))
    report = verify(split_raw([whole_stream(tmp_path)], DELIM))
    assert report.ok and report.seen == 12000, report.summary()
    assert len(_segments(tmp_path)) >= len(data) // 4096


@pytest.mark.parametrize("max_size", [64 * 1024, 2**20], ids=["64Ki", "1Mi"])
def test_a_fast_writer_never_makes_a_segment_over_maxsize(tmp_path: Path, max_size: int) -> None:
    """A writer as fast as it goes (several MB/s) and a rotation loop that comes late: each
    late rotation cuts its backlog in pieces; 0 lost, 0 duplicated, 0 split."""
    count = 60_000
    rot = StreamRotator(
        make_info(tmp_path, max_size_bytes=max_size, max_files=0, delimiter=DELIM), None
    )
    proc = start_writer(tmp_path / "app.log", count=count, rate=0, max_chunk=65536, seed=3)
    rotations = 0
    while proc.poll() is None:
        if rot.needs_rotation() is not None and rot.rotate("size") is not None:
            rotations += 1
        time.sleep(0.05)  # late on purpose: backlogs of several maxSize
    assert proc.wait() == 0
    while (res := rot.rotate("final")) is not None and res.cuts:
        rotations += 1
    data = whole_stream(tmp_path)
    report = verify(split_raw([data], DELIM))
    assert report.ok and report.seen == count, report.summary()
    biggest = _check_bound(tmp_path, max_size, 2**20)
    assert biggest <= max_size
    written = (tmp_path / "app.log").stat().st_size
    assert len(_segments(tmp_path)) >= max(rotations, written // max_size)
    print(
        f"\nmaxSize={max_size} rotations={rotations} segments={len(_segments(tmp_path))} "
        f"max segment/maxSize={biggest / max_size:.2f} {report.summary()}"
    )


def test_a_1tib_sparse_file_is_skipped_not_read(tmp_path: Path) -> None:
    """Events, then `truncate` 1 TiB further, then events again (twice): the holes are
    committed without a segment (truncation reason `hole`), the events are cut in pieces,
    no segment holds a NUL byte, and a step returns at once (no minutes of zero reads)."""
    active = tmp_path / "app.log"
    metrics = Metrics()
    rot = StreamRotator(
        make_info(tmp_path, max_size_bytes=64 * 1024, max_files=0, delimiter=DELIM), metrics
    )
    _append(active, _events(1000))
    assert rot.rotate("size") is not None
    _append(active, _events(1000, start=1000))  # a backlog before the hole
    os.truncate(active, active.stat().st_size + 2**40)
    _append(active, _events(1000, start=2000))
    res = rot.rotate("size")
    assert res is not None
    assert res.hole_bytes >= 2**40 - 4096, res.hole_bytes
    assert all(b"\0" not in p.read_bytes() for p in _segments(tmp_path))
    # A hole of 16 MiB in the middle of the live range ends the piece before it.
    os.truncate(active, active.stat().st_size + 16 * 2**20)
    _append(active, _events(2000, start=3000))
    while (res := rot.rotate("size")) is not None and (res.cuts or res.hole_bytes):
        pass
    segs = _segments(tmp_path)
    assert segs and all(b"\0" not in p.read_bytes() for p in segs)
    assert max(p.stat().st_size for p in segs) <= 64 * 1024
    report = verify(split_raw([whole_stream(tmp_path)], DELIM))
    assert report.ok and report.seen == 5000, report.summary()
    assert metrics.truncations.labels("default", "pod", "app", "hole")._value.get() == 2
    st = active.stat()
    assert st.st_size > 2**40 and st.st_blocks * 512 <= 64 * 1024


@pytest.fixture
def tmpfs8m(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path, "8m") as mnt:
        yield mnt


@pytest.mark.root
def test_a_backlog_bigger_than_the_free_space_rotates_once_retention_frees_room(
    tmpfs8m: Path,
) -> None:
    """8 MiB tmpfs: old segments, then a backlog bigger than what is free, then a filler
    leaving almost nothing. Rotation fails cleanly; retention (maxTotalSize) deletes old
    segments; rotation then proceeds in pieces no bigger than the free space (each punch
    frees what it copied), until the whole backlog is cut. Every event that retention did
    not delete is there exactly once."""
    d = tmpfs8m
    mx = 2**20
    info = make_info(
        d, max_size_bytes=mx, max_files=0, delimiter=DELIM, max_total_size_bytes=5 * 2**20
    )
    metrics = Metrics()
    rot = StreamRotator(info, metrics)
    w = start_writer(d / "app.log", count=15_000, rate=0, seed=5)
    assert w.wait() == 0
    while (res := rot.rotate("size")) is not None and res.cuts:
        pass
    old = _segments(d)
    assert sum(p.stat().st_size for p in old) > 2 * 2**20
    w = start_writer(d / "app.log", count=15_000, rate=0, seed=5, extra=("--start", "15000"))
    assert w.wait() == 0
    st = (d / "app.log").stat()
    state = load_state(d, "app.log")
    assert state is not None
    backlog = st.st_size - state.physical_committed
    with (d / "filler").open("wb") as f:  # leave ~64 KiB: less than one maxSize piece
        f.write(b"x" * max(free_bytes(d) - 64 * 1024, 0))
    assert backlog > free_bytes(d) + 2**20
    with pytest.raises(StreamError):
        rot.rotate("size")
    assert leftovers(d) == []
    # Retention frees room: old segments go (maxTotalSize), the backlog stays.
    ret = rot.enforce_retention()
    assert ret.deleted, (backlog, sum(p.stat().st_size for p in _segments(d)), ret)
    free = free_bytes(d)
    assert free < backlog
    res = rot.rotate("size")
    assert res is not None and res.cuts
    # Pieces sized by the free space (minus the reserve), not only by maxSize.
    assert max(c.logical_end - c.logical_start for c in res.cuts) <= min(
        mx, free - FREE_SPACE_RESERVE
    )
    while (res := rot.rotate("size")) is not None and res.cuts:
        pass
    state = load_state(d, "app.log")
    assert state is not None and state.intent is None
    assert (d / "app.log").stat().st_size - state.physical_committed < 4096  # all cut
    assert max(p.stat().st_size for p in _segments(d)) <= mx
    report = verify(split_raw([whole_stream(d)], DELIM), allow_missing_prefix=True)
    assert report.ok, report.summary()
    assert report.last_seq == 29_999 and report.first_seq is not None
    assert report.seen == 30_000 - report.first_seq
    assert leftovers(d) == []


def test_a_crash_inside_a_batch_keeps_the_complete_prefix_and_forged_intents_touch_nothing(
    tmp_path: Path,
) -> None:
    """A batch intent whose second segment is missing: the first piece is committed, the
    third (complete, but after the gap) removed; its bytes are still in the active file,
    so every event is there once. A forged batch intent naming another file is dropped."""
    data = _events(3000)
    _append(tmp_path / "app.log", data)
    info = make_info(tmp_path, max_size_bytes=64 * 1024, max_files=0, delimiter=DELIM)
    rot = StreamRotator(info, None)
    rot.recover()
    ends = [data.rindex(DELIM, 0, k * 60_000) + 2 for k in (1, 2, 3)]
    names = [
        "app.log.20261130-120000.0001",
        "app.log.20261130-120000.0002",
        "app.log.20261130-120000.0003",
    ]
    (tmp_path / names[0]).write_bytes(data[: ends[0]])
    (tmp_path / names[2]).write_bytes(data[ends[1] : ends[2]])
    st = (tmp_path / "app.log").stat()
    save_state(
        tmp_path,
        "app.log",
        StreamState(
            device=st.st_dev,
            inode=st.st_ino,
            intent=PiecesStep(
                pieces=(
                    PieceMark(names[0], 0, ends[0]),
                    PieceMark(names[1], ends[0], ends[1]),
                    PieceMark(names[2], ends[1], ends[2]),
                )
            ),
        ),
    )
    StreamRotator(info, None).recover()
    state = load_state(tmp_path, "app.log")
    assert state is not None and state.intent is None and state.committed_offset == ends[0]
    assert [p.name for p in _segments(tmp_path)] == [names[0]]
    report = verify(split_raw([whole_stream(tmp_path)], DELIM))
    assert report.ok and report.seen == 3000, report.summary()

    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"keep")
    plant_marker(
        tmp_path,
        "app.log",
        {"op": "pieces", "pieces": [[f"../{outside.name}", ends[0], ends[0] + 4], ["x"]]},
    )
    StreamRotator(info, None).recover()
    state = load_state(tmp_path, "app.log")
    assert state is not None and state.intent is None and state.committed_offset == ends[0]
    assert outside.read_bytes() == b"keep"
