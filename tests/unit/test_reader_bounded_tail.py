"""Tail planning in bounded memory: record cuts agree forwards, backwards and with the
writers' framing; huge tailLines keeps counts, not indexes; an undelimited run is
tailed in maxEventSize pieces."""

from __future__ import annotations

import os
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logvold.core.framing import make_framer
from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.fileio import reader as reader_module
from logvold.fileio.reader import ReadOptions, StreamReader
from logvold.fileio.reader_events import Splitter, records_of, reverse_records
from tests.support.events import parse_event, split_raw
from tests.support.streams import build_stream, make_events


def read(info: StreamInfo, **opts: object) -> bytes:
    reader = StreamReader(info, ReadOptions(**opts))  # type: ignore[arg-type]
    return b"".join(c for c in reader.chunks() if c)


def seqs(data: bytes) -> list[int]:
    out = []
    for body in split_raw([data]):
        seq = parse_event(body)
        assert seq is not None, body[:80]
        out.append(seq)
    return out


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=30),
    m=st.integers(2, 16),
    chunk=st.integers(1, 23),
    lo=st.integers(0, 5),
)
def test_cuts_agree_forwards_backwards_and_with_the_writers_framing(
    tmp_path_factory: pytest.TempPathFactory,
    pieces: list[tuple[int, bool]],
    m: int,
    chunk: int,
    lo: int,
) -> None:
    data = b"".join(b"x" * n + (b"\n" if delimited else b"") for n, delimited in pieces)
    # The writers' framing is the truth: where events end (cut at m without a delimiter).
    framer = make_framer("raw", b"\n", m)
    truth = framer.feed(data)
    # Forwards, as the reader reads (any read size).
    splitter = Splitter(b"\n", lo, m)
    forward: list[int] = []
    for at in range(0, len(data), chunk):
        block, base = splitter.feed_block(data[at : at + chunk])
        forward += [end - lo for _, end in records_of(block, base, b"\n", m)]
    # Backwards, as tail plans.
    path = tmp_path_factory.mktemp("rev") / "f"
    path.write_bytes(b"?" * lo + data)
    fd = os.open(path, os.O_RDONLY)
    try:
        backward = [
            (rec, start - lo, end - lo)
            for rec, start, end in reverse_records(fd, lo, lo + len(data), b"\n", m)
        ]
    finally:
        os.close(fd)
    assert forward == truth
    assert [end for _, _, end in reversed(backward)] == truth
    for rec, start, end in backward:
        assert rec == data[start:end] and len(rec) <= m


def _raw_info(directory: Path, max_event_size: int) -> StreamInfo:
    policy = replace(LogPolicy(), format="raw", max_event_size_bytes=max_event_size)
    return StreamInfo(
        key=StreamKey("default", "p", "app"),
        directory=directory,
        base="app.log",
        policy=policy,
        volume="v",
    )


def test_tail_of_an_undelimited_run_is_one_max_event_size_piece(tmp_path: Path) -> None:
    mes = 1 << 20
    run = bytes(range(256)).replace(b"\n", b".") * (30 * 2**20 // 256)  # 30 MiB, no newline
    (tmp_path / "app.log").write_bytes(b"first event\n" + run)
    info = _raw_info(tmp_path, mes)
    tracemalloc.start()
    try:
        got = read(info, tail_events=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    start = len(b"first event\n")
    assert got == run[29 * mes : 30 * mes]  # the newest whole piece; nothing is pending
    assert peak < 16 * mes  # a few pieces in flight, never the 30 MiB run
    assert read(info, tail_events=3) == run[27 * mes : 30 * mes]
    (tmp_path / "app.log").write_bytes(b"first event\n" + run + b"tail")
    assert read(info, tail_events=1) == run[29 * mes : 30 * mes]  # "tail" is incomplete
    whole = read(info)
    assert whole[:start] == b"first event\n" and whole[start:] == run


@pytest.mark.parametrize("fmt", ["raw", "cri", "json-file"])
@pytest.mark.parametrize("n", [1, 7, 149, 151, 260, 1000])
def test_tail_beyond_the_ring_counts_in_two_passes(
    tmp_path: Path, fmt: str, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compressed segments with a tail larger than the ring: the two-pass count, with
    interleaved stdout/stderr partial lines (CRI P fragments) across the start."""
    monkeypatch.setattr(reader_module, "_TAIL_RING_MAX", 4)
    events = make_events(400, fmt, stderr_every=3)
    info = build_stream(
        tmp_path, events, fmt=fmt, layout=(("zst", 100), ("gz", 100), ("plain", 50))
    )
    assert seqs(read(info, tail_events=n)) == list(range(max(0, 400 - n), 400))
    if fmt == "raw":
        return  # raw events carry no stream
    stderr = [e.seq for e in events if e.stream == "stderr"]
    assert seqs(read(info, tail_events=n, stream="stderr")) == stderr[-n:]


def test_huge_tail_keeps_no_index_of_events(tmp_path: Path) -> None:
    """tailLines far beyond the event count: the answer is the whole stream, and the
    planning memory does not grow with the number of events."""
    events = make_events(60_000, "cri", stderr_every=5)
    info = build_stream(tmp_path, events, fmt="cri", layout=(("plain", 20_000),))
    reader = StreamReader(info, ReadOptions(tail_events=10_000_000))
    tracemalloc.start()  # traces planning only: tracing the whole read costs seconds
    try:
        chunks = reader.chunks()
        first = next(chunks)  # planning happens before the first chunk
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    data = first + b"".join(c for c in chunks if c)
    assert seqs(data) == list(range(60_000))
    assert peak < 8 * 2**20, peak
