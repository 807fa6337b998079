"""Bytes to whole events for the stream reader: records as lines of the codec (CRI and
json-file, parsed by core.formats), record splitting, event assembly (P fragments
joined), segment files (plain, gzip, zstd) and reading records backwards in bounded
blocks (kubelet-style tail)."""

from __future__ import annotations

import gzip
import heapq
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import re2  # google-re2: linear time, no catastrophic backtracking
import zstandard

from logvold.core.formats import rfc3339nano_ns, split_cri_line, split_json_entry

CHUNK_BYTES = 64 * 1024
"""Response chunk size, and the block size of backward and search reads."""
READ_BYTES = 1024 * 1024
"""Forward read size: big enough that a pattern scan runs at RE2 speed, still bounded."""
CRI_PARTIAL = re2.compile(rb" std(?:out|err) P ")
"""Where a CRI P (partial) line may be; one RE2 pass is faster than two bytes searches."""


# ---- records and events -----------------------------------------------------------------


class Event:
    """One whole event, ready to filter and format.

    `message`: what a client is served (raw event bytes, or the joined CRI/json-file
    message); `start`/`end`: offsets of its first record and just past its last one in
    its source (logical offsets for the active file). Its time is parsed only if asked.
    """

    __slots__ = ("_ts", "end", "message", "start", "stream", "ts_raw")

    def __init__(
        self, message: bytes, ts_raw: bytes | None, stream: str | None, start: int, end: int
    ) -> None:
        self.message = message
        self.ts_raw = ts_raw
        self.stream = stream
        self.start = start
        self.end = end
        self._ts: int | bool | None = False

    @property
    def ts_ns(self) -> int | None:
        if self._ts is False:
            self._ts = rfc3339nano_ns(self.ts_raw) if self.ts_raw else None
        assert not isinstance(self._ts, bool)
        return self._ts


