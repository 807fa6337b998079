"""Reads one stream (segments oldest first, then the active file after its committed
offset) as an ordered sequence of whole events, with tail, since/until, filters and follow.

The core is a sync generator of byte chunks; `b""` means "caught up, wait one poll
interval before the next step", so a server can drive it in bounded steps.

Semantics worth knowing:
- Events are served whole: a trailing incomplete event is held back until it completes
  (follow) or dropped (no follow); limitBytes stops before the first event that would not fit.
- cri/json-file serve the message (P fragments joined, like kubelet); raw serves the bytes.
- tailLines=N: the N newest events passing the other filters, newest by where they end.
- since/until for cri/json-file use the event time (its first fragment) and assume times
  are near-monotonic within a file (binary search; reading stops at the first event after
  untilTime). raw events carry no time: since skips whole segments closed before it (the
  name stamp is the close time), until skips sources opened after it, and timestamps=true
  adds nothing.
- pattern (RE2) is searched in the message without its trailing delimiter.
- follow survives punch (a follower behind the committed offset re-reads the bytes from
  the segments the state names), collapse, compression of those segments, rename (drain
  the old inode, then the new file), truncation (copytruncate: the copied segment if its
  intent was seen, then the file from 0) and ends when the active file stays gone.
"""

from __future__ import annotations

import calendar
import errno
import gzip
import heapq
import json
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import re2  # google-re2: linear time, no catastrophic backtracking
import zstandard

from logvold.core.formats import decode_json_bytes
from logvold.core.layout import SegmentName, segments_of
from logvold.core.streams import StreamInfo
from logvold.errors import StateError
from logvold.fileio.state import SegmentRecord, StreamState, load_state, state_path

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
"""Response chunk size, and the block size of backward and search reads."""
READ_BYTES = 1024 * 1024
"""Forward read size: big enough that a pattern scan runs at RE2 speed, still bounded."""
MAX_PATTERN_LENGTH = 1024
_MAX_RECORD_FLOOR = 4 * 2**20
StreamFilter = Literal["All", "stdout", "stderr"]
_CRI_PARTIAL = re2.compile(rb" std(?:out|err) P ")
"""Where a CRI P (partial) line may be; one RE2 pass is faster than two bytes searches."""


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """What part of a stream to serve and how; the PodLogOptions of kubectl plus extras."""

    tail_events: int | None = None
    """Only the last N events (after the other filters); None = all."""
    since_ns: int | None = None
    """Only events at or after this UNIX time in ns (cri/json-file: event time; raw: segments)."""
    until_ns: int | None = None
    """Only events at or before this UNIX time in ns."""
    limit_bytes: int | None = None
    """Stop before the first whole event that would pass this many output bytes."""
    timestamps: bool = False
    """Prefix each event with its RFC3339Nano time (cri/json-file; raw events have none)."""
    stream: StreamFilter = "All"
    pattern: str | None = None
    """RE2 pattern an event's message must contain (searched, not anchored)."""
    follow: bool = False


def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 of a client pattern; ValueError (a 400) when too long or invalid."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20  # bounded automaton memory per request
    try:
        return re2.compile(pattern.encode("utf-8", "surrogatepass"), options)
    except Exception as e:  # re2._re2.Error has no public name
        reason = e.args[0] if e.args else e
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"invalid RE2 pattern: {reason}") from e


# ---- timestamps -------------------------------------------------------------------------

_epoch_cache: dict[bytes, int] = {}


def parse_rfc3339_ns(text: bytes) -> int | None:
    """UNIX ns of an RFC3339(Nano) time like `2026-11-23T11:57:17.123456789Z`; None if not one."""
    if len(text) < 20 or text[10:11] not in (b"T", b"t", b" "):
        return None
    head = text[:19]
    secs = _epoch_cache.get(head)
    if secs is None:
        try:
            y, mo, d = int(head[0:4]), int(head[5:7]), int(head[8:10])
            h, mi, s = int(head[11:13]), int(head[14:16]), int(head[17:19])
            secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
        except ValueError:
            return None
        if len(_epoch_cache) > 4096:
            _epoch_cache.clear()
        _epoch_cache[head] = secs
    rest = text[19:]
    frac_ns = 0
    if rest[:1] == b".":
        i = 1
        while i < len(rest) and 48 <= rest[i] <= 57:
            i += 1
        digits = rest[1:i]
        if not digits:
            return None
        frac_ns = int((digits + b"000000000")[:9])
        rest = rest[i:]
    if rest in (b"Z", b"z"):
        offset = 0
    elif len(rest) == 6 and rest[0:1] in (b"+", b"-") and rest[3:4] == b":":
        try:
            offset = (int(rest[1:3]) * 60 + int(rest[4:6])) * 60
        except ValueError:
            return None
        if rest[0:1] == b"+":
            offset = -offset
    else:
        return None
    return (secs + offset) * 1_000_000_000 + frac_ns


