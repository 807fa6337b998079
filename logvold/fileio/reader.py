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
  untilTime). raw events carry no time: since works at segment granularity, skipping
  whole segments last written before it (the earlier of their mtime and the name stamp,
  the close time) and the active file's events when it too was last written before it; until
  skips sources opened after it, and timestamps=true adds nothing.
- pattern (RE2) is searched in the message without its trailing delimiter.
- follow survives punch (a follower behind the committed offset re-reads the bytes from
  the segments the state names), collapse, compression of those segments, rename (drain
  the old inode, then the new file), truncation (copytruncate: the copied segment, by its
  intent or verified by the last bytes read, then the file from 0; a refill past the
  follower is noticed by those bytes) and ends when the active file stays gone.
"""

from __future__ import annotations

import calendar
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import re2  # google-re2: linear time, no catastrophic backtracking

from logvold.core.formats import CRI_HEAD_BYTES, event_timestamp_ns, format_rfc3339nano_fixed
from logvold.core.framing import last_boundary_backward
from logvold.core.layout import SegmentName, segments_of
from logvold.core.steps import CollapseStep
from logvold.core.streams import StreamInfo
from logvold.errors import StateError
from logvold.fileio.reader_active import ActiveCursor
from logvold.fileio.reader_dir import Refused, StreamDir, log_refusal
from logvold.fileio.reader_events import (
    CHUNK_BYTES,
    CRI_PARTIAL,
    Assembler,
    Block,
    Event,
    FileRegion,
    Splitter,
    parse_cri,
    parse_json_file,
    pread_all,
    read_compressed,
    records_of,
    reverse_events,
    reverse_records,
    skip_bytes,
)
from logvold.fileio.reader_snapshot import (
    SETTLED_OPS,
    committed_names,
    intent_op,
    settle_collapse,
)
from logvold.fileio.safedir import SafeDir
from logvold.fileio.state import StreamState

__all__ = [
    "CHUNK_BYTES",
    "MAX_PATTERN_LENGTH",
    "FileRegion",
    "ReadOptions",
    "StreamFilter",
    "StreamReader",
    "compile_pattern",
]

log = logging.getLogger(__name__)

MAX_PATTERN_LENGTH = 1024
TAIL_SCAN_BYTES = 1024 * 1024
"""Region size of a backwards tail scan with a pattern (bounded memory)."""
_MAX_RECORD_FLOOR = 4 * 2**20
SNAPSHOT_ATTEMPTS = 50
"""Tries for a snapshot in which no rotation step ran (10 ms apart)."""
REPLANS = 3
"""Plans of a tail or since start again when a collapse moved the active file under one."""
StreamFilter = Literal["All", "stdout", "stderr"]


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


@functools.lru_cache(maxsize=256)
def _segments_of(base: str, names: tuple[str, ...]) -> tuple[SegmentName, ...]:
    """segments_of, remembered per listing: names only change at a rotation."""
    return tuple(segments_of(base, names))


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


# ---- the reader ---------------------------------------------------------------------


def _layout(state: StreamState | None) -> tuple[object, ...]:
    """What places the active file's bytes: its identity and the bytes collapsed off its
    head, or the collapse in flight (a state settled by the snapshot keeps its intent)."""
    if state is None:
        return ()
    intent = state.intent
    if isinstance(intent, CollapseStep):
        return (state.inode, state.device, "collapse", intent.collapsed_before)
    return (state.inode, state.device, state.collapsed_bytes)


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
    min_end: int | None = None
    """Within the first source, serve only events ending at or after this offset (a tail:
    the end of the Nth newest passing event; one number, however many events)."""
    planned: tuple[int, int] | None = None
    """(inode, size) of the plain segment `offset` was found in: retention may trim its
    head before it is read, which moves every physical offset by the bytes cut."""

    def admits(self, ev: Event) -> bool:
        return self.min_end is None or ev.end >= self.min_end


@dataclass
class StreamReader:
    """Serves one stream per ReadOptions. Iterate `chunks()`; `b""` means idle (wait a poll)."""

    info: StreamInfo
    options: ReadOptions
    poll_interval_s: float = 0.05
    gone_grace_s: float = 2.0
    """Follow ends when the active file stays absent this long (the stream was removed)."""
    busy_limit_s: float = 5.0
    """A read without follow waits this long for a rotation step in flight, then ends
    with the committed data (a step marker left by a crash never settles by itself)."""
    stop: Callable[[], bool] = field(default=lambda: False)
    clock: Callable[[], float] = time.monotonic
    wall_clock_ns: Callable[[], int] = time.time_ns
    events_served: int = 0
    bytes_served: int = 0
    more_ready: bool = False
    """Set with a `b""` that is only a pause between blocks of a backlog: step again now
    (and clear it) instead of waiting a poll interval."""
    caught_up: bool = False
    """True from the moment the reader found nothing new until it reads again: the next
    step is then small (fresh bytes only), so a server may run it without a thread."""
    regions: bool = False
    """Let `chunks()` yield FileRegion for whole plain segments when nothing filters
    (see `passthrough`), so a server can sendfile them; else they are read as bytes."""
    on_refused: Refused = log_refusal
    """Told of each file refused (symlink, FIFO, hard link, ...): it is never served."""

    def __post_init__(self) -> None:
        policy = self.info.policy
        self.fmt: str = policy.format
        self.delimiter: bytes = b"\n" if self.fmt != "raw" else policy.delimiter
        # A raw event is a record: cut at maxEventSize like the writers' framing, so a run
        # without a delimiter is served (and tailed) in maxEventSize pieces. A CRI or
        # json-file record is one line; only a line longer than this is cut.
        self.max_record = (
            policy.max_event_size_bytes
            if self.fmt == "raw"
            else max(_MAX_RECORD_FLOOR, 2 * policy.max_event_size_bytes)
        )
        self.matcher = compile_pattern(self.options.pattern) if self.options.pattern else None
        # Scanning whole blocks for the pattern finds every event whose message matches
        # when a message is a contiguous substring of the file (raw, CRI F lines) and the
        # pattern has no anchors that mean something else inside a block.
        pattern = self.options.pattern or ""
        self._prefilter = (
            self.matcher is not None
            and self.fmt in ("raw", "cri")
            and not any(c in pattern for c in ("^", "$", "\\A", "\\z"))
        )
        self._tail = self.delimiter
        self._by_time = self.fmt != "raw" and (
            self.options.since_ns is not None or self.options.until_ns is not None
        )
        o = self.options
        self.passthrough = (
            self.fmt == "raw"
            and self.matcher is None
            and all(v is None for v in (o.tail_events, o.since_ns, o.until_ns, o.limit_bytes))
        )
        """raw, whole stream, no filter: the output is the file bytes of whole events, so
        blocks go out as they are read (no per-event split) and plain segments as
        FileRegion. (timestamps and stream do not apply to raw.)"""
        self.directory = Path(self.info.directory)
        self.files = StreamDir(self.info, self.on_refused)
        self._state_key: tuple[int, ...] = ()
        self._state_cached: StreamState | None = None
        self.base = self.info.base

    # -- public -----------------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        """Formatted output in chunks of about CHUNK_BYTES; `b""` = nothing new yet.
        With `regions`, a plain segment may come as a FileRegion (typed as bytes for the
        callers that never ask for regions; see `chunks_or_regions`)."""
        return self.chunks_or_regions()  # type: ignore[return-value]

    def chunks_or_regions(self) -> Iterator[bytes | FileRegion]:
        """`chunks()`, with FileRegion items when `regions` is set."""
        out = bytearray()
        limit = self.options.limit_bytes
        for ev in self._events():
            if isinstance(ev, FileRegion):
                if out:
                    yield bytes(out)
                    out.clear()
                self.caught_up = False
                self.bytes_served += ev.count
                yield ev
                continue
            if ev is None:
                # Nothing new (what follows is b"" at once: a cheap step), unless the reader
                # only paused between blocks of a backlog (more_ready).
                self.caught_up = not self.more_ready
                if out:
                    yield bytes(out)
                    out.clear()
                yield b""
                continue
            self.caught_up = False
            data = self._format(ev)
            if limit is not None and self.bytes_served + len(data) > limit:
                break
            self.bytes_served += len(data)
            self.events_served += data.count(self.delimiter) if isinstance(ev, Block) else 1
            out += data
            if len(out) >= CHUNK_BYTES:
                yield bytes(out)
                out.clear()
        if out:
            yield bytes(out)

    def read_all(self, sleep: Callable[[float], None] = time.sleep) -> Iterator[bytes]:
        """`chunks()` for sync callers: waits on idle instead of yielding `b""`."""
        assert not self.regions, "read_all serves bytes only"
        for chunk in self.chunks():
            if chunk:
                yield chunk
            elif self.more_ready:
                self.more_ready = False
            else:
                sleep(self.poll_interval_s)

    # -- filters and output -----------------------------------------------------------

    def _passes(self, ev: Event) -> bool:
        o = self.options
        if o.stream != "All" and self.fmt != "raw" and ev.stream != o.stream:
            return False
        if self._by_time and (ts := ev.ts_ns) is not None:
            if o.since_ns is not None and ts < o.since_ns:
                return False
            if o.until_ns is not None and ts > o.until_ns:
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
            return format_rfc3339nano_fixed(ev.ts_ns).encode() + b" " + ev.message
        return ev.message

    # -- listing ----------------------------------------------------------------------

    def current_state(self) -> StreamState | None:
        """The state file, parsed again only when its identity changed (it is replaced by
        rename on every save, so inode + mtime + size tell a new one). A file younger than
        a few clock ticks is never cached: a second save within the same coarse mtime tick
        could reuse the inode and the size."""
        key = self.files.state_key()
        if key is None:
            return None
        if key and key == self._state_key:
            return self._state_cached
        try:
            state = self.files.load_state()
        except StateError as e:
            log.warning("reader ignores state of %s/%s: %s", self.directory, self.base, e)
            state = None
        settled = bool(key) and time.time_ns() - max(key[1], key[2]) > 50_000_000
        self._state_key, self._state_cached = (key if settled else ()), state
        return state

    def _snapshot(self) -> tuple[tuple[SegmentName, ...], StreamState | None, int | None]:
        """Segments, state and an fd of the active file seen consistently: no rotation
        in between, so every event is in exactly one of the segments or after the
        committed offset of the open file. A step in flight (an intent in the state) is
        taken as it stands, without the segments it has written so far (reader_snapshot):
        waiting for it is no answer when its rotator was killed, and serving them from
        the listing served their events twice. Only a collapse in flight is waited for."""
        for attempt in range(SNAPSHOT_ATTEMPTS):
            last = attempt == SNAPSHOT_ATTEMPTS - 1
            before = self.current_state()
            fd = self.files.open_active()
            # No directory (yet, or any more), or one refused: no segments.
            names = _segments_of(self.base, tuple(sorted(self.files.names())))
            after = self.current_state()
            active_id = None
            if fd is not None:
                st = os.fstat(fd)
                active_id = (st.st_ino, st.st_dev)
            consistent = before == after and (
                after is None or fd is None or active_id == (after.inode, after.device)
            )
            op = intent_op(after)
            if fd is not None and after is not None and op == "collapse" and last:
                after = settle_collapse(after, fd)  # a collapse that stays in flight
            elif op is not None and op not in SETTLED_OPS:
                consistent = False
            if consistent or last:
                return committed_names(names, after, active_id), after, fd
            if fd is not None:
                os.close(fd)
            time.sleep(0.01)
        raise AssertionError("unreachable")

    # -- events -----------------------------------------------------------------------

    def _events(self) -> Iterator[Event | FileRegion | None]:
        names, state, fd = self._snapshot()
        sources = [_Source(n) for n in names] + [_Source(None)]
        active = ActiveCursor(self, state, fd)
        try:
            start = self._plan_start(sources, active)
            for _ in range(REPLANS):
                if not self._collapsed_under_plan(active, state):
                    break
                # A tail or since start found in the active file by PHYSICAL offsets of
                # a layout a collapse has since moved: plan again on the new one.
                active.close()
                names, state, fd = self._snapshot()
                sources = [_Source(n) for n in names] + [_Source(None)]
                active = ActiveCursor(self, state, fd)
                start = self._plan_start(sources, active)
            everything = _Start(0)
            for i in range(start.index, len(sources) - 1):
                if self._opened_after_until(sources, i):
                    return
                first = start if i == start.index else everything
                for ev in self._segment_events(sources[i], first):
                    if isinstance(ev, FileRegion):
                        yield ev
                        continue
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
                    if self._until_passed_now():
                        return
                    yield None
                    continue
                if self._after_until(live):
                    return
                if self._passes(live) and first.admits(live):
                    yield live
        finally:
            active.close()
            self.files.rewalk()

    def _collapsed_under_plan(self, active: ActiveCursor, planned: StreamState | None) -> bool:
        """Whether the start was planned by reading the active file (tail, since) and a
        collapse of that file began or ended since the state it was planned on. Planned
        without a state of this file (before its first rotation), physical offsets were
        taken for logical ones: wrong once anything is collapsed."""
        o = self.options
        if active.fd is None or (o.tail_events is None and o.since_ns is None):
            return False
        now = self.current_state()
        if now is None or (now.inode, now.device) != (active.ino, active.dev):
            return False  # no state, or one of another file: the cursor sorts that out
        if planned is None or (planned.inode, planned.device) != (now.inode, now.device):
            return _layout(now) != (now.inode, now.device, 0)
        return _layout(now) != _layout(planned)

    def _opened_after_until(self, sources: list[_Source], i: int) -> bool:
        """raw: a source opened (previous segment closed) after untilTime holds nothing older."""
        u = self.options.until_ns
        prev = sources[i - 1].name if i > 0 else None
        return (
            u is not None
            and self.fmt == "raw"
            and prev is not None
            and calendar.timegm(prev.stamp.utctimetuple()) * 1_000_000_000 > u
        )

    def _until_passed_now(self) -> bool:
        """Following with untilTime: once the clock passed it, nothing newer can qualify."""
        u = self.options.until_ns
        return u is not None and self.wall_clock_ns() > u

    def _segment_events(self, src: _Source, start: _Start) -> Iterator[Event | FileRegion]:
        assert src.name is not None
        opened = self.files.open_segment(src.name.stem)
        if opened is None:  # deleted by retention since the listing: a race, not an error
            return
        seg_fd, compression = opened
        fd = None if compression else seg_fd
        offset = start.offset or 0
        if (
            fd is not None
            and self.regions
            and self.passthrough
            and not offset
            and not start.skip
            and start.planned is None
        ):
            try:
                size = self._whole_size(fd)
            except OSError:
                os.close(fd)
                raise
            if size is not None:
                try:
                    if size:
                        yield FileRegion(fd, 0, size)  # sent before the next step
                finally:
                    os.close(fd)
                return
        cut = self._cut_since_planned(src.name.stem, fd, start.planned)
        # Events keep the offsets of the file as planned (what `start` admits is in those).
        assembler = Assembler(self.fmt, start.skip if offset >= cut else frozenset())
        if offset < cut:
            offset = cut  # the start itself was trimmed away: from the first event left
            log.warning(
                "%s/%s: events before %d were removed before they were read",
                self.directory,
                src.name.stem,
                cut,
            )
        splitter = Splitter(self.delimiter, offset, self.max_record)
        if fd is not None:
            try:
                chunks: Iterator[bytes] = pread_all(fd, offset - cut, os.fstat(fd).st_size)
                yield from self._feed(chunks, splitter, assembler)
            finally:
                os.close(fd)
        else:
            yield from self._feed(
                skip_bytes(read_compressed(seg_fd, compression), offset - cut), splitter, assembler
            )

    def _whole_size(self, fd: int) -> int | None:
        """The segment's size if it ends with the (one-byte) delimiter, so all of it is
        whole events exactly as the record splitter would serve them; else None."""
        if len(self.delimiter) != 1:
            return None
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != self.delimiter:
            return None
        return size

    def _cut_since_planned(self, stem: str, fd: int | None, planned: tuple[int, int] | None) -> int:
        """Bytes retention trimmed off a plain segment's head since it was planned on (a
        trim replaces the file, so its inode tells; the end of a segment never moves)."""
        if planned is None:
            return 0
        ino, size = planned
        if fd is not None and os.fstat(fd).st_ino == ino:
            return 0
        held = self.held_bytes(stem, fd)
        return 0 if held is None else max(0, size - held)

    def held_bytes(self, stem: str, fd: int | None) -> int | None:
        """Bytes a segment holds now (the last ones before its logical end, which a trim
        never moves): a plain file's size, or a compressed one's record length in the
        current state (a trim is saved before the trimmed segment is compressed)."""
        if fd is not None:
            return os.fstat(fd).st_size
        state = self.current_state()
        for r in state.segments if state is not None else ():
            if r.stem == stem:
                return r.logical_end - r.logical_start
        return None

    def _feed(
        self, chunks: Iterator[bytes], splitter: Splitter, assembler: Assembler
    ) -> Iterator[Event]:
        for chunk in chunks:
            block, base = splitter.feed_block(chunk)
            yield from self.block_events(block, base, assembler)

    def block_events(self, block: bytes, base: int, assembler: Assembler) -> Iterator[Event]:
        """Events of a block of whole records. With a pattern, RE2 scans the block at C
        speed and only records around a match are parsed (and checked exactly)."""
        if not block:
            return
        if self.passthrough and not assembler.skip and not assembler.pending:
            yield Block(block, None, None, base, base + len(block))
            return
        d = self.delimiter
        if (
            self._prefilter
            and not assembler.pending
            and not assembler.skip
            and (self.fmt == "raw" or CRI_PARTIAL.search(block) is None)
        ):
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
        for rec, end in records_of(block, base, d, self.max_record):
            ev = assembler.push(rec, end - len(rec), end)
            if ev is not None:
                yield ev

    # -- where to start ---------------------------------------------------------------

    def _plan_start(self, sources: list[_Source], active: ActiveCursor) -> _Start:
        o = self.options
        first = 0
        if o.since_ns is not None:
            # A segment's name stamp is its close time (to the second): nothing in it is later.
            for i, src in enumerate(sources[:-1]):
                assert src.name is not None
                closed_ns = (calendar.timegm(src.name.stamp.utctimetuple()) + 1) * 1_000_000_000
                if self.fmt == "raw":
                    closed_ns = self._last_write_ns(src.name, closed_ns)
                if closed_ns > o.since_ns:
                    break
                first = i + 1
            if self.fmt == "raw" and first == len(sources) - 1 and o.tail_events is None:
                return self._raw_since_active(first, active)
        if o.tail_events is not None:
            return self._tail_start(sources, first, active, o.tail_events)
        if o.since_ns is not None and self.fmt != "raw":
            src = sources[first]
            if src.active:
                return self._since_start_plain(
                    first,
                    active.fd,
                    active.physical_start,
                    active.physical_size(),
                    active.collapsed,
                )
            assert src.name is not None
            if not src.name.compression:
                opened = self.files.open_segment(src.name.stem)
                if opened is not None and opened[1]:
                    os.close(opened[0])  # compressed since the listing: from its start
                elif opened is not None:
                    fd = opened[0]
                    try:
                        st = os.fstat(fd)
                        found = self._since_start_plain(first, fd, 0, st.st_size, 0)
                        found.planned = (st.st_ino, st.st_size)
                        return found
                    finally:
                        os.close(fd)
        return _Start(first)

    def _last_write_ns(self, name: SegmentName, closed_ns: int) -> int:
        """A raw segment's last write time: the earlier of its close time and its mtime (the
        rotator stamps a copied segment with the active file's mtime at the cut)."""
        d: SafeDir | None = self.files.directory()
        try:
            st = d.lstat(name.filename) if d is not None else None
        except OSError:
            st = None
        if st is None:
            return closed_ns
        mtime = st.st_mtime_ns
        return min(closed_ns, mtime)

    def _raw_since_active(self, index: int, active: ActiveCursor) -> _Start:
        """raw, every segment older than `since`: when the active file was last written
        before it too, start after its last whole event (only newer bytes are served)."""
        assert self.options.since_ns is not None
        fd = active.fd
        if fd is None:
            return _Start(index)
        st = os.fstat(fd)
        if st.st_mtime_ns >= self.options.since_ns:
            return _Start(index)  # segment granularity: the whole live part
        end = last_boundary_backward(
            lambda off, n: os.pread(fd, n, off),
            active.physical_start,
            st.st_size,
            "raw",
            self.delimiter,
            2**62,
        )
        if end is None:
            return _Start(index)
        return _Start(index, end + active.collapsed)

    def _since_start_plain(
        self, index: int, fd: int | None, lo: int, hi: int, shift: int
    ) -> _Start:
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
            return _Start(index, pos + shift)
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
                    return pos  # an incomplete last line: start there, it may complete
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
        return event_timestamp_ns(line, self.fmt)

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
            head = os.pread(fd, min(CRI_HEAD_BYTES, hi - pos), pos)
            return event_timestamp_ns(head.split(b"\n", 1)[0], "cri")  # not the next line's
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
                has_partials = CRI_PARTIAL.search(block) is not None
                at -= n
            if not has_partials:
                return frozenset()
        seen: set[str] = set()
        dirty: set[str] = set()
        for rec, _, _ in reverse_records(fd, window_lo, pos, b"\n", self.max_record):
            line = parse_cri(rec) if self.fmt == "cri" else parse_json_file(rec)
            if line.stream is None or line.stream in seen:
                continue
            seen.add(line.stream)
            if not line.complete:
                dirty.add(line.stream)
            if len(seen) == 2:
                break
        return frozenset(dirty)

    def _tail_start(
        self, sources: list[_Source], first: int, active: ActiveCursor, n: int
    ) -> _Start:
        """Walk back from the newest source until n passing events are found. Only counts
        and offsets are kept: memory does not grow with n (tailLines=10000000 is one int)."""
        if n <= 0:  # nothing old; with follow, what comes next
            end = active.physical_start
            if active.fd is not None:
                for _, _, rec_end in reverse_records(
                    active.fd,
                    active.physical_start,
                    active.physical_size(),
                    self.delimiter,
                    self.max_record,
                ):
                    end = rec_end
                    break
            skip = (
                self._dirty_streams(active.fd, active.physical_start, end)
                if active.fd is not None and self.fmt != "raw" and end > 0
                else frozenset()
            )
            return _Start(
                len(sources) - 1, end + active.collapsed, skip, min_end=end + active.collapsed + 1
            )
        needed = n
        for i in range(len(sources) - 1, first - 1, -1):
            src = sources[i]
            found: _TailFound | None
            if src.active:
                if active.fd is None:
                    continue
                found = self._tail_plain(
                    active.fd,
                    active.physical_start,
                    active.physical_size(),
                    needed,
                    active.collapsed,
                )
                planned = None
            else:
                found, planned = self._tail_segment(src, needed)
            if found is None:
                continue
            if found.count >= needed:
                return _Start(i, found.start, found.skip, min_end=found.min_end, planned=planned)
            needed -= found.count
        return _Start(first)

    def _tail_plain(self, fd: int, lo: int, hi: int, needed: int, shift: int) -> _TailFound:
        found = None
        if self._prefilter and self.options.since_ns is None:
            found = self._tail_plain_scan(fd, lo, hi, needed)
        if found is None:
            found = self._tail_plain_exact(fd, lo, hi, needed)
        count, start, min_end = found
        if count == 0:
            return _TailFound(0, lo + shift, hi + shift)
        # Events of another stream may be open at `start` (CRI/json-file partial lines):
        # forward reading from there drops their fragments instead of serving a piece.
        skip = (
            self._dirty_streams(fd, lo, start) if self.fmt != "raw" and start > lo else frozenset()
        )
        return _TailFound(count, start + shift, min_end + shift, skip)

    def _tail_plain_exact(self, fd: int, lo: int, hi: int, needed: int) -> tuple[int, int, int]:
        count, min_start, min_end = 0, hi, hi
        since = self.options.since_ns
        for ev in reverse_events(fd, lo, hi, self.fmt, self.delimiter, self.max_record):
            if since is not None and ev.ts_ns is not None and ev.ts_ns < since:
                break  # older events only from here (timestamps are near-monotonic)
            if not self._passes(ev):
                continue
            count += 1
            min_end = ev.end  # descending end order: the smallest so far
            min_start = min(min_start, ev.start)
            if count >= needed:
                break
        return count, min_start, min_end

    def _tail_plain_scan(
        self, fd: int, lo: int, hi: int, needed: int
    ) -> tuple[int, int, int] | None:
        """tail with a pattern, backwards a region (~1 MiB of whole records) at a time:
        RE2 skips regions without a match at C speed; only regions with one are parsed.
        None (use the exact scan) when a CRI partial line or a giant record shows up."""
        assert self.matcher is not None
        d = self.delimiter
        count, min_start, min_end = 0, hi, hi
        pos = hi
        while pos > lo and count < needed:
            region_lo = max(lo, pos - TAIL_SCAN_BYTES)
            block = os.pread(fd, pos - region_lo, region_lo)
            cut = 0
            if region_lo > lo:
                # Begin after the first whole record: the cut one and it go next round, and
                # (CRI) that whole line must end its event, or a line here is a piece.
                k = block.find(d)
                k2 = block.find(d, k + len(d)) if k >= 0 else -1
                if k2 < 0 or k2 + len(d) >= len(block):
                    return None
                cut = k2 + len(d)
                if self.fmt == "cri" and not parse_cri(block[k + len(d) : cut]).complete:
                    return None
            region = memoryview(block)[cut:]
            if self.fmt == "cri" and CRI_PARTIAL.search(region) is not None:
                return None
            start = region_lo + cut
            if self.matcher.search(region) is not None:
                for ev in reverse_events(fd, start, pos, self.fmt, d, self.max_record):
                    if self._passes(ev):
                        count += 1
                        min_end = ev.end
                        min_start = min(min_start, ev.start)
                        if count >= needed:
                            break
            pos = start
        return count, min_start, min_end

    def _tail_segment(
        self, src: _Source, needed: int
    ) -> tuple[_TailFound | None, tuple[int, int] | None]:
        """The tail found in a segment, and the (inode, size) of a plain one."""
        assert src.name is not None
        opened = self.files.open_segment(src.name.stem)
        if opened is None:
            return None, None
        seg_fd, compression = opened
        if not compression:
            fd = seg_fd
            try:
                st = os.fstat(fd)
                return self._tail_plain(fd, 0, st.st_size, needed, 0), (st.st_ino, st.st_size)
            finally:
                os.close(fd)
        try:
            return self._tail_compressed(seg_fd, compression, needed), None
        finally:
            os.close(seg_fd)

    def _tail_compressed(self, seg_fd: int, compression: str, needed: int) -> _TailFound:
        """A compressed segment cannot be read backwards: stream it forward, keeping the
        last `needed` (start, end) pairs when that is small, else count in a first pass
        and find the Nth newest in a second (memory stays bounded either way). Each pass
        reads a dup of the caller's fd from offset 0 (read_compressed closes what it gets)."""

        def passing() -> Iterator[Event]:
            fd = os.dup(seg_fd)
            os.lseek(fd, 0, os.SEEK_SET)
            splitter = Splitter(self.delimiter, 0, self.max_record)
            for ev in self._feed(read_compressed(fd, compression), splitter, Assembler(self.fmt)):
                if self._passes(ev):
                    yield ev

        if needed <= _TAIL_RING_MAX:
            last: deque[tuple[int, int]] = deque(maxlen=needed)
            for ev in passing():
                last.append((ev.start, ev.end))
            if not last:
                return _TailFound(0, 0, 0)
            return _TailFound(len(last), min(s for s, _ in last), last[0][1])
        total = sum(1 for _ in passing())
        if total == 0:
            return _TailFound(0, 0, 0)
        first_kept = max(0, total - needed)
        min_start, min_end = -1, 0
        for index, ev in enumerate(passing()):
            if index == first_kept:
                min_end, min_start = ev.end, ev.start
            elif index > first_kept:
                min_start = min(min_start, ev.start)
        return _TailFound(total - first_kept, min_start, min_end)


_TAIL_RING_MAX = 65_536
"""Up to this tailLines, a compressed segment's tail is found in one pass with a ring of
(start, end) pairs (1 MiB or so); beyond, in two passes with two integers."""


@dataclass(frozen=True, slots=True)
class _TailFound:
    """The newest `count` (<= wanted) passing events of a source: where forward reading
    starts, the end of the oldest of them, and the streams mid-event at the start."""

    count: int
    start: int
    min_end: int
    skip: frozenset[str] = frozenset()
