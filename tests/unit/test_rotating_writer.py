"""The rotating writer: cuts only at event boundaries, by size, period and on demand;
cri / json-file encoding per stream; retention and compression of its segments."""

from __future__ import annotations

import gzip
import os
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from logvold.core.layout import segments_of
from logvold.core.policy import LogPolicy
from logvold.fileio import rotating_writer
from logvold.fileio.compress import compress_segment
from logvold.fileio.rotating_writer import RotatedSegment, RotatingWriter
from tests.support.events import (
    chunked,
    decode_cri,
    decode_json_file,
    event_stream,
    split_raw,
    verify,
)

T0 = datetime(2026, 11, 23, 11, 58, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def read_file(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def segment_files(path: Path) -> list[Path]:
    return [path.parent / s.filename for s in segments_of(path.name, os.listdir(path.parent))]


def pieces(path: Path) -> list[bytes]:
    """Every segment's bytes, oldest first, then the active file's."""
    return [read_file(p) for p in segment_files(path)] + [path.read_bytes()]


def policy(**kw: object) -> LogPolicy:
    base: dict[str, object] = {"max_files": 0, "max_size_bytes": 0}
    return LogPolicy(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("creation", ["at-cut", "spares"])
@pytest.mark.parametrize(
    "delimiter", [b"\n", b"\n\n", b"\x1e"], ids=["newline", "blank-line", "record-separator"]
)
def test_size_rotation_keeps_every_event_whole(
    tmp_path: Path, delimiter: bytes, creation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`spares`: every creation counts as slow, so from the third cut on the next active
    files come from the spare-file thread (what a slow file system gets); `at-cut`: none
    does, so every cut creates its own (a loaded machine could make a few slow)."""
    slow_after_s = -1.0 if creation == "spares" else float("inf")
    monkeypatch.setattr(rotating_writer, "_SLOW_CREATE_S", slow_after_s)
    path = tmp_path / "app.log"
    max_size = 4096
    rotated: list[RotatedSegment] = []
    w = RotatingWriter(
        str(path),
        policy(max_size_bytes=max_size, delimiter=delimiter),
        clock=FakeClock(),
        on_rotate=rotated.append,
    )
    rng = random.Random(7)
    stream = b"".join(event_stream(2000, delimiter=delimiter))
    for chunk in chunked([stream], rng, max_chunk=3000):
        w.write("stdout", chunk)
    w.close()
    parts = pieces(path)
    assert len(parts) > 20 and len(rotated) == len(parts) - 1
    assert b"".join(parts) == stream
    for part in parts:
        # Each piece is whole events; a closed one reached max_size within its last event.
        assert part.endswith(delimiter) or part == b""
        report = verify(split_raw([part], delimiter), expected=[], allow_missing_prefix=True)
        assert not report.corrupt and not report.duplicated
    for part in parts[:-1]:
        last = part[: -len(delimiter)].rfind(delimiter)
        assert len(part) >= max_size > last + len(delimiter) - 1
    report = verify(split_raw(parts, delimiter))
    assert report.ok and report.seen == 2000, report.summary()
    assert w.split_count == 0
    assert (w._spares is not None) == (creation == "spares")
    # The spare next-active file made ahead of each cut is gone with the writer.
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [*segment_files(path), path])


def test_spares_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    """Named spares (where O_TMPFILE is missing) left by a kill -9 are empty files: the
    next writer removes them at start, and nothing else that looks like them."""
    path = tmp_path / "app.log"
    leftovers = [".app.log.next", ".app.log.next0", ".app.log.next3"]
    kept = [".app.log.nextx", ".app.log.next\u0663", ".other.log.next0", "app.log.next0"]
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"")
    w = RotatingWriter(str(path), policy(max_size_bytes=10), clock=FakeClock())
    for i in range(50):
        w.write("stdout", b"event %02d\n" % i)
    w.close()
    assert b"".join(pieces(path)) == b"".join(b"event %02d\n" % i for i in range(50))
    assert not any((tmp_path / name).exists() for name in leftovers)
    assert all((tmp_path / name).exists() for name in kept)


@settings(max_examples=20, deadline=None)
@given(
    max_size=st.integers(min_value=150, max_value=3000),
    max_chunk=st.integers(min_value=1, max_value=5000),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_any_chunking_any_size(
    tmp_path_factory: pytest.TempPathFactory, max_size: int, max_chunk: int, seed: int
) -> None:
    path = tmp_path_factory.mktemp("w") / "app.log"
    w = RotatingWriter(
        str(path),
        policy(max_size_bytes=max_size, delimiter=b"\n\n"),
        clock=FakeClock(),
        background=False,
    )
    stream = b"".join(event_stream(100, seed=seed, delimiter=b"\n\n", max_len=120))
    for chunk in chunked([stream], random.Random(seed), max_chunk=max_chunk):
        w.write("stdout", chunk)
    w.close()
    parts = pieces(path)
    assert b"".join(parts) == stream
    assert all(p.endswith(b"\n\n") for p in parts[:-1])
    assert all(len(p) >= max_size for p in parts[:-1])


def test_splice_and_write_mix(tmp_path: Path) -> None:
    """Zero-copy chunks the framer never sees must not move a cut off a boundary."""
    path = tmp_path / "app.log"
    w = RotatingWriter(str(path), policy(max_size_bytes=10_000), clock=FakeClock())
    stream = b"".join(event_stream(3000))
    r, wfd = os.pipe()
    try:
        for i, chunk in enumerate(chunked([stream], random.Random(3), max_chunk=9000)):
            if i % 3 == 2:
                w.write("stdout", chunk)
                continue
            os.write(wfd, chunk)
            left = len(chunk)
            while left:
                left -= w.splice_from(r, left)
    finally:
        os.close(r)
        os.close(wfd)
    w.close()
    parts = pieces(path)
    assert b"".join(parts) == stream
    assert len(parts) > 30
    assert all(p.endswith(b"\n") and len(p) >= 10_000 for p in parts[:-1])


def test_period_rotation_waits_for_the_event_end(tmp_path: Path) -> None:
    clock = FakeClock(T0)  # 11:58
    path = tmp_path / "app.log"
    w = RotatingWriter(str(path), policy(rotate="Hourly"), clock=clock)
    w.write("stdout", b"one\ntw")
    clock.advance(180)  # 12:01: a period boundary passed while `two` is half written
    w.tick()
    assert w.rotations == 0
    w.write("stdout", b"o\nthree\n")
    assert w.rotations == 1
    w.write("stdout", b"four\n")
    clock.advance(3600)
    w.tick()  # idle at a boundary: cut without waiting for more output
    assert w.rotations == 2
    clock.advance(7200)
    w.tick()  # an empty active file is never cut
    w.write("stdout", b"five\n")
    w.close()
    assert pieces(path) == [b"one\ntwo\n", b"three\nfour\n", b"five\n"]
    names = [p.name for p in segment_files(path)]
    assert names == ["app.log.20261123-120100.0001", "app.log.20261123-130100.0001"]


def test_manual_rotation_and_same_second_names(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    w = RotatingWriter(str(path), policy(), clock=FakeClock())
    for i in range(5):
        w.write("stdout", b"event %d\nhalf" % i)
        w.rotate("manual")  # mid-event: deferred to the next boundary
        w.write("stdout", b" done\n")
    w.close()
    names = [p.name for p in segment_files(path)]
    assert names == [f"app.log.20261123-115800.000{i}" for i in range(1, 6)]
    assert pieces(path)[:-1] == [b"event %d\nhalf done\n" % i for i in range(5)]


def test_existing_file_ends_mid_event(tmp_path: Path) -> None:
    """A file left by an earlier run: the framer learns its tail before the first cut."""
    path = tmp_path / "app.log"
    path.write_bytes(b"old one\nold partial")
    w = RotatingWriter(str(path), policy(max_size_bytes=10), clock=FakeClock())
    w.write("stdout", b" ends here\nnew\n")
    w.close()
    assert pieces(path) == [b"old one\nold partial ends here\n", b"new\n"]


def test_over_long_event_is_cut_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    w = RotatingWriter(
        str(path), policy(max_size_bytes=100, max_event_size_bytes=1000), clock=FakeClock()
    )
    w.write("stdout", b"x" * 2500 + b"\nok\n")
    w.close()
    assert [len(p) for p in pieces(path)] == [1000, 1000, 501, 3]
    assert w.split_count == 2


def test_cri_streams_pieces_and_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    w = RotatingWriter(
        str(path),
        policy(format="cri", max_size_bytes=300, max_event_size_bytes=64),
        clock=FakeClock(),
    )
    out_events = [b"o%03d " % i + b"a" * (i * 7 % 150) for i in range(60)]
    err_events = [b"e%03d " % i + b"b" * (i * 5 % 90) for i in range(60)]
    out_stream = b"".join(e + b"\n" for e in out_events)
    err_stream = b"".join(e + b"\n" for e in err_events)
    rng = random.Random(5)
    outs = list(chunked([out_stream], rng, max_chunk=100))
    errs = list(chunked([err_stream], rng, max_chunk=100))
    while outs or errs:
        if outs:
            w.write("stdout", outs.pop(0))
        if errs:
            w.write("stderr", errs.pop(0))
    w.write("stdout", b"no newline at the end")
    w.close()
    parts = pieces(path)
    assert len(parts) > 5
    for part in parts:
        for line in part.splitlines():
            _ts, _stream, tag, msg = line.split(b" ", 3)
            assert len(msg) <= 64
            # A piece may end inside an event only where it was cut for being over-long.
            assert tag == b"F" or len(msg) == 64
    assert w.split_count > 0
    decoded = list(decode_cri(b"".join(parts).splitlines()))
    assert [m for s, m in decoded if s == "stdout"] == [*out_events, b"no newline at the end"]
    assert [m for s, m in decoded if s == "stderr"] == err_events
    assert parts[0].split(b" ", 1)[0] == b"2026-11-23T11:58:00Z"


def test_json_file_entries(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    w = RotatingWriter(
        str(path), policy(format="json-file", max_event_size_bytes=8), clock=FakeClock()
    )
    w.write("stderr", "h\u00e9llo w\n".encode() + b"0123456789abc\n")
    w.close()
    decoded = list(decode_json_file(path.read_bytes().splitlines()))
    assert decoded == [("stderr", "h\u00e9llo w".encode()), ("stderr", b"0123456789abc")]


@pytest.mark.parametrize("algorithm", ["gzip", "zstd"])
def test_retention_and_compression(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "app.log"
    clock = FakeClock()
    w = RotatingWriter(
        str(path),
        policy(max_size_bytes=2000, max_files=4, compress=algorithm, delay_compress=False),
        clock=clock,
    )
    stream = b"".join(event_stream(400))
    for chunk in chunked([stream], random.Random(1), max_chunk=500):
        w.write("stdout", chunk)
        clock.advance(1)
    w.close()
    files = segment_files(path)
    assert len(files) == 4
    suffix = ".gz" if algorithm == "gzip" else ".zst"
    assert all(f.name.endswith(suffix) for f in files)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    report = verify(split_raw(pieces(path)), allow_missing_prefix=True)
    assert report.ok and report.last_seq == 399, report.summary()


def test_max_age_removes_old_segments(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    clock = FakeClock()
    w = RotatingWriter(str(path), policy(max_age_s=60), clock=clock)
    w.write("stdout", b"a\n")
    w.rotate()
    clock.advance(120)
    w.write("stdout", b"b\n")
    w.rotate()
    w.close()
    assert pieces(path) == [b"b\n", b""]


def test_compress_segment_is_crash_safe(tmp_path: Path) -> None:
    seg = tmp_path / "app.log.20261123-115800"
    seg.write_bytes(b"data\n" * 1000)
    (tmp_path / "app.log.20261123-115800.gz.tmp").write_bytes(b"torn")  # an earlier crash
    out = compress_segment(str(seg), "gzip")
    assert out == str(seg) + ".gz" and not seg.exists()
    assert gzip.decompress(Path(out).read_bytes()) == b"data\n" * 1000
    assert sorted(os.listdir(tmp_path)) == ["app.log.20261123-115800.gz"]
    assert compress_segment(str(tmp_path / "vanished"), "zstd") is None


def test_close_waits_for_background_work(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    before = threading.active_count()
    w = RotatingWriter(
        str(path),
        policy(max_size_bytes=10, compress="gzip", delay_compress=False),
        clock=FakeClock(),
    )
    for i in range(20):
        w.write("stdout", b"event %02d\n" % i)
    w.close()
    assert threading.active_count() == before
    assert all(f.name.endswith(".gz") for f in segment_files(path))


def test_unwritable_path_is_a_stream_error(tmp_path: Path) -> None:
    from logvold.errors import StreamError

    with pytest.raises(StreamError, match="cannot open log file"):
        RotatingWriter(str(tmp_path / "missing-dir" / "app.log"), policy())


def test_after_a_dropped_chunk_the_rest_of_its_event_is_not_written(tmp_path: Path) -> None:
    """A chunk the caller dropped (a full disk) that ended inside an event: the bytes
    that finish that event come next and would be a fragment without its head."""
    path = tmp_path / "app.log"
    w = RotatingWriter(str(path), policy(max_size_bytes=1 << 20), clock=FakeClock())
    w.write("stdout", b"whole 1\n")
    w.dropped(b"whole 2\nhead of 3")  # never written
    w.write("stdout", b"tail of 3")  # still inside event 3
    w.write("stdout", b" and more\nwhole 4\n")
    w.dropped(b"whole 5\n")  # ended on a boundary: nothing after it is skipped
    w.write("stdout", b"whole 6\n")
    w.close()
    assert path.read_bytes() == b"whole 1\nwhole 4\nwhole 6\n"


def test_skipping_a_dropped_events_rest_stops_at_max_event_size(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    w = RotatingWriter(
        str(path), policy(max_size_bytes=1 << 20, max_event_size_bytes=64), clock=FakeClock()
    )
    w.dropped(b"head")
    w.write("stdout", b"x" * 40)
    w.write("stdout", b"y" * 40 + b"after\n")  # 64 bytes skipped, then written as they come
    w.close()
    assert path.read_bytes() == b"y" * 16 + b"after\n"