def format_rfc3339_ns(ns: int) -> str:
    """Kubelet's timestamp style: UTC, always nine fraction digits."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


# ---- records and events -----------------------------------------------------------------

class Event:
    """One whole event, ready to filter and format.

    `message`: what a client is served (raw event bytes, or the joined CRI/json-file
    message); `start`/`end`: offsets of its first record and just past its last one in
    its source (logical offsets for the active file). Its time is parsed only if asked.
    """

    __slots__ = ("_ts", "end", "message", "start", "stream", "ts_raw")

    def __init__(self, message: bytes, ts_raw: bytes | None, stream: str | None, start: int,
                 end: int) -> None:
        self.message = message
        self.ts_raw = ts_raw
        self.stream = stream
        self.start = start
        self.end = end
        self._ts: int | bool | None = False

    @property
    def ts_ns(self) -> int | None:
        if self._ts is False:
            self._ts = parse_rfc3339_ns(self.ts_raw) if self.ts_raw else None
        assert not isinstance(self._ts, bool)
        return self._ts


@dataclass(slots=True)
class _Line:
    ts: bytes | None
    """The RFC3339 text of its time (parsed lazily: most reads never need it)."""
    stream: str | None
    complete: bool
    """Ends its event (CRI `F`, json-file `log` ending in a newline, or unparseable)."""
    message: bytes


def _parse_cri(record: bytes) -> _Line:
    body = record[:-1] if record.endswith(b"\n") else record
    parts = body.split(b" ", 3)
    if len(parts) >= 3 and parts[1] in (b"stdout", b"stderr"):
        ts = parts[0]
        if len(ts) >= 20 and ts[4:5] == b"-" and ts[10:11] in (b"T", b"t"):
            msg = parts[3] if len(parts) == 4 else b""
            if parts[2].split(b":", 1)[0] == b"P":  # the tag is `:`-separated, like kubelet's
                return _Line(ts, parts[1].decode(), False, msg)
            return _Line(ts, parts[1].decode(), True, msg + b"\n")
    return _Line(None, None, True, body + b"\n")


def _parse_json_file(record: bytes) -> _Line:
    try:
        entry = json.loads(record)
        text = entry["log"]
        stream = entry.get("stream")
        ts_text = entry.get("time")
        if not isinstance(text, str):
            raise TypeError("log is not a string")
    except (ValueError, TypeError, KeyError, RecursionError):
        body = record[:-1] if record.endswith(b"\n") else record
        return _Line(None, None, True, body + b"\n")
    ts = ts_text.encode() if isinstance(ts_text, str) else None
    msg = decode_json_bytes(text)
    return _Line(ts, stream if isinstance(stream, str) else None, msg.endswith(b"\n"), msg)


class _Splitter:
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
        """The whole records completed by `data`, as one block, and the block's offset."""
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
        if len(buf) - end > self.max_record:  # no delimiter for too long: cut (bounded memory)
            end = len(buf)
        self.carry = bytearray(buf[end:])
        return buf[:end], base

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        block, base = self.feed_block(data)
        return list(_records_of(block, base, self.delimiter))


def _records_of(block: bytes, base: int, d: bytes) -> Iterator[tuple[bytes, int]]:
    """(record, end offset) of a block of whole records (a cut one may end it)."""
    parts = block.split(d)
    last = parts.pop()
    pos = base
    for part in parts:
        pos += len(part) + len(d)
        yield part + d, pos
    if last:
        yield last, pos + len(last)


class _Assembler:
    """Forward: records -> whole events. `skip` streams drop fragments up to their first end."""

    def __init__(self, fmt: str, skip: frozenset[str] = frozenset()) -> None:
        self.fmt = fmt
        self.pending: dict[str | None, tuple[list[bytes], bytes | None, int]] = {}
        self.skip = set(skip)

    def reset(self) -> None:
        self.pending.clear()

    def push(self, record: bytes, start: int, end: int) -> Event | None:
        if self.fmt == "raw":
            if "*" in self.skip:
                self.skip.discard("*")
                return None
            return Event(record, None, None, start, end)
        line = _parse_cri(record) if self.fmt == "cri" else _parse_json_file(record)
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

def _read_compressed(path: Path, compression: str) -> Iterator[bytes]:
    """Decompressed bytes of a segment in bounded chunks (streaming, never whole)."""
    fd = _open_nofollow(path)
    if fd is None:  # deleted by retention meanwhile (a race), or not a regular file
        return
    raw = os.fdopen(fd, "rb")
    with raw:
        reader: Any
        if compression == "gz":
            reader = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        with reader:
            while chunk := reader.read(READ_BYTES):
                yield chunk


