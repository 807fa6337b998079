"""Raw event framing: events end at a delimiter (the Framer protocol and RawFramer).

Its own module so that a raw writer (`logvold run`) loads the delimiter framer alone,
without the cri / json-file line codecs; `core.framing` re-exports these names.
"""

from __future__ import annotations

from typing import Protocol

DEFAULT_MAX_EVENT_SIZE = 1 << 20
FORMATS = ("raw", "cri", "json-file")


class Framer(Protocol):
    """Finds event ends in a stream fed chunk by chunk; offsets are absolute."""

    split_count: int
    """Events force-cut at max_event_size so far (each cut is also a boundary)."""

    def feed(self, chunk: bytes) -> list[int]:
        """Absolute stream offsets (bytes fed so far) at which events end, in order."""
        ...

    def last_boundary(self, chunk: bytes) -> int | None:
        """Like feed() but returns only the last event end (fast path for writers)."""
        ...

    @property
    def pending(self) -> int:
        """Bytes fed after the last boundary."""
        ...

    @property
    def offset(self) -> int:
        """Bytes fed so far (the absolute offset of the next byte)."""
        ...

    @property
    def buffered_bytes(self) -> int:
        """Bytes the framer holds between calls (bounded by max_event_size)."""
        ...


def _check_max(max_event_size: int, minimum: int) -> None:
    if max_event_size < max(1, minimum):
        raise ValueError(
            f"max_event_size must be at least {max(1, minimum)} bytes, got {max_event_size}"
        )


class _OffsetFramer:
    """What every framer shares: absolute offsets, and feed() on top of _scan()."""

    _offset: int  # bytes fed so far
    _start: int  # absolute offset where the current (incomplete) event starts

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def pending(self) -> int:
        return self._offset - self._start

    def feed(self, chunk: bytes) -> list[int]:
        ends: list[int] = []
        self._scan(chunk, ends)
        return ends

    def _scan(self, chunk: bytes, ends: list[int]) -> None:
        raise NotImplementedError


class RawFramer(_OffsetFramer):
    """Events end at a delimiter (any bytes, also multi-byte and self-overlapping).

    Matching is leftmost-first and non-overlapping from the start of each event,
    exactly like `bytes.split` applied event by event: with b"\\n\\n", the bytes
    b"a\\n\\n\\nb" are the event b"a\\n\\n" followed by the start of b"\\nb". An
    event that reaches `max_event_size` bytes without a delimiter is cut there
    (counted in `split_count`) and scanning restarts at the cut.

    State between calls: the event start, and up to len(delimiter)-1 carry bytes
    (the tail of the current event that could begin a delimiter).
    """

    def __init__(self, delimiter: bytes = b"\n", max_event_size: int = DEFAULT_MAX_EVENT_SIZE):
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        _check_max(max_event_size, len(delimiter))
        self.delimiter = bytes(delimiter)
        self.max_event_size = max_event_size
        self.split_count = 0
        self._offset = 0  # bytes fed so far
        self._start = 0  # absolute offset where the current (incomplete) event starts
        self._carry = b""  # last < len(delimiter) bytes of the current event
        self._overlapping = _has_border(self.delimiter)

    @property
    def buffered_bytes(self) -> int:
        return len(self._carry)

    def last_boundary(
        self, chunk: bytes | bytearray, stop: int | None = None, start: int = 0
    ) -> int | None:
        """See Framer; feeds only chunk[start:stop] (no copy with a one-byte delimiter:
        a writer frames a slice of its read buffer without slicing it)."""
        n = len(chunk) if stop is None else stop
        if n <= start:
            return None
        m = self.max_event_size
        d = self.delimiter
        if len(d) != 1 and (start or n != len(chunk)):
            chunk = chunk[start:n]
            n, start = len(chunk), 0
        base = self._offset - start  # absolute offset of chunk[0]
        if len(d) == 1:
            # Every delimiter byte ends an event, cuts or not; cuts only add
            # boundaries inside delimiter-free stretches of >= m bytes.
            last = chunk.rfind(d, start, n)
            if last < 0:
                if base + n - self._start < m:
                    self._offset = base + n
                    return None
            else:
                first = chunk.find(d, start, n)
                end = base + last + 1
                if base + first + 1 - self._start <= m and last - first <= m and base + n - end < m:
                    self._offset = base + n
                    self._start = end
                    return end
        elif base + n - self._start < m:
            # No cut possible in this call: find the last match without
            # scanning every event. A self-overlapping delimiter needs the last
            # occurrence resynchronised (see _last_match_end).
            data = self._carry + chunk if self._carry else bytes(chunk)
            dbase = base - len(self._carry)
            end_rel = _last_match_end(data, d, 0, len(data), self._overlapping)
            self._offset = base + n
            if end_rel is not None:
                self._start = dbase + end_rel
            keep = max(end_rel or 0, len(data) - (len(d) - 1))
            self._carry = data[keep:]
            return None if end_rel is None else dbase + end_rel
        ends: list[int] = []
        self._scan(bytes(chunk if start == 0 and n == len(chunk) else chunk[start:n]), ends)
        return ends[-1] if ends else None

    def _scan(self, chunk: bytes, ends: list[int]) -> None:
        d = self.delimiter
        dlen = len(d)
        m = self.max_event_size
        data = self._carry + chunk if self._carry else bytes(chunk)
        base = self._offset - len(self._carry)  # absolute offset of data[0]
        n = len(data)
        start = self._start
        pos = 0  # where the scan resumes in data (carry holds no matched bytes)
        find = data.find
        while True:
            limit = start + m - base  # the event must end at or before data[limit]
            i = find(d, pos) if limit > n else find(d, pos, limit)
            if i >= 0:
                pos = i + dlen
                start = base + pos
                ends.append(start)
            elif limit <= n:
                pos = limit
                start = base + limit
                ends.append(start)
                self.split_count += 1
            else:
                break
        self._start = start
        self._offset += len(chunk)
        keep = max(pos, n - (dlen - 1))
        self._carry = data[keep:] if keep < n else b""


def _has_border(d: bytes) -> bool:
    """True if a proper prefix of `d` is also a suffix (occurrences can overlap)."""
    return any(d[:k] == d[-k:] for k in range(1, len(d)))


def _last_match_end(data: bytes, d: bytes, lo: int, hi: int, overlapping: bool) -> int | None:
    """End of the last leftmost-first match of `d` in data[lo:hi], scanning from `lo`.

    Assumes the scan state at `lo` is "searching" and no cut occurs. For a
    self-overlapping delimiter the last occurrence may not be a match (b"aaa"
    with b"aa" matches at 0 only), so walk back along the chain of overlapping
    occurrences to one that no earlier occurrence overlaps - the scan is certainly
    searching there - then scan forward from it.
    """
    i = data.rfind(d, lo, hi)
    if i < 0:
        return None
    dlen = len(d)
    if not overlapping:
        return i + dlen
    x = i
    while True:
        j = data.rfind(d, max(lo, x - dlen + 1), x + dlen - 1)
        if j < 0 or j >= x:
            break
        x = j
    end = x + dlen
    find = data.find
    while True:
        k = find(d, end, hi)
        if k < 0:
            return end
        end = k + dlen
