"""The json-file helper thread (fileio/split_encoder.py): where chunks are cut into
pieces, and that pieces come back in order, with the encoder's errors, from a real
thread. The bytes the writer makes with it are compared with the per-event oracle in
test_writer_chunks.py (SmallPiecesWriter, SplitWriter)."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logvold.fileio.split_encoder import SplitEncoder, split_points


@given(
    lines=st.lists(st.integers(0, 40), max_size=60),
    piece=st.integers(1, 120),
    head=st.integers(0, 5),
)
def test_split_points_cut_whole_lines_into_pieces(lines: list[int], piece: int, head: int) -> None:
    data = b"#" * head + b"".join(b"x" * n + b"\n" for n in lines)
    start, stop = head, len(data)
    points = split_points(data, start, stop, piece)
    assert points[0] == start and points[-1] == stop
    assert all(a < b for a, b in itertools.pairwise(points)) or start == stop
    for p in points[1:-1]:
        assert data[p - 1 : p] == b"\n"  # a line start: each piece is whole lines
        assert p - start >= piece  # no piece before the last is shorter than `piece`...
    for a, b in itertools.pairwise(points[:-1]):
        # ...nor longer than `piece` plus the rest of the line it ends in.
        assert data.find(b"\n", a + piece, b) == b - 1
    if stop - start < piece + piece // 2:
        assert points == [start, stop]


def test_split_points_keep_a_chunk_without_line_starts_whole() -> None:
    data = b"y" * 5000 + b"\n"
    assert split_points(data, 0, len(data), 100) == [0, len(data)]


def test_pieces_come_back_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def encode(stream: str, ts: int, data: bytes | memoryview) -> tuple[bytes, bytes]:
        threads.add(threading.current_thread().name)
        return stream.encode(), bytes(data) + b"@%d" % ts

    helper = SplitEncoder(encode)
    try:
        for n in range(20):
            helper.submit("stdout", n, memoryview(b"piece %d" % n))
        assert helper.pending == 20
        got = [helper.result() for _ in range(20)]
        assert got == [(b"stdout", b"piece %d@%d" % (n, n)) for n in range(20)]
        assert helper.pending == 0
        with pytest.raises(RuntimeError, match="nothing submitted"):
            helper.result()
    finally:
        helper.stop()
    assert threads == {"logvold-encode"}


def test_an_encoder_error_is_raised_by_result_and_the_thread_goes_on() -> None:
    def encode(stream: str, ts: int, data: bytes | memoryview) -> tuple[bytes, bytes]:
        if bytes(data) == b"bad":
            raise MemoryError("no room for the output")
        return b"", bytes(data)

    helper = SplitEncoder(encode)
    try:
        for data in (b"one", b"bad", b"two"):
            helper.submit("stderr", 0, data)
        assert helper.result() == (b"", b"one")
        with pytest.raises(MemoryError, match="no room"):
            helper.result()
        assert helper.result() == (b"", b"two")
    finally:
        helper.stop()
