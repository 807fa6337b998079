"""Where a backlog is cut into segments: pieces of at most maxSize bytes at event boundaries.

A rotation used to copy everything between the committed offset and the last event
boundary into one segment, so a writer faster than the rotation, a restart, or a file
present at start produced segments many times maxSize. The rotator now cuts that range
into pieces planned here, each one committed on its own (see fileio/rotator.py):

- a piece starting at `pos` ends at the LAST event boundary <= pos + cap;
- when no boundary lies in (pos, pos + cap] (one event bigger than the cap) it ends at
  the FIRST boundary after pos: the only way a segment exceeds the cap is by holding a
  single event (bounded in turn by maxEventSize);
- pieces are contiguous and cover [start, last boundary <= end) exactly.

Pure: the boundary searches are callables (the rotator gives framing's bounded backward
search over the file), so the planning is tested with made-up boundaries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: At most this many pieces per rotation step, then the step returns "more work" and is
#: queued again behind the other streams: one stream's backlog never holds a worker for long.
MAX_PIECES_PER_STEP = 256

#: At most this many bytes copied per rotation step (at least one piece is always cut):
#: about 0.1-0.5 s of copy_file_range on a node disk, so a daemon stop never waits long.
MAX_BYTES_PER_STEP = 64 * 2**20

#: A step starts no new piece after this many seconds (a slow disk, a busy machine).
MAX_SECONDS_PER_STEP = 2.0

#: punch commits up to this many pieces under one intent (one directory fsync, one
#: commit, one punch for all): a piece costs one fsync instead of six.
BATCH_PIECES = 32

#: ... and at most this many bytes per batch (the batch is punched only after its commit,
#: so on a nearly full disk it must fit in the free space as a whole).
BATCH_BYTES = 16 * 2**20

#: The piece size when a stream has no maxSize (period-only rotation): a backlog of any size
#: (a restart after days, a huge file present at start) is never copied as one segment.
UNBOUNDED_PIECE_BYTES = 256 * 2**20

#: Free bytes kept on the volume when a piece is sized by free space (disk nearly full): the
#: state file, the writer's next lines and other streams' state saves still fit.
FREE_SPACE_RESERVE = 256 * 2**10

#: Boundary search: (lo, hi) -> an event end in (lo, hi], or None. `lo` is a boundary.
BoundarySearch = Callable[[int, int], "int | None"]


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes [start, end) of the active file (physical offsets), one future segment."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def piece_cap(
    max_size: int, free_bytes: int | None = None, reserve: int = FREE_SPACE_RESERVE
) -> int:
    """The largest piece to cut now: maxSize (UNBOUNDED_PIECE_BYTES without one), lowered to
    the free space minus `reserve` when that is known and positive. With no room at all the
    cap stays maxSize: the copy then fails with ENOSPC before anything is committed and is
    retried once retention has freed room (cutting one-event slivers into the last free
    bytes would only litter the volume with tiny segments)."""
    cap = max_size if max_size > 0 else UNBOUNDED_PIECE_BYTES
    if free_bytes is not None and free_bytes - reserve > 0:
        cap = min(cap, free_bytes - reserve)
    return cap


def iter_pieces(
    start: int, end: int, cap: int, last_at_most: BoundarySearch, first_after: BoundarySearch
) -> Iterator[Piece]:
    """Pieces covering [start, last boundary <= end), lazily, in file order.

    `last_at_most(lo, hi)`: the last event end in (lo, hi]; `first_after(lo, hi)`: the
    first event end in (lo, hi]. `start` is a boundary (the committed offset). Stops when
    no event ends after the last piece; each piece is at most `cap` bytes unless it holds
    a single event bigger than `cap`.
    """
    if cap <= 0:
        raise ValueError(f"piece cap must be positive, not {cap}")
    pos = start
    while pos < end:
        hi = min(pos + cap, end)
        b = last_at_most(pos, hi)
        if b is None and hi < end:
            b = first_after(pos, end)  # a single event longer than the cap
        if b is None or b <= pos:
            return
        if b > end:
            raise ValueError(f"boundary {b} past the end {end}")
        yield Piece(pos, b)
        pos = b


def plan_pieces(
    start: int,
    end: int,
    cap: int,
    last_at_most: BoundarySearch,
    first_after: BoundarySearch,
    *,
    max_pieces: int = MAX_PIECES_PER_STEP,
    max_bytes: int = MAX_BYTES_PER_STEP,
) -> tuple[list[Piece], bool]:
    """The pieces one step cuts, and whether more remain after them.

    At most `max_pieces` pieces and, past the first piece, at most `max_bytes` bytes in
    all (the first piece is always cut, so every step makes progress)."""
    pieces: list[Piece] = []
    total = 0
    for piece in iter_pieces(start, end, cap, last_at_most, first_after):
        if pieces and (len(pieces) >= max_pieces or total + piece.size > max_bytes):
            return pieces, True
        pieces.append(piece)
        total += piece.size
    return pieces, False