class Block(Event):
    """Several whole raw events served as they are in the file (no filter needs them
    apart): one object per read block instead of one per event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class FileRegion:
    """Bytes `offset`..`offset + count` of the open file `fd`: whole events that a
    server may send with sendfile(2). `fd` belongs to the reader and stays open until
    the reader is stepped again."""

    fd: int
    offset: int
    count: int


@dataclass(slots=True)
class Line:
    ts: bytes | None
    """The RFC3339 text of its time (parsed lazily: most reads never need it)."""
    stream: str | None
    complete: bool
    """Ends its event (CRI `F`, json-file `log` ending in a newline, or unparseable)."""
    message: bytes


def parse_cri(record: bytes) -> Line:
    """A record as a CRI line (core.formats' grammar); a malformed one is a whole event
    of its own, served as it is (the kubelet would skip it)."""
    fields = split_cri_line(record)  # a trailing newline changes nothing: not a space
    newline = record.endswith(b"\n")
    if fields is None:
        return Line(None, None, True, record if newline else record + b"\n")
    ts, stream, partial, at = fields
    if partial:
        return Line(ts, stream, False, record[at:-1] if newline else record[at:])
    return Line(ts, stream, True, record[at:] if newline else record[at:] + b"\n")


def parse_json_file(record: bytes) -> Line:
    """A record as a json-file entry (core.formats' grammar); a malformed one is a whole
    event of its own, served as it is."""
    entry = split_json_entry(record)
    if entry is None:
        body = record[:-1] if record.endswith(b"\n") else record
        return Line(None, None, True, body + b"\n")
    ts, stream, msg = entry
    return Line(ts, stream, msg.endswith(b"\n"), msg)


class Splitter:
    """Cuts a byte stream into records (lines, or raw events) with their end offsets."""

    def __init__(self, delimiter: bytes, offset: int, max_record: int) -> None:
        self.delimiter = delimiter
        self.carry = bytearray()
        self.consumed = offset
        """Offset just past the last byte fed."""
        self.max_record = max_record

    @property
    def emitted(self) -> int:
        """Offset just past the last whole record handed out."""
        return self.consumed - len(self.carry)

    def reset(self, offset: int) -> None:
        self.carry.clear()
        self.consumed = offset

    def feed_block(self, data: bytes) -> tuple[bytes, int]:
        """The whole records completed by `data`, as one block, and the block's offset.

        A run of max_record bytes without a delimiter is cut there, like the writers'
        framing cuts at maxEventSize; records_of(block, base, d, max_record) then yields
        the same pieces that reverse_records finds backwards."""
        d = self.delimiter
        buf = bytes(self.carry) + data if self.carry else data
        base = self.consumed - len(self.carry)
        self.consumed += len(data)
        end = buf.rfind(d) + len(d)
        if end < len(d):
            end = 0
        elif len(d) > 1:  # "x\n\n\n" with "\n\n": forward framing wins, like the writers'
            last = buf[:end].split(d)[-1]
            end -= len(last)
        run = len(buf) - end
        if run >= self.max_record:  # no delimiter for too long: cut (bounded memory)
            end += run - run % self.max_record
        self.carry = bytearray(buf[end:])
        return buf[:end], base

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        block, base = self.feed_block(data)
        return list(records_of(block, base, self.delimiter, self.max_record))


def records_of(
    block: bytes, base: int, d: bytes, max_len: int | None = None
) -> Iterator[tuple[bytes, int]]:
    """(record, end offset) of a block of whole records (a cut one may end it). With
    `max_len`, a record longer than that is cut every max_len bytes from its start."""
    parts = block.split(d)
    last = parts.pop()
    pos = base
    for part in parts:
        if max_len is not None and len(part) + len(d) > max_len:
            yield from _pieces(part + d, pos, max_len)
            pos += len(part) + len(d)
            continue
        pos += len(part) + len(d)
        yield part + d, pos
    if last:
        if max_len is not None and len(last) > max_len:
            yield from _pieces(last, pos, max_len)
            return
        yield last, pos + len(last)


def _pieces(record: bytes, start: int, max_len: int) -> Iterator[tuple[bytes, int]]:
    for at in range(0, len(record), max_len):
        piece = record[at : at + max_len]
        yield piece, start + at + len(piece)


class Assembler:
    """Forward: records -> whole events. `skip` streams drop fragments up to their first end."""

    def __init__(self, fmt: str, skip: frozenset[str] = frozenset()) -> None:
        self.fmt = fmt
        self.pending: dict[str | None, tuple[list[bytes], bytes | None, int]] = {}
        self.skip = set(skip)

    def reset(self) -> None:
        """Continue at an event boundary of every stream (a committed offset, a segment's
        start: the rotator cuts only where no stream is open): nothing is pending, and no
        stream's next event can have its head before it, so nothing is left to skip. A
        skip kept past such a jump dropped that stream's next whole event."""
        self.pending.clear()
        self.skip.clear()

    def push(self, record: bytes, start: int, end: int) -> Event | None:
        if self.fmt == "raw":
            if "*" in self.skip:
                self.skip.discard("*")
                return None
            return Event(record, None, None, start, end)
        line = parse_cri(record) if self.fmt == "cri" else parse_json_file(record)
        if "*" in self.skip:  # the first record may be cut: never serve it
            self.skip.discard("*")
            return None
        s = line.stream
        if s is not None and s in self.skip:
            if line.complete:
                self.skip.discard(s)
            return None
        if not line.complete:
            frags, ts, st = self.pending.get(s) or ([], line.ts, start)
            frags.append(line.message)
            self.pending[s] = (frags, ts, st)
            return None
        if s in self.pending:
            frags, ts, st = self.pending.pop(s)
            frags.append(line.message)
            return Event(b"".join(frags), ts, s, st, end)
        return Event(line.message, line.ts, s, start, end)


# ---- files --------------------------------------------------------------------------


def read_compressed(fd: int, compression: str) -> Iterator[bytes]:
    """Decompressed bytes of a segment (an fd the caller opened through `StreamDir`,
    closed here) in bounded chunks (streaming, never whole). The fd is owned by a file
    object at once, so a generator dropped before its first step still closes it."""
    return _decompressed(os.fdopen(fd, "rb"), compression)


def _decompressed(raw: BinaryIO, compression: str) -> Iterator[bytes]:
    with raw:
        reader: Any
        if compression == "gz":
            reader = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        with reader:
            while chunk := reader.read(READ_BYTES):
                yield chunk


def pread_all(fd: int, start: int, end: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        data = os.pread(fd, min(READ_BYTES, end - pos), pos)
        if not data:
            return
        pos += len(data)
        yield data


def reverse_records(
    fd: int, lo: int, hi: int, delimiter: bytes, max_record: int
) -> Iterator[tuple[bytes, int, int]]:
    """Whole records in [lo, hi) from the end backwards: (record, start, end).

    Bytes after the last delimiter (an incomplete record) are skipped; `lo` is a
    record start. Reads fixed blocks backwards, like kubelet's tail. A run longer than
    `max_record` without a delimiter is cut every max_record bytes from its start, as
    the forward Splitter cuts it: its start is found by scanning back (bounded memory,
    nothing accumulated), and an undelimited tail of the file yields its whole pieces.
    """
    d, dl, m = delimiter, len(delimiter), max_record
    pos = hi
    carry = b""
    end: int | None = None  # end of the current record, in buf coordinates
    while pos > lo:
        n = min(CHUNK_BYTES, pos - lo)
        pos -= n
        buf = os.pread(fd, n, pos) + carry
        if end is None:
            i = buf.rfind(d)
            if i < 0:
                if len(buf) >= m:  # an undelimited tail longer than a record: its pieces
                    run = _run_start(fd, lo, pos, d)
                    whole = hi - (hi - run) % m
                    yield from _reverse_pieces(fd, run, whole, m)
                    pos, carry, end = run, b"", 0
                    continue
                carry = buf
                continue
            end = i + dl
            if len(buf) - end >= m:  # the undelimited tail after it has whole pieces
                whole = len(buf) - (len(buf) - end) % m
                yield from _reverse_pieces(fd, pos + end, pos + whole, m)
        else:
            end += n
        while True:
            k = buf.rfind(d, 0, end - dl)
            if k < 0:
                break
            if end - k - dl > m:
                yield from _reverse_pieces(fd, pos + k + dl, pos + end, m)
            else:
                yield buf[k + dl : end], pos + k + dl, pos + end
            end = k + dl
        carry = buf[:end]
        if len(carry) > m:  # a record longer than m: find where it starts, cut it there
            run = _run_start(fd, lo, pos, d)
            yield from _reverse_pieces(fd, run, pos + end, m)
            pos, carry, end = run, b"", 0
    if end is not None and end > 0:
        yield carry[:end], lo, lo + end


def _run_start(fd: int, lo: int, pos: int, d: bytes) -> int:
    """Where the record containing `pos` starts: just after the last delimiter that ends
    at or before `pos`, or `lo`. Scans back in blocks, keeping nothing."""
    dl = len(d)
    at = pos
    while at > lo:
        start = max(lo, at - READ_BYTES)
        block = os.pread(fd, min(pos, at + dl - 1) - start, start)  # overlap: a split d
        i = block.rfind(d)
        if i >= 0 and start + i + dl <= pos:
            return start + i + dl
        at = start
    return lo


def _reverse_pieces(fd: int, start: int, end: int, m: int) -> Iterator[tuple[bytes, int, int]]:
    """The pieces of the record [start, end) cut every m bytes, newest first."""
    cut = start + (end - start - 1) // m * m
    while end > start:
        yield os.pread(fd, end - cut, cut), cut, end
        end, cut = cut, cut - m


def reverse_events(
    fd: int, lo: int, hi: int, fmt: str, delimiter: bytes, max_record: int
) -> Iterator[Event]:
    """Whole events of [lo, hi) in descending end order; `lo` is a clean boundary."""
    records = reverse_records(fd, lo, hi, delimiter, max_record)
    if fmt == "raw":
        for rec, start, end in records:
            yield Event(rec, None, None, start, end)
        return
    parse = parse_cri if fmt == "cri" else parse_json_file
    # stream -> (fragments newest first, ts of earliest fragment, start, end)
    pending: dict[str | None, tuple[list[bytes], bytes | None, int, int]] = {}
    heap: list[tuple[int, int, Event]] = []
    counter = 0

    def finish(s: str | None) -> None:
        nonlocal counter
        frags, ts, start, end = pending.pop(s)
        frags.reverse()
        counter += 1
        heapq.heappush(heap, (-end, counter, Event(b"".join(frags), ts, s, start, end)))

    for rec, start, end in records:
        line = parse(rec)
        s = line.stream
        if line.stream is None:  # unparseable: an event of its own
            counter += 1
            heapq.heappush(heap, (-end, counter, Event(line.message, None, None, start, end)))
        elif line.complete:
            if s in pending:
                finish(s)
            pending[s] = ([line.message], line.ts, start, end)
        elif s in pending:
            frags, _, _, e = pending[s]
            frags.append(line.message)
            pending[s] = (frags, line.ts, start, e)
        # else: a trailing fragment without its end: not served
        limit = max((p[3] for p in pending.values()), default=-1)
        while heap and -heap[0][0] > limit:
            yield heapq.heappop(heap)[2]
    for s in list(pending):
        finish(s)
    while heap:
        yield heapq.heappop(heap)[2]


def skip_bytes(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0
