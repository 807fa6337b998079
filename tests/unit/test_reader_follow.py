"""Follow, driven step by step (the reader yields b"" when caught up), through the real
rotator: punch, collapse, compression, rename, truncation, removal, partial events."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.fileio.reader import ReadOptions, StreamReader
from logvold.fileio.rotator import StreamRotator
from tests.support.events import parse_event, split_raw, verify
from tests.support.streams import make_events, rfc3339


def info_for(directory: Path, **policy: object) -> StreamInfo:
    directory.mkdir(parents=True, exist_ok=True)
    return StreamInfo(
        key=StreamKey("default", "pod", "app"),
        directory=directory,
        base="app.log",
        policy=LogPolicy(**policy),  # type: ignore[arg-type]
        volume="logs",
    )


class Follower:
    def __init__(self, info: StreamInfo, **opts: object) -> None:
        self.now = 0.0
        self.reader = StreamReader(
            info,
            ReadOptions(follow=True, **opts),  # type: ignore[arg-type]
            gone_grace_s=1.0,
            clock=lambda: self.now,
        )
        self.chunks: Iterator[bytes] = self.reader.chunks()
        self.data = bytearray()
        self.ended = False
        self.pauses = 0

    def drain(self, polls: int = 1) -> bytes:
        """Run until caught up `polls` times; what arrived meanwhile."""
        got = bytearray()
        idle = 0
        while idle < polls:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.ended = True
                break
            if chunk:
                got += chunk
            elif self.reader.more_ready:  # a pause inside a backlog, not idle
                self.reader.more_ready = False
                self.pauses += 1
            else:
                idle += 1
                self.now += 0.5
        self.data += got
        return bytes(got)

    def seqs(self) -> list[int]:
        report = verify(split_raw([bytes(self.data)]), allow_missing_prefix=True)
        assert report.ok, report.summary()
        seqs = [parse_event(b) for b in split_raw([bytes(self.data)])]
        return [-1 if s is None else s for s in seqs]


def append(path: Path, events: list[bytes]) -> None:
    with path.open("ab") as f:
        f.write(b"".join(events))


def raw_events(start: int, n: int) -> list[bytes]:
    return [e.encoded for e in make_events(n, "raw", start=start, seed=start + 7)]


def test_follow_through_punch_and_collapse_with_lagging_reader(tmp_path: Path) -> None:
    info = info_for(tmp_path, collapse="always", max_size_bytes=4096)
    active = tmp_path / "app.log"
    rot = StreamRotator(info, collapse_min_bytes=4096)
    append(active, raw_events(0, 50))
    f = Follower(info)
    f.drain()
    seq = 50
    for round_ in range(12):
        append(active, raw_events(seq, 60))
        seq += 60
        if round_ % 3 == 0:
            f.drain()  # sometimes caught up, sometimes behind several rotations
        assert rot.rotate("size") is not None
        if round_ % 2:
            append(active, raw_events(seq, 3))
            seq += 3
    f.drain()
    assert f.seqs() == list(range(seq))
    state = rot.state
    assert state is not None and state.collapsed_bytes > 0  # the head really was collapsed
    assert active.stat().st_size < state.committed_offset
    # A new reader sees the same whole stream from segments + active.
    fresh = b"".join(c for c in StreamReader(info, ReadOptions()).chunks() if c)
    assert fresh == bytes(f.data)


def test_follow_reads_compressed_segment_when_behind(tmp_path: Path) -> None:
    info = info_for(tmp_path, compress="gzip", delay_compress=False, max_files=0)
    active = tmp_path / "app.log"
    rot = StreamRotator(info)
    append(active, raw_events(0, 20))
    f = Follower(info)
    f.drain()
    append(active, raw_events(20, 200))
    rot.rotate("size")
    rot.enforce_retention()
    rot.compress_pending()
    assert list(tmp_path.glob("app.log.*.gz"))
    assert not [p for p in tmp_path.glob("app.log.2*") if p.suffix != ".gz"]
    append(active, raw_events(220, 10))
    f.drain()
    assert f.seqs() == list(range(230))


def test_follow_through_rename_rotation(tmp_path: Path) -> None:
    info = info_for(tmp_path, strategy="rename")
    active = tmp_path / "app.log"
    rot = StreamRotator(info, punch_supported=False)
    append(active, raw_events(0, 30))
    f = Follower(info)
    f.drain()
    append(active, raw_events(30, 30))
    rot.rotate("size")  # old inode renamed to a segment, a new empty active file
    append(active, raw_events(60, 30))
    f.drain(polls=2)
    append(active, raw_events(90, 5))
    f.drain()
    assert f.seqs() == list(range(95))


def test_partial_event_is_served_once_complete(tmp_path: Path) -> None:
    info = info_for(tmp_path, format="cri")
    active = tmp_path / "app.log"
    evs = make_events(10, "cri", fragments=False)
    append(active, [e.encoded for e in evs[:5]])
    f = Follower(info)
    assert f.drain().count(b"\n") == 5
    ts, body = rfc3339(evs[5].ts_ns), evs[5].body
    append(
        active,
        [
            f"{ts} stdout P ".encode() + body[:20] + b"\n",
            f"{ts} stderr F ".encode() + b"E#0000000099 interleaved\n",
        ],
    )
    got = f.drain()
    assert b"#0000000005" not in got and b"interleaved" in got
    append(active, [f"{ts} stdout F ".encode() + body[20:] + b"\n"])
    assert f.drain() == body + b"\n"
    append(active, [e.encoded for e in evs[6:]])
    f.drain()
    bodies = [b for b in split_raw([bytes(f.data)]) if b"interleaved" not in b]
    assert bodies == [e.body for e in evs]


def test_follow_survives_truncation_and_ends_when_stream_removed(tmp_path: Path) -> None:
    info = info_for(tmp_path)
    active = tmp_path / "app.log"
    append(active, raw_events(0, 40))
    f = Follower(info)
    f.drain()
    os.truncate(active, 0)  # by hand: the follower starts over at 0
    append(active, raw_events(40, 10))
    f.drain(polls=2)
    assert f.seqs() == list(range(50))
    shutil.rmtree(tmp_path)
    f.drain(polls=10)
    assert f.ended


def test_follow_with_tail_zero_serves_only_new_events(tmp_path: Path) -> None:
    info = info_for(tmp_path)
    active = tmp_path / "app.log"
    append(active, raw_events(0, 40))
    f = Follower(info, tail_events=0)
    assert f.drain() == b""
    append(active, raw_events(40, 3))
    f.drain()
    assert [s for s in f.seqs()] == [40, 41, 42]


def test_big_backlog_is_read_in_bounded_steps(tmp_path: Path) -> None:
    info = info_for(tmp_path)
    active = tmp_path / "app.log"
    append(active, raw_events(0, 10))
    f = Follower(info, pattern="#000000(0005|7999) ")
    f.drain()
    append(active, raw_events(10, 8000))  # ~1.3 MiB at once, two matches in it
    f.drain()
    assert [parse_event(b) for b in split_raw([bytes(f.data)])] == [5, 7999]
    assert f.pauses >= 1  # the reader handed control back between 1 MiB blocks


def test_follow_through_copytruncate_reads_the_copy(tmp_path: Path) -> None:
    info = info_for(tmp_path, strategy="copytruncate")
    active = tmp_path / "app.log"
    rot = StreamRotator(info, punch_supported=False)
    append(active, raw_events(0, 40))
    f = Follower(info)
    f.drain()
    append(active, raw_events(40, 25))  # not read yet when the copy and truncate happen
    assert rot.rotate("size") is not None
    assert active.stat().st_size == 0
    append(active, raw_events(65, 5))
    f.drain(polls=2)
    assert f.seqs() == list(range(70))


def test_truncated_and_refilled_past_the_follower_is_noticed(tmp_path: Path) -> None:
    info = info_for(tmp_path, strategy="copytruncate")
    active = tmp_path / "app.log"
    rot = StreamRotator(info, punch_supported=False)
    append(active, raw_events(0, 40))
    f = Follower(info)
    f.drain()
    assert rot.rotate("size") is not None
    append(active, raw_events(40, 200))  # regrows far past the follower's old offset
    f.drain(polls=2)
    assert f.seqs() == list(range(240))


def test_follow_since_after_everything_waits_for_new_events(tmp_path: Path) -> None:
    info = info_for(tmp_path, format="cri")
    active = tmp_path / "app.log"
    evs = make_events(30, "cri", fragments=False)
    append(active, [e.encoded for e in evs[:20]])
    half = evs[20].encoded[:25]  # an incomplete last line when the follower starts
    append(active, [half])
    f = Follower(info, since_ns=evs[20].ts_ns)
    assert f.drain() == b""
    append(active, [evs[20].encoded[25:]] + [e.encoded for e in evs[21:]])
    f.drain()
    assert f.seqs() == list(range(20, 30))


def _trim_oldest(rot: StreamRotator, directory: Path, fraction: float) -> str:
    """Retention's trim of this fraction of the oldest plain segment's head, as the
    rotator runs it (up to the next event boundary)."""
    from logvold.core.layout import segments_of
    from logvold.fileio.safedir import SafeDir

    oldest = segments_of("app.log", os.listdir(directory))[0]
    nbytes = int((directory / oldest.filename).stat().st_size * fraction)
    with SafeDir.open_root(directory) as d:
        rot._dir = d  # as within one of its operations
        trimmed, cut = rot._trim_segment(d, oldest, nbytes)
        rot._dir = None
    assert trimmed == oldest.filename and cut >= nbytes
    return oldest.stem


def test_follow_places_a_trimmed_segment_by_its_end_when_the_record_is_stale(
    tmp_path: Path,
) -> None:
    """The rotator trimmed a segment's head and was killed before saving the record's new
    start (its intent still says trim): a follower behind reads what is left, from an
    event boundary, and nothing twice; recovery then brings the record in line."""
    from logvold.core.steps import TrimStep
    from logvold.fileio.state import load_state, save_state

    info = info_for(tmp_path, collapse="never")
    active = tmp_path / "app.log"
    rot = StreamRotator(info)
    append(active, raw_events(0, 40))
    f = Follower(info)
    f.drain()
    append(active, raw_events(40, 120))
    rot.rotate("size")  # events 0..159 now in a segment; the follower read 0..39 of them
    before = load_state(tmp_path, "app.log")
    assert before is not None
    stem = _trim_oldest(rot, tmp_path, 0.25)
    save_state(
        tmp_path,
        "app.log",
        before.with_(intent=TrimStep(stem=stem, size=(tmp_path / stem).stat().st_size)),
    )
    append(active, raw_events(160, 5))
    f.drain(polls=2)
    seqs = [parse_event(b) for b in split_raw([bytes(f.data)])]  # None: a cut event
    first_kept = seqs[40]
    assert seqs[:40] == list(range(40)) and first_kept is not None and 40 < first_kept < 80
    assert seqs[40:] == list(range(first_kept, 165))
    StreamRotator(info).recover()
    after = load_state(tmp_path, "app.log")
    assert after is not None and after.intent is None
    rec = next(r for r in after.segments if r.stem == stem)
    assert rec.logical_end - rec.logical_start == (tmp_path / stem).stat().st_size


def test_tail_planned_in_a_segment_survives_a_trim_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tailLines found its first event in a plain segment; retention trimmed that
    segment's head before the reader opened it: the reader still serves only whole events
    of the tail, in order, from where the trimmed file really starts."""
    info = info_for(tmp_path, collapse="never")
    active = tmp_path / "app.log"
    rot = StreamRotator(info)
    append(active, raw_events(0, 200))
    rot.rotate("size")
    append(active, raw_events(200, 10))
    plan = StreamReader._plan_start

    def plan_then_trim(self: StreamReader, *args: object) -> object:
        start = plan(self, *args)  # type: ignore[arg-type]
        _trim_oldest(rot, tmp_path, 0.8)  # to about event 160 of the segment's 0..199
        return start

    monkeypatch.setattr(StreamReader, "_plan_start", plan_then_trim)
    for tail in (30, 60, 150):  # starts after the cut (only shifted), and cut away
        out = b"".join(StreamReader(info, ReadOptions(tail_events=tail)).chunks())
        oldest = sorted(tmp_path.glob("app.log.2*"))[0]
        first_kept = parse_event(next(split_raw([oldest.read_bytes()], b"\n")))
        assert first_kept is not None
        seqs = [parse_event(b) for b in split_raw([out])]
        assert seqs == list(range(max(210 - tail, first_kept), 210)), (tail, first_kept)
