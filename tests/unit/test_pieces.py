"""Piece planning (core/pieces.py): pieces cover [start, last boundary <= end) exactly, in
order, each at most the cap unless it holds a single event bigger than the cap; per-step
limits; real framing on generated events."""

from __future__ import annotations

import bisect
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logvold.core.framing import event_boundaries_in, last_boundary_backward
from logvold.core.pieces import (
    FREE_SPACE_RESERVE,
    UNBOUNDED_PIECE_BYTES,
    BoundarySearch,
    Piece,
    iter_pieces,
    piece_cap,
    plan_pieces,
)
from tests.support.events import event_stream


def _searches(bounds: list[int]) -> tuple[BoundarySearch, BoundarySearch]:
    """Boundary searches over a sorted list of event ends (what framing answers on a file)."""

    def last_at_most(lo: int, hi: int) -> int | None:
        i = bisect.bisect_right(bounds, hi) - 1
        return bounds[i] if i >= 0 and bounds[i] > lo else None

    def first_after(lo: int, hi: int) -> int | None:
        i = bisect.bisect_right(bounds, lo)
        return bounds[i] if i < len(bounds) and bounds[i] <= hi else None

    return last_at_most, first_after


def _events(sizes: list[int], start: int) -> list[int]:
    out, pos = [], start
    for n in sizes:
        pos += n
        out.append(pos)
    return out


@settings(max_examples=400, deadline=None)
@given(
    start=st.integers(0, 10_000),
    sizes=st.lists(st.integers(1, 3000), max_size=60),
    tail=st.integers(0, 2000),
    cap=st.integers(1, 5000),
)
def test_pieces_cover_the_whole_events_exactly(
    start: int, sizes: list[int], tail: int, cap: int
) -> None:
    bounds = _events(sizes, start)
    end = (bounds[-1] if bounds else start) + tail  # a partial event may follow
    last, first = _searches(bounds)
    pieces = list(iter_pieces(start, end, cap, last, first))
    covered_to = bounds[-1] if bounds else start
    assert (pieces[0].start if pieces else start) == start
    assert (pieces[-1].end if pieces else start) == covered_to
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start
    for p in pieces:
        assert p.end in bounds  # cut at event boundaries only
        inside = [b for b in bounds if p.start < b < p.end]
        if p.size > cap:
            assert inside == []  # only one (big) event
        # greedy: the next boundary would have overflowed the cap
        nxt = [b for b in bounds if b > p.end]
        if nxt and p.size <= cap:
            assert nxt[0] - p.start > cap


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 500), min_size=1, max_size=80),
    cap=st.integers(100, 2000),
    max_pieces=st.integers(1, 10),
    max_bytes=st.integers(1, 5000),
)
def test_plan_respects_the_step_limits_and_always_progresses(
    sizes: list[int], cap: int, max_pieces: int, max_bytes: int
) -> None:
    bounds = _events(sizes, 0)
    last, first = _searches(bounds)
    allp = list(iter_pieces(0, bounds[-1], cap, last, first))
    pieces, more = plan_pieces(
        0,
        bounds[-1],
        cap,
        last,
        first,
        max_pieces=max_pieces,
        max_bytes=max_bytes,
    )
    assert pieces == allp[: len(pieces)] and pieces  # a prefix, never empty
    assert len(pieces) <= max_pieces
    assert len(pieces) == 1 or sum(p.size for p in pieces) <= max_bytes
    assert more == (len(pieces) < len(allp))


def test_a_megabyte_at_64k_is_at_least_16_pieces_on_real_events() -> None:
    """Framing's own backward search on generated multi-line events, as the rotator runs it."""
    data = b"".join(event_stream(6000, seed=5, delimiter=b"\n\n"))[: 2**20]
    ends = event_boundaries_in(data, "raw", b"\n\n")

    def last(lo: int, hi: int) -> int | None:
        b = last_boundary_backward(lambda o, n: data[o : o + n], lo, hi, "raw", b"\n\n")
        return b if b is not None and b > lo else None

    def first(lo: int, hi: int) -> int | None:
        return next((b for b in ends if lo < b <= hi), None)

    pieces = list(iter_pieces(0, len(data), 64 * 1024, last, first))
    assert len(pieces) >= 16
    assert pieces[-1].end == ends[-1] and all(p.size <= 64 * 1024 for p in pieces)
    assert all(p.end in set(ends) for p in pieces)


def test_piece_cap_follows_free_space_and_never_shrinks_to_nothing() -> None:
    assert piece_cap(64 * 1024) == 64 * 1024
    assert piece_cap(0) == UNBOUNDED_PIECE_BYTES
    assert piece_cap(2**20, free_bytes=FREE_SPACE_RESERVE + 1000) == 1000
    assert piece_cap(2**20, free_bytes=10 * 2**20) == 2**20
    # No room at all: keep maxSize (the copy fails cleanly with ENOSPC, retried later).
    assert piece_cap(2**20, free_bytes=100) == 2**20


def test_bad_input_is_refused() -> None:
    last, first = _searches([10])
    with pytest.raises(ValueError, match="cap"):
        list(iter_pieces(0, 10, 0, last, first))
    with pytest.raises(ValueError, match="past the end"):
        list(iter_pieces(0, 5, 100, lambda lo, hi: 10, first))
    assert Piece(3, 10).size == 7