def _open_segment(directory: Path, stem: str) -> tuple[int | None, Path, str] | None:
    """Open a segment by stem, whatever it is compressed to by now.

    Returns (fd of the plain file or None, path, compression)."""
    for suffix in ("", ".gz", ".zst"):
        path = directory / (stem + suffix)
        if suffix:
            if path.is_file() and not path.is_symlink():
                return None, path, suffix[1:]
            continue
        fd = _open_nofollow(path)  # a symlink planted as a segment is never followed
        if fd is not None:
            return fd, path, ""
    return None


def _pread_all(fd: int, start: int, end: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        data = os.pread(fd, min(READ_BYTES, end - pos), pos)
        if not data:
            return
        pos += len(data)
        yield data


def _reverse_records(fd: int, lo: int, hi: int, delimiter: bytes,
                     max_record: int) -> Iterator[tuple[bytes, int, int]]:
    """Whole records in [lo, hi) from the end backwards: (record, start, end).

    Bytes after the last delimiter (an incomplete record) are skipped; `lo` is a
    record start. Reads fixed blocks backwards, like kubelet's tail.
    """
    d, dl = delimiter, len(delimiter)
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
                carry = buf
                continue
            end = i + dl
        else:
            end += n
        while True:
            k = buf.rfind(d, 0, end - dl)
            if k < 0:
                break
            yield buf[k + dl:end], pos + k + dl, pos + end
            end = k + dl
        carry = buf[:end]
        if len(carry) > max_record:
            yield carry, pos, pos + end
            carry, end = b"", 0
    if end is not None and end > 0:
        yield carry[:end], lo, lo + end


def _reverse_events(fd: int, lo: int, hi: int, fmt: str, delimiter: bytes,
                    max_record: int) -> Iterator[Event]:
    """Whole events of [lo, hi) in descending end order; `lo` is a clean boundary."""
    records = _reverse_records(fd, lo, hi, delimiter, max_record)
    if fmt == "raw":
        for rec, start, end in records:
            yield Event(rec, None, None, start, end)
        return
    parse = _parse_cri if fmt == "cri" else _parse_json_file
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


# ---- the reader ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Source:
    """A closed segment (by stem) or, with name None, the active file."""

    name: SegmentName | None

    @property
    def active(self) -> bool:
        return self.name is None


@dataclass(slots=True)
class _Start:
    """Where forward reading begins: source index, offset, streams mid-event there."""

    index: int
    offset: int | None = None
    skip: frozenset[str] = frozenset()
    only_ends: set[int] | None = None
    """Within the first source, serve only events ending at these offsets (tail) ..."""
    live_after: int = -1
    """... or after this offset (what follows the tail)."""

    def admits(self, ev: Event) -> bool:
        return self.only_ends is None or ev.end > self.live_after or ev.end in self.only_ends


@dataclass
class StreamReader:
    """Serves one stream per ReadOptions. Iterate `chunks()`; `b""` means idle (wait a poll)."""

    info: StreamInfo
    options: ReadOptions
    poll_interval_s: float = 0.05
    gone_grace_s: float = 2.0
    """Follow ends when the active file stays absent this long (the stream was removed)."""
    stop: Callable[[], bool] = field(default=lambda: False)
    clock: Callable[[], float] = time.monotonic
    wall_clock_ns: Callable[[], int] = time.time_ns
    events_served: int = 0
    bytes_served: int = 0

    def __post_init__(self) -> None:
        policy = self.info.policy
        self.fmt: str = policy.format
        self.delimiter: bytes = b"\n" if self.fmt != "raw" else policy.delimiter
        self.max_record = max(_MAX_RECORD_FLOOR, 2 * policy.max_event_size_bytes)
        self.matcher = compile_pattern(self.options.pattern) if self.options.pattern else None
        # Scanning whole blocks for the pattern finds every event whose message matches
        # when a message is a contiguous substring of the file (raw, CRI F lines) and the
        # pattern has no anchors that mean something else inside a block.
        pattern = self.options.pattern or ""
        self._prefilter = (self.matcher is not None and self.fmt in ("raw", "cri")
                           and not any(c in pattern for c in ("^", "$", "\\A", "\\z")))
        self._tail = self.delimiter
        self.directory = Path(self.info.directory)
        self._state_path = state_path(self.directory, self.info.base)
        self._state_key: tuple[int, ...] = ()
        self._state_cached: StreamState | None = None
        self.base = self.info.base
        self._until_passed = False

    # -- public -----------------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        """Formatted output in chunks of about CHUNK_BYTES; `b""` = nothing new yet."""
        out = bytearray()
        limit = self.options.limit_bytes
        for ev in self._events():
            if ev is None:
                if out:
                    yield bytes(out)
                    out.clear()
                yield b""
                continue
            data = self._format(ev)
            if limit is not None and self.bytes_served + len(data) > limit:
                break
            self.bytes_served += len(data)
            self.events_served += 1
            out += data
            if len(out) >= CHUNK_BYTES:
                yield bytes(out)
                out.clear()
        if out:
            yield bytes(out)

    def read_all(self, sleep: Callable[[float], None] = time.sleep) -> Iterator[bytes]:
        """`chunks()` for sync callers: waits on idle instead of yielding `b""`."""
        for chunk in self.chunks():
            if chunk:
                yield chunk
            else:
                sleep(self.poll_interval_s)

    # -- filters and output -----------------------------------------------------------

    def _passes(self, ev: Event) -> bool:
        o = self.options
        if o.stream != "All" and self.fmt != "raw" and ev.stream != o.stream:
            return False
        if ev.ts_ns is not None and self.fmt != "raw":
            if o.since_ns is not None and ev.ts_ns < o.since_ns:
                return False
            if o.until_ns is not None and ev.ts_ns > o.until_ns:
                return False
        if self.matcher is None:
            return True
        # Matched without the event's delimiter, so `error$` finds a line ending in error.
        msg = ev.message
        if msg.endswith(self._tail):
            msg = msg[: -len(self._tail)]
        return self.matcher.search(msg) is not None

    def _after_until(self, ev: Event) -> bool:
        u = self.options.until_ns
        return u is not None and self.fmt != "raw" and ev.ts_ns is not None and ev.ts_ns > u

    def _format(self, ev: Event) -> bytes:
        if self.options.timestamps and ev.ts_ns is not None:
            return format_rfc3339_ns(ev.ts_ns).encode() + b" " + ev.message
        return ev.message

    # -- listing ----------------------------------------------------------------------

    def _state(self) -> StreamState | None:
        """The state file, parsed again only when its identity changed (it is replaced by
        rename on every save, so inode + mtime + size tell a new one). A file younger than
        a few clock ticks is never cached: a second save within the same coarse mtime tick
        could reuse the inode and the size."""
        try:
            st = self._state_path.stat()
            key: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except FileNotFoundError:
            return None
        except OSError:
            key = ()
        if key and key == self._state_key:
            return self._state_cached
        try:
            state = load_state(self.directory, self.base)
        except StateError as e:
            log.warning("reader ignores state of %s/%s: %s", self.directory, self.base, e)
            state = None
        settled = bool(key) and time.time_ns() - max(key[1], key[2]) > 50_000_000
        self._state_key, self._state_cached = (key if settled else ()), state
        return state

    def _snapshot(self) -> tuple[list[SegmentName], StreamState | None, int | None]:
        """Segments, state and an fd of the active file seen consistently: no rotation
        in between, so every event is in exactly one of the segments or after the
        committed offset of the open file."""
        for attempt in range(50):
            before = self._state()
            fd = _open_nofollow(self.directory / self.base)
            try:
                names = segments_of(self.base, (p.name for p in self.directory.iterdir()))
            except FileNotFoundError:
                names = []
            after = self._state()
            consistent = before == after and (after is None or after.intent is None)
            if fd is not None and after is not None and consistent:
                st = os.fstat(fd)
                consistent = (st.st_ino, st.st_dev) == (after.inode, after.device)
            if consistent or attempt == 49:
                return names, after, fd
            if fd is not None:
                os.close(fd)
            time.sleep(0.01)
        raise AssertionError("unreachable")

    # -- events -----------------------------------------------------------------------

    def _events(self) -> Iterator[Event | None]:
        names, state, fd = self._snapshot()
        sources = [_Source(n) for n in names] + [_Source(None)]
        active = _ActiveCursor(self, state, fd)
        try:
            start = self._plan_start(sources, active)
            everything = _Start(0)
            for i in range(start.index, len(sources) - 1):
                if self._opened_after_until(sources, i):
                    return
                first = start if i == start.index else everything
                for ev in self._segment_events(sources[i], first):
                    if self._after_until(ev):
                        return
                    if self._passes(ev) and first.admits(ev):
                        yield ev
            if self._opened_after_until(sources, len(sources) - 1):
                return
            first = start if start.index == len(sources) - 1 else everything
            if first.offset is not None:
                active.seek(first.offset, first.skip)
            for live in active.events(self.options.follow):
                if live is None:
                    if self._raw_until_passed():
                        return
                    yield None
                    continue
                if self._after_until(live):
                    return
                if self._passes(live) and first.admits(live):
                    yield live
        finally:
            active.close()

    def _opened_after_until(self, sources: list[_Source], i: int) -> bool:
        """raw: a source opened (previous segment closed) after untilTime holds nothing older."""
        u = self.options.until_ns
        prev = sources[i - 1].name if i > 0 else None
        return (u is not None and self.fmt == "raw" and prev is not None
                and calendar.timegm(prev.stamp.utctimetuple()) * 1_000_000_000 > u)

    def _raw_until_passed(self) -> bool:
        u = self.options.until_ns
        return u is not None and self.wall_clock_ns() > u

    def _segment_events(self, src: _Source, start: _Start) -> Iterator[Event]:
        assert src.name is not None
        opened = _open_segment(self.directory, src.name.stem)
        if opened is None:  # deleted by retention since the listing: a race, not an error
            return
        fd, path, compression = opened
        offset = start.offset or 0
        assembler = _Assembler(self.fmt, start.skip)
        splitter = _Splitter(self.delimiter, offset, self.max_record)
        if fd is not None:
            try:
                chunks: Iterator[bytes] = _pread_all(fd, offset, os.fstat(fd).st_size)
                yield from self._feed(chunks, splitter, assembler)
            finally:
                os.close(fd)
        else:
            yield from self._feed(_skip_bytes(_read_compressed(path, compression), offset),
                                  splitter, assembler)

    def _feed(self, chunks: Iterator[bytes], splitter: _Splitter,
              assembler: _Assembler) -> Iterator[Event]:
        for chunk in chunks:
            block, base = splitter.feed_block(chunk)
            yield from self.block_events(block, base, assembler)

    def block_events(self, block: bytes, base: int, assembler: _Assembler) -> Iterator[Event]:
        """Events of a block of whole records. With a pattern, RE2 scans the block at C
        speed and only records around a match are parsed (and checked exactly)."""
        if not block:
            return
        d = self.delimiter
        if (self._prefilter and not assembler.pending and not assembler.skip
                and (self.fmt == "raw" or _CRI_PARTIAL.search(block) is None)):
            assert self.matcher is not None
            search = self.matcher.search
            pos = 0
            while pos < len(block):
                m = search(block, pos)
                if m is None:
                    return
                start = block.rfind(d, pos, m.start())
                start = pos if start < 0 else start + len(d)
                end = block.find(d, m.start())
                end = len(block) if end < 0 else end + len(d)
                ev = assembler.push(block[start:end], base + start, base + end)
                if ev is not None:
                    yield ev
                pos = end
            return
        for rec, end in _records_of(block, base, d):
            ev = assembler.push(rec, end - len(rec), end)
            if ev is not None:
                yield ev

    # -- where to start ---------------------------------------------------------------

    def _plan_start(self, sources: list[_Source], active: _ActiveCursor) -> _Start:
        o = self.options
        first = 0
        if o.since_ns is not None:
            # A segment's name stamp is its close time (to the second): nothing in it is later.
            for i, src in enumerate(sources[:-1]):
                assert src.name is not None
                closed_ns = (calendar.timegm(src.name.stamp.utctimetuple()) + 1) * 1_000_000_000
                if closed_ns > o.since_ns:
                    break
                first = i + 1
        if o.tail_events is not None:
            return self._tail_start(sources, first, active, o.tail_events)
        if o.since_ns is not None and self.fmt != "raw":
            src = sources[first]
            if src.active:
                return self._since_start_plain(first, active.fd, active.physical_start,
                                               active.physical_size(), active.collapsed)
            assert src.name is not None
            if not src.name.compression:
                opened = _open_segment(self.directory, src.name.stem)
                if opened is not None and opened[0] is not None:
                    fd = opened[0]
                    try:
                        return self._since_start_plain(first, fd, 0, os.fstat(fd).st_size, 0)
                    finally:
                        os.close(fd)
        return _Start(first)

    def _since_start_plain(self, index: int, fd: int | None, lo: int, hi: int,
                           shift: int) -> _Start:
        """Binary search on line times for the first line at or after `since`, then a
        start where no stream is mid-event. Returns a logical offset."""
        assert self.options.since_ns is not None
        if fd is None or hi <= lo:
            return _Start(index)
        since = self.options.since_ns
        a, b = lo, hi  # lines starting before `a` are older than `since`
        while b - a > CHUNK_BYTES:
            mid = (a + b) // 2
            line_start = self._next_line_start(fd, mid, hi)
            if line_start is None or line_start >= b:
                b = mid
                continue
            ts = self._line_ts(fd, line_start, hi)
            if ts is not None and ts < since:
                a = line_start
            else:
                b = mid
        pos = self._first_line_at_or_after(fd, a, hi, since)
        if pos >= hi:
            return _Start(index, hi + shift)
        skip = self._dirty_streams(fd, lo, pos) if pos > lo else frozenset()
        return _Start(index, pos + shift, skip)

    def _first_line_at_or_after(self, fd: int, pos: int, hi: int, since: int) -> int:
        """Scan forward from a line start, a block at a time, for the first line >= since."""
        while pos < hi:
            block = os.pread(fd, min(CHUNK_BYTES, hi - pos), pos)
            if not block:
                break
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: look at it alone
                ts = self._line_ts(fd, pos, hi)
                if ts is not None and ts >= since:
                    return pos
                nxt = self._next_line_start(fd, pos, hi)
                if nxt is None:
                    return hi
                pos = nxt
                continue
            offset = pos
            for line in block[:cut].split(b"\n")[:-1]:
                ts = self._ts_of_line(line)
                if ts is not None and ts >= since:
                    return offset
                offset += len(line) + 1
            pos += cut
        return hi

    def _ts_of_line(self, line: bytes) -> int | None:
        if self.fmt == "cri":
            return parse_rfc3339_ns(line[: line.find(b" ")])
        raw = _parse_json_file(line).ts
        return parse_rfc3339_ns(raw) if raw else None

    def _next_line_start(self, fd: int, pos: int, hi: int) -> int | None:
        size = 512  # lines are short: read a little first
        while pos < hi:
            block = os.pread(fd, min(size, hi - pos), pos)
            if not block:
                return None
            i = block.find(b"\n")
            if i >= 0:
                return pos + i + 1
            pos += len(block)
            size = CHUNK_BYTES
        return None

    def _line_ts(self, fd: int, pos: int, hi: int) -> int | None:
        if self.fmt == "cri":
            head = os.pread(fd, min(64, hi - pos), pos)
            return parse_rfc3339_ns(head[: max(0, head.find(b" "))])
        nxt = self._next_line_start(fd, pos, hi) or hi
        return self._ts_of_line(os.pread(fd, min(self.max_record, nxt - pos), pos))

    def _dirty_streams(self, fd: int, lo: int, pos: int) -> frozenset[str]:
        """Streams whose last line before `pos` leaves an event open. An open event
        started at most one max event size back, so only that window is looked at; CRI
        windows without any P line (the common case) are settled by a bytes search."""
        window_lo = max(lo, pos - self.info.policy.max_event_size_bytes)
        if self.fmt == "cri":
            has_partials = False
            at = pos
            while at > window_lo and not has_partials:
                n = min(CHUNK_BYTES, at - window_lo)
                block = os.pread(fd, n + 9, at - n)  # overlap: a marker across blocks
                has_partials = _CRI_PARTIAL.search(block) is not None
                at -= n
            if not has_partials:
                return frozenset()
        seen: set[str] = set()
        dirty: set[str] = set()
        for rec, _, _ in _reverse_records(fd, window_lo, pos, b"\n", self.max_record):
            line = _parse_cri(rec) if self.fmt == "cri" else _parse_json_file(rec)
            if line.stream is None or line.stream in seen:
                continue
            seen.add(line.stream)
            if not line.complete:
                dirty.add(line.stream)
            if len(seen) == 2:
                break
        return frozenset(dirty)

    def _tail_start(self, sources: list[_Source], first: int, active: _ActiveCursor,
                    n: int) -> _Start:
        """Walk back from the newest source until n passing events are found."""
        if n <= 0:  # nothing old; with follow, what comes next
            end = active.physical_start
            if active.fd is not None:
                for _, _, rec_end in _reverse_records(active.fd, active.physical_start,
                                                      active.physical_size(), self.delimiter,
                                                      self.max_record):
                    end = rec_end
                    break
            return _Start(len(sources) - 1, end + active.collapsed, only_ends=set(),
                          live_after=end + active.collapsed)
        needed = n
        for i in range(len(sources) - 1, first - 1, -1):
            src = sources[i]
            found: tuple[int, int, set[int]] | None
            if src.active:
                if active.fd is None:
                    continue
                found = self._tail_plain(active.fd, active.physical_start,
                                         active.physical_size(), needed, active.collapsed)
            else:
                found = self._tail_segment(src, needed)
            if found is None:
                continue
            count, start, ends = found
            if count >= needed:
                return _Start(i, start, only_ends=ends, live_after=max(ends))
            needed -= count
        return _Start(first)

    def _tail_plain(self, fd: int, lo: int, hi: int, needed: int,
                    shift: int) -> tuple[int, int, set[int]]:
        ends: set[int] = set()
        min_start = hi
        since = self.options.since_ns
        for ev in _reverse_events(fd, lo, hi, self.fmt, self.delimiter, self.max_record):
            if since is not None and ev.ts_ns is not None and ev.ts_ns < since:
                break  # older events only from here (timestamps are near-monotonic)
            if not self._passes(ev):
                continue
            ends.add(ev.end + shift)
            min_start = min(min_start, ev.start)
            if len(ends) >= needed:
                break
        return len(ends), min_start + shift, ends

    def _tail_segment(self, src: _Source, needed: int) -> tuple[int, int, set[int]] | None:
        assert src.name is not None
        opened = _open_segment(self.directory, src.name.stem)
        if opened is None:
            return None
        fd, path, compression = opened
        if fd is not None:
            try:
                return self._tail_plain(fd, 0, os.fstat(fd).st_size, needed, 0)
            finally:
                os.close(fd)
        # Compressed: stream forward once, keeping only the last `needed` passing events.
        last: deque[tuple[int, int]] = deque(maxlen=needed)
        splitter = _Splitter(self.delimiter, 0, self.max_record)
        for ev in self._feed(_read_compressed(path, compression), splitter,
                             _Assembler(self.fmt)):
            if self._passes(ev):
                last.append((ev.start, ev.end))
        if not last:
            return 0, 0, set()
        return len(last), min(s for s, _ in last), {e for _, e in last}


def _open_nofollow(path: Path) -> int | None:
    """An fd of a regular file at `path` (never through a symlink), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _skip_bytes(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0


class _ActiveCursor:
    """Reads the active file by LOGICAL offset, validated against the state file, and
    follows it through punch, collapse, rename, compression, truncation and removal."""

    def __init__(self, reader: StreamReader, state: StreamState | None, fd: int | None) -> None:
        self.r = reader
        self.path = reader.directory / reader.base
        self.fd: int | None = None
        self.ino = 0
        self.dev = 0
        self.collapsed = 0
        self.physical_start = 0
        self.skip: frozenset[str] = frozenset()
        self.stale_state: StreamState | None = None
        self.truncation: dict[str, Any] | None = None
        """The last copytruncate intent seen: where the bytes before a truncation went."""
        self._open(state, fd)
        logical = self.physical_start + self.collapsed
        self.splitter = _Splitter(reader.delimiter, logical, reader.max_record)
        self.assembler = _Assembler(reader.fmt, self.skip)
        self.gone_since: float | None = None

    def _open(self, state: StreamState | None, fd: int | None) -> None:
        self.fd = fd
        if fd is None:
            return
        st = os.fstat(fd)
        self.ino, self.dev = st.st_ino, st.st_dev
        if (state is not None and state.inode == st.st_ino and state.device == st.st_dev
                and state.physical_committed > st.st_size):
            # Truncated behind the rotator's back: this state describes bytes that are no
            # longer there. Read the file as it is until the rotator writes a new state.
            log.warning("%s is shorter than its committed offset; ignoring its state",
                        self.path)
            self.stale_state = state
            state = None
        if state is not None and state.inode == st.st_ino and state.device == st.st_dev:
            self.collapsed = state.collapsed_bytes
            start = state.physical_committed
        else:
            self.collapsed = 0
            start = 0
        self.physical_start = self._skip_hole(start, st.st_size)

    def _skip_hole(self, start: int, size: int) -> int:
        """Past a punched hole (SEEK_DATA) and any partial event or NULs it leaves."""
        assert self.fd is not None
        try:
            data = os.lseek(self.fd, start, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole up to EOF: start at EOF
                data = size
            else:
                return start
        head = os.pread(self.fd, 4096, data) if data < size else b""
        nuls = len(head) - len(head.lstrip(b"\0"))
        if data == start and nuls == 0:
            return start
        # Landed inside an event: drop the first (cut) record, and for cri/json-file the
        # first event of each stream, since its head may be in the hole.
        self.skip = frozenset({"*", "stdout", "stderr"} if self.r.fmt != "raw" else {"*"})
        return data + nuls

    def seek(self, logical: int, skip: frozenset[str]) -> None:
        self.splitter.reset(logical)
        self.assembler = _Assembler(self.r.fmt, skip)

    def physical_size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _emit(self, data: bytes) -> Iterator[Event]:
        block, base = self.splitter.feed_block(data)
        yield from self.r.block_events(block, base, self.assembler)

    def events(self, follow: bool) -> Iterator[Event | None]:
        """Events from the current position; with follow, None whenever caught up."""
        r = self.r
        while not r.stop():
            if self.fd is None:
                if not follow:
                    return
                if self._reopen_or_gone():
                    return
                yield None
                continue
            got = yield from self._step()
            if got == "data":
                continue
            if got == "busy":
                yield None
                continue
            if not follow:
                return
            if self._rotated():
                yield from self._drain()
                self.close()
                self.splitter.reset(0)
                self.assembler.reset()
                self._open(self.r._state(), _open_nofollow(self.path))
                self.splitter.reset(self.physical_start + self.collapsed)
                continue
            yield None

    def _step(self) -> Generator[Event, None, Literal["data", "eof", "busy"]]:
        """One bounded read: "data" (bytes consumed), "eof" or "busy" (a rotation step
        is in flight; look again after a poll)."""
        assert self.fd is not None
        st = self._matching_state()
        if st is not None and st.intent is not None and st.intent.get("op") in (
                "punch", "collapse", "copytruncate"):
            if st.intent.get("op") == "copytruncate":
                self.truncation = dict(st.intent)
            return "busy"
        emitted = self.splitter.emitted
        if st is not None and st.committed_offset > emitted:
            yield from self._from_segments(st, emitted)
            return "data"
        collapsed = st.collapsed_bytes if st is not None else self.collapsed
        physical = self.splitter.consumed - collapsed
        size = os.fstat(self.fd).st_size
        if physical > size:  # truncated under us (copytruncate or by hand)
            yield from self._after_truncation()
            return "data"
        data = os.pread(self.fd, READ_BYTES, physical) if physical < size else b""
        if not data:
            return "eof"
        if self._matching_state() != st:
            return "busy"  # the file changed under the read: discard and look again
        self.collapsed = collapsed
        yield from self._emit(data)
        return "data"

    def _matching_state(self) -> StreamState | None:
        st = self.r._state()
        if st is None or st.inode != self.ino or st.device != self.dev or st == self.stale_state:
            return None
        return st

    def _from_segments(self, st: StreamState, emitted: int) -> Iterator[Event]:
        """A punch passed our position: the bytes from `emitted` on are in segments now."""
        self.splitter.reset(emitted)
        for rec in st.segments:
            if rec.logical_end <= emitted:
                continue
            if rec.logical_start > self.splitter.consumed:
                log.warning("%s: events %d..%d were removed before a follower read them",
                            self.path, self.splitter.consumed, rec.logical_start)
                self.splitter.reset(rec.logical_start)
                self.assembler.reset()
            opened = _open_segment(self.r.directory, rec.stem)
            if opened is None:
                continue
            fd, path, compression = opened
            skip = self.splitter.consumed - rec.logical_start
            want = rec.logical_end - self.splitter.consumed
            if fd is not None:
                try:
                    chunks: Iterator[bytes] = _pread_all(fd, skip, skip + want)
                    for chunk in chunks:
                        yield from self._emit(chunk)
                finally:
                    os.close(fd)
            else:
                for chunk in _skip_bytes(_read_compressed(path, compression), skip):
                    yield from self._emit(chunk[: rec.logical_end - self.splitter.consumed])
                    if self.splitter.consumed >= rec.logical_end:
                        break
        if self.splitter.consumed < st.committed_offset:
            self.splitter.reset(st.committed_offset)
            self.assembler.reset()
        self.collapsed = st.collapsed_bytes

    def _after_truncation(self) -> Iterator[Event]:
        """Read what the copytruncate copied (if we saw its intent), then start over at 0."""
        t, self.truncation = self.truncation, None
        emitted = self.splitter.emitted
        if t is not None and isinstance(t.get("stem"), str) and isinstance(t.get("start"), int) \
                and isinstance(t.get("end"), int) and t["start"] <= emitted < t["end"]:
            copied = StreamState(device=self.dev, inode=self.ino, committed_offset=t["end"],
                                 segments=(SegmentRecord(t["stem"], t["start"], t["end"]),))
            yield from self._from_segments(copied, emitted)
        else:
            log.info("%s was truncated; reading it from its start", self.path)
        self.splitter.reset(0)
        self.assembler.reset()
        self.collapsed = 0

    def _rotated(self) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return True
        return st.st_ino != self.ino or st.st_dev != self.dev

    def _drain(self) -> Iterator[Event]:
        """The old inode after a rename: read what is left, then let it go."""
        assert self.fd is not None
        while True:
            physical = self.splitter.consumed - self.collapsed
            data = os.pread(self.fd, READ_BYTES, physical)
            if not data:
                return
            yield from self._emit(data)

    def _reopen_or_gone(self) -> bool:
        """While the active file is absent: reopen it when it is back; True when gone for good."""
        self._open(self.r._state(), _open_nofollow(self.path))
        if self.fd is not None:
            self.gone_since = None
            self.splitter.reset(self.physical_start + self.collapsed)
            self.assembler.reset()
            return False
        now = self.r.clock()
        if self.gone_since is None:
            self.gone_since = now
        return now - self.gone_since >= self.r.gone_grace_s
