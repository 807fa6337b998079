"""The event-preserving rotating writer: logvold's own output files (`run`, `driver`).

Appends a stream's bytes to its active file and cuts segments only at event
boundaries - by size, at each Hourly/Daily period, or on demand. The event
that straddles a trigger finishes in the old segment, so a segment exceeds
maxSize by at most one event (bounded by maxEventSize); only an event longer
than maxEventSize may be cut, and that is counted (split_count). Raw bytes are
written as they come (spliced from a pipe while no trigger is near; framed event
by event only in a small piece after a trigger); cri / json-file output is
encoded here per stream, a read's whole lines at once (core.chunk_encoding, one
timestamp per read), with P / partial pieces for lines longer than the line limit.
Memory: one chunk plus maxEventSize per stream.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from logvold.core.clock import Clock, utcnow
from logvold.core.layout import SegmentName, next_segment_name, segments_of
from logvold.core.log_policy import LogPolicy
from logvold.core.raw_framing import RawFramer
from logvold.core.values import time_zone
from logvold.errors import StreamError
from logvold.fileio.spare_files import SpareFiles, remove_leftover_spares
from logvold.fileio.write_behind import WriteBehind

if TYPE_CHECKING:
    import logging

    from logvold.core.chunk_encoding import ChunkEncoder

# Imported where used, not here: `logvold run` (raw, no retention) starts without the
# line encoders (json, formats), the period and retention planner or logging - a few
# milliseconds of every run's start-up (tests/integration/test_writer_startup.py).

STREAMS = ("stdout", "stderr")
_TAIL_BLOCK = 64 * 1024
_FIRST_TAIL_BLOCK = 4096
_PEEK_BYTES = 4096
"""First read while a cut waits for the next event end (splice resumes after it); each
further read for the same cut doubles, up to _PEEK_MAX: a few hundred bytes usually
finish the event, and every byte read is copied twice where a splice copies it once."""
_PEEK_MAX = 64 * 1024
_PIECE_MAX = 16 * 1024
_SLOW_CREATE_S = 0.0002
"""A new active file that took longer than this to create counts as slow: ~0.03 ms on
a quiet ext4 or xfs; 0.2-2 ms on an ext4 without a journal that freed many inodes in
the last 30 s (it skips each one, an inode-table look-up apiece)."""
_SLOW_CREATES = 3
"""Slow creations after which files are made ahead on a thread (spare_files)."""


@dataclass(frozen=True, kw_only=True)
class RotatedSegment:
    """A segment the writer just closed."""

    path: str
    name: SegmentName
    size_bytes: int
    reason: str
    """`size`, `period`, or what the caller of rotate() passed (e.g. `manual`)."""


class RotatingWriter:
    """Appends to `path`, rotating by `policy` (maxSize, rotate, maxFiles, maxAge, compress).

    Not thread-safe: one caller at a time. Segment fsync, retention and
    compression run on one background thread, off the write path; close()
    waits for it. `on_rotate` is called (on the caller's thread) after each cut.

    `max_line_bytes` (cri / json-file): longest line written; longer lines become
    P pieces that never end a segment unless the event passes maxEventSize.

    `sync_segments`: fsync each closed segment and its directory, and the
    active file on close. Off, durability is the kernel's write-back - what
    `cmd >> file` and kube-log-runner give - and a 1 MiB rotation costs no
    disk flush (`logvold run` turns it on with -flush-interval).

    `write_behind` (cri / json-file to a regular file; None: json-file only): one
    thread writes each encoded chunk while the caller reads and encodes the next
    (fileio.write_behind); sizes and rotation are decided at submit time, so the
    files are the same bytes. A failed write is raised by the next write(), flush()
    or close(). Not the default for cri: its encoding (bytes.replace) is cheap next to
    the write, and the thread measured more CPU (benchmarks/RESULTS.md).
    """

    def __init__(
        self,
        path: str,
        policy: LogPolicy,
        *,
        clock: Clock = utcnow,
        on_rotate: Callable[[RotatedSegment], None] | None = None,
        background: bool = True,
        sync_segments: bool = True,
        max_line_bytes: int | None = None,
        write_behind: bool | None = None,
    ) -> None:
        if policy.format != "raw" and policy.delimiter != b"\n":
            raise ValueError(f"format {policy.format} frames lines: the delimiter must be \\n")
        self.path = os.path.abspath(path)  # noqa: PTH100 - str paths, no pathlib at start-up
        self.policy = policy
        self._clock = clock
        self._on_rotate = on_rotate
        directory, _, self._base = self.path.rpartition("/")
        self._dir = directory or "/"
        self._tz: tzinfo = time_zone(policy.timezone)
        self._max_size = policy.max_size_bytes
        self._max_event = policy.max_event_size_bytes
        # cri / json-file: lines longer than this become P pieces (containerd's CRI
        # writer uses 16 KiB). An event's pieces are written together, so a segment
        # never ends inside an event below maxEventSize.
        self._max_line = min(max_line_bytes or self._max_event, self._max_event)
        self._cri_prefix_key: tuple[str, int] | None = None
        self._cri_prefix: tuple[bytes, bytes] = (b"", b"")
        self._raw = policy.format == "raw"
        self._chunks: ChunkEncoder | None = None
        if policy.format == "cri":
            from logvold.core.chunk_encoding import ChunkEncoder

            self._chunks = ChunkEncoder("cri")  # fresh bytes per chunk: safe to write behind
        elif policy.format == "json-file":
            from logvold.core.chunk_encoding import (
                ChunkEncoder,
                native_escaper,
                native_escaper_into,
            )

            native = native_escaper()
            if native is not None:
                # Each body is written out before the next encode(): one output
                # buffer for every chunk.
                # With write-behind, two alternating buffers: one is being written
                # while the next chunk is escaped into the other (_lines_whole).
                self._chunks = ChunkEncoder(
                    "json-file",
                    native=native,
                    native_into=native_escaper_into(),
                    buffers=1 if write_behind is False else 2,
                )
            else:
                import orjson  # here: only json-file without the C escaper imports it

                self._chunks = ChunkEncoder("json-file", orjson.dumps)
        self._fd = -1
        self._splice_ok = True
        self._readable = False
        self._size = 0
        self._due: str | None = None
        self._peeks = 0  # reads since the pending cut became due
        self.drained = True
        """splice_from's last call moved less than it asked for: the pipe is empty now."""
        self._delimiter_byte = policy.delimiter if len(policy.delimiter) == 1 else None
        self._closed = False
        self._newest: SegmentName | None = None
        self._next_period: datetime | None = None
        self._framer = RawFramer(policy.delimiter, self._max_event)
        self._regular = True
        self._stale = False  # the framer has not seen the end of the file
        # After a dropped chunk that ended inside an event, the rest of that event is
        # dropped too (its head is gone): how many more bytes may still be skipped for
        # it (maxEventSize at most); 0 = not skipping.
        self._skip_left = 0
        self._held: dict[str, bytearray] = {s: bytearray() for s in STREAMS}
        # The next active files, made ahead on their own thread (spare_files) once
        # creating them at the cut proved slow: until then a cut opens its own file,
        # one open(2) and no wake-up of another thread (less CPU in all).
        self._spares: SpareFiles | None = None
        self._may_spare = False
        self._slow_creates = 0
        self.rotations = 0
        self.bytes_written = 0
        self._split_base = 0
        self._sync_segments = sync_segments
        self._retains = bool(
            policy.max_files
            or policy.max_age_s
            or policy.max_total_size_bytes
            or policy.compress != "none"
        )
        self._worker: _Maintenance | None = None
        self._behind: WriteBehind | None = None
        self._reuse_mark = 0  # jobs that must be done before the next encode
        self._call_mark = 0  # jobs that must be done before the next write()
        self._open_active(existing_ok=True)
        if write_behind is None:
            write_behind = policy.format == "json-file"
        if write_behind and not self._raw and self._regular:
            self._behind = WriteBehind()
        if not self._regular:
            self._max_size = 0  # a FIFO or device: nothing to rotate
        elif background and (self._retains or self._rotates):
            if self._retains or self._sync_segments:
                self._worker = _Maintenance(self)
            self._may_spare = self._rotates
        names = self._dir_names()
        if self._regular and self._rotates:
            remove_leftover_spares(self.path, names)
        existing = segments_of(self._base, names)
        self._newest = existing[-1] if existing else None
        now = self._clock()
        if not self._regular:
            self._next_period = None
        elif self._size:
            # A file left by an earlier run: its period is the one it was last written in.
            mtime = datetime.fromtimestamp(os.fstat(self._fd).st_mtime, UTC)
            self._next_period = self._period_after(min(mtime, now))
        else:
            self._next_period = self._period_after(now)
        if self._regular and existing and self._worker is not None:
            self._worker.submit(None)  # apply retention to what an earlier run left

    # ----------------------------------------------------------------- public

    @property
    def size_bytes(self) -> int:
        """Bytes in the active file."""
        return self._size

    @property
    def rotates(self) -> bool:
        """True when a size or period trigger can ever cut this file."""
        return self._regular and self._rotates

    def fileno(self) -> int:
        """The active file's descriptor, switched to O_APPEND, e.g. to hand to a child
        when nothing will ever be cut (`cmd >> file`); the writer no longer knows the tail."""
        self._stale = self._raw
        self._drain()
        if self._regular:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) | os.O_APPEND)
        return self._fd

    @property
    def split_count(self) -> int:
        """Events cut at maxEventSize so far (0 below maxEventSize)."""
        return self._split_base + self._framer.split_count

    @property
    def at_boundary(self) -> bool:
        """True when the active file ends with a whole event (or is empty)."""
        # cri / json-file: unfinished events are held (up to maxEventSize) and an
        # event's lines are written together, so every write ends at a boundary.
        return not self._raw or (not self._stale and self._framer.pending == 0)

    def write(self, stream: str, data: bytes | bytearray, stop: int | None = None) -> None:
        """Append `data` (data[:stop]) read from `stream` (`stdout` / `stderr`; ignored
        for raw)."""
        if not data or stop == 0:
            return
        self._check_time()
        if self._raw:
            try:
                self._write_raw(data, stop)
            except StreamError:
                self.dropped(data, stop)  # the caller drops this chunk
                raise
        else:
            self._write_lines(stream, bytes(data if stop is None else memoryview(data)[:stop]))
            if self._behind is not None:
                # An earlier chunk's failed write (this one is queued: not dropped).
                self._raise_failure()

    def splice_from(self, fd: int, max_bytes: int) -> int:
        """Move up to `max_bytes` from pipe `fd` to the file; 0 at end of input.

        Zero-copy (splice) while no trigger can fire inside the chunk; reads
        and frames the bytes otherwise. Raw format only. An empty non-blocking
        pipe raises BlockingIOError, having moved nothing.
        """
        self._check_time()
        room = self._max_size - self._size if self._max_size else max_bytes
        if (
            not self._raw
            or self._due is not None
            or room <= 0
            or not self._regular
            or self._overlapping_delimiter
            or not self._splice_ok
            or self._skip_left
        ):
            # A cut is pending: read just enough to find the next boundary, then the
            # rest of the pipe can be spliced into the new file.
            if self._due is None:
                peek = max_bytes
            else:
                peek = min(max_bytes, _PEEK_BYTES << min(self._peeks, 4), _PEEK_MAX)
            data = os.read(fd, peek)  # a non-blocking pipe's BlockingIOError: nothing moved
            self._peeks += self._due is not None
            self.drained = len(data) < peek
            if data:
                self.write("stdout", data)
            return len(data)
        asked = min(max_bytes, room)
        try:
            moved = os.splice(fd, self._fd, asked)
        except BlockingIOError:
            raise
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                self._splice_ok = False  # this file system cannot: nothing moved, read instead
                return self.splice_from(fd, max_bytes)
            raise self._write_error(exc) from exc
        if moved:
            self._size += moved
            self.bytes_written += moved
            self._stale = True
            if self._max_size and self._size >= self._max_size:
                self._due = "size"
                self._maybe_cut_now()
        self.drained = moved < asked
        return moved

    def dropped(self, data: bytes | bytearray, stop: int | None = None) -> None:
        """The caller threw `data` (data[:stop]) away because the file could not take
        it (a full disk). Keep the file to whole events: the head of the event the
        chunk continued (a short write, a partial splice) is cut off the file, and
        when the chunk ended inside an event, the rest of that event, which comes
        next, is not written either - it would be a fragment without its head. Raw
        format only (cri / json-file never pass on a partial line)."""
        n = len(data) if stop is None else stop
        if self._raw and n:
            self._cut_back()
            ends_whole = data.endswith(self.policy.delimiter, 0, n)
            self._skip_left = 0 if ends_whole else self._max_event

    def rotate(self, reason: str = "manual") -> None:
        """Cut the active file now if it ends at an event boundary, else at the next one."""
        if self._size == 0:
            return
        self._due = reason
        self._maybe_cut_now()

    def tick(self) -> None:
        """Fire a due time trigger (call when idle; write() checks by itself)."""
        self._check_time()
        if self._due is not None:
            self._maybe_cut_now()

    def seconds_to_next_period(self) -> float | None:
        """How long until the next Hourly/Daily boundary (for a caller's poll timeout)."""
        if self._next_period is None:
            return None
        return max(0.0, (self._next_period - self._clock()).total_seconds())

    def flush(self) -> None:
        """Make what was written so far durable (fsync); held partial lines stay held."""
        self._drain()
        if self._fd >= 0 and self._regular:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise StreamError(
                    f"cannot fsync {self.path}: {exc.strerror}", path=self.path, op="fsync"
                ) from exc

    def close(self) -> None:
        """Write held partial lines as final events, fsync, close; wait for compression."""
        if self._closed:
            return
        try:
            if not self._raw:
                for name, held in self._held.items():
                    if held:  # output that never got its newline is still a whole event
                        self._append(self._encode(name, bytes(held), full=True, ts=self._ts()))
                        held.clear()
            self._drain()
            if self._sync_segments:
                self.flush()
        finally:
            self._closed = True
            if self._behind is not None:
                self._behind.stop()  # every queued write and segment close, in order
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1
            if self._spares is not None:
                self._spares.stop()
            if self._worker is not None:
                self._worker.stop()
        if self._behind is not None:
            self._raise_failure()  # a write that failed while close() drained

    # ------------------------------------------------------------------ raw

    def _write_raw(self, data: bytes | bytearray, stop: int | None = None) -> None:
        """Append data[:stop]. Bytes that no trigger can cut are framed with one search
        from their end and written as they are; only a bounded piece after a trigger
        (while the cut waits for the event end) is framed event by event."""
        if self._stale:
            self._resync()
        n = len(data) if stop is None else stop
        view = memoryview(data)  # pieces are framed and written in place, never copied
        pos = self._skip_fragment(data, n) if self._skip_left else 0
        piece_len = 1024  # the due event usually ends soon: frame little, then more
        while pos < n:
            if self._due is None and (not self._max_size or self._size + n - pos < self._max_size):
                self._framer.last_boundary(data, n, pos)
                self._append(view[pos:n])
                return
            room = self._max_size - self._size
            if self._due is None and room > 0:
                end = min(n, pos + room)  # up to the size trigger: no cut inside
                self._framer.last_boundary(data, end, pos)
                self._append(view[pos:end])
                pos = end
                continue
            if self._due is None and self._max_size and self._size >= self._max_size:
                self._due = "size"
            d = self._delimiter_byte
            if d is not None and self._due is not None:
                # One-byte delimiter: the due event ends at the next delimiter unless
                # maxEventSize cuts it first. Write up to it, cut, and the rest goes out
                # in one write by the branches above.
                if self._framer.pending == 0 and self._size > 0:
                    self._cut(self._due)
                    continue
                k = data.find(d, pos, n)
                if k >= 0 and self._framer.pending + k + 1 - pos <= self._max_event:
                    self._framer.last_boundary(data, k + 1, pos)
                    self._append(view[pos : k + 1])
                    pos = k + 1
                    self._cut(self._due)
                    continue
            piece = data[pos : min(n, pos + piece_len)]
            self._write_framed(piece)
            pos += len(piece)
            piece_len = min(2 * piece_len, _PIECE_MAX)

    def _cut_back(self) -> None:
        """After a failed write, truncate the file to its last whole event: a short
        write or a partial splice can end inside one, and the bytes that should have
        finished it are dropped. Best effort: a file that cannot be truncated stays."""
        if not self._regular or self._fd < 0 or not self._readable:
            return
        self._resync()  # the framer from the file's tail: pending = the cut event's bytes
        keep = self._size - self._framer.pending
        if keep >= self._size:
            return
        try:
            os.ftruncate(self._fd, keep)
            os.lseek(self._fd, keep, os.SEEK_SET)
        except OSError:
            return
        self._size = keep
        self._stale = True  # resynced (to a boundary) at the next write

    def _skip_fragment(self, data: bytes | bytearray, n: int) -> int:
        """Where data[:n] starts to be written when the rest of a dropped event comes
        first: after its delimiter, or n when it goes on past this chunk (at most
        maxEventSize bytes are skipped: past that the event would be cut anyway)."""
        d = self.policy.delimiter
        room = self._skip_left
        k = data.find(d, 0, min(n, room + len(d) - 1))
        if k >= 0:
            self._skip_left = 0
            return k + len(d)
        skipped = min(n, room)
        self._skip_left -= skipped
        return skipped

    def _write_framed(self, data: bytes | bytearray) -> None:
        """Write `data` event by event, cutting at the first event end once a trigger is due."""
        n = len(data)
        at_start = self._framer.pending == 0
        start_abs = self._framer.offset
        ends = [e - start_abs for e in self._framer.feed(bytes(data))]
        pos = 0
        at_b = at_start
        view = memoryview(data)
        while True:
            if self._due is None and self._max_size and self._size >= self._max_size:
                self._due = "size"
            if self._due is not None and at_b and self._size > 0:
                self._cut(self._due)
            if pos >= n:
                break
            if self._due is not None:
                i = bisect.bisect_right(ends, pos)
                end = ends[i] if i < len(ends) else n
            else:
                end = min(n, pos + self._max_size - self._size) if self._max_size else n
            self._append(view[pos:end])
            pos = end
            i = bisect.bisect_left(ends, pos)
            at_b = i < len(ends) and ends[i] == pos

    @property
    def _overlapping_delimiter(self) -> bool:
        d = self.policy.delimiter
        return any(d[:k] == d[-k:] for k in range(1, len(d)))

    def _resync(self) -> None:
        """Rebuild the framer from the file's tail after bytes it did not see (splice,
        a file left by an earlier run): find the last delimiter within maxEventSize
        bytes, reading backwards in bounded blocks, and feed it what follows."""
        self._stale = False
        self._split_base += self._framer.split_count
        self._framer = RawFramer(self.policy.delimiter, self._max_event)
        end = self._size
        if end == 0 or not self._readable:
            return
        d = self.policy.delimiter
        lo = max(0, end - self._max_event)
        start = lo
        pos = end
        # The last event end is usually a few hundred bytes back: read little first
        # (this runs at every cut after a splice), then more.
        step = _FIRST_TAIL_BLOCK
        offset = -1
        while pos > lo:
            block_start = max(lo, pos - step)
            block = os.pread(self._fd, min(end, pos + len(d) - 1) - block_start, block_start)
            k = block.rfind(d)
            if k >= 0:
                start = block_start + k + len(d)
                if block_start + len(block) == end:
                    # The first block (it ends at the end): feed its tail, no second read.
                    self._framer.feed(block[k + len(d) :])
                    offset = end
                break
            pos = block_start
            step = min(step * 4, _TAIL_BLOCK)
        offset = start if offset < 0 else offset
        while offset < end:
            block = os.pread(self._fd, min(_TAIL_BLOCK, end - offset), offset)
            if not block:
                break
            self._framer.feed(block)
            offset += len(block)

    # ----------------------------------------------------- cri / json-file

    def _write_lines(self, stream: str, data: bytes) -> None:
        """Encode each whole line as one event: P pieces of at most `max_line_bytes`,
        then the F rest. Hold an unfinished line up to maxEventSize bytes; past that
        it is cut (counted as split) and written on as P pieces. Between events is
        always a place to rotate.

        The lines wholly inside `data` whose messages fit in one line are encoded
        by whole-chunk C-level passes (`ChunkEncoder`); per event, in Python, go
        only the line that finishes what an earlier chunk held, over-long lines
        and the unfinished tail."""
        held = self._held.get(stream)
        if held is None:
            raise ValueError(f"unknown stream {stream!r}: use stdout or stderr")
        if self._behind is not None:
            # Memory bound for every path (also per-event output, e.g. only long
            # lines): what the write() before last queued must be written by now.
            self._behind.wait_for(self._call_mark)
            self._call_mark = self._behind.submitted
        if self._due is not None:
            self._maybe_cut_now()
        ts = self._ts()
        out = bytearray()
        first = data.find(b"\n")
        if first < 0 or self._due is not None:
            self._lines_per_event(out, stream, data, ts)
            if out:
                self._append(out, owned=True)
            return
        n = len(data)
        end = data.rfind(b"\n") + 1
        start = 0
        if held:  # the event that crosses from the previous chunk
            self._lines_per_event(out, stream, data[: first + 1], ts)
            start = first + 1
        if start < end:
            from logvold.core.chunk_encoding import long_lines  # not for raw

            longs = long_lines(data, start, end, self._max_line)
            for long_start, long_end in [*longs, (end, end)]:
                if start < long_start:
                    self._lines_whole(out, stream, data, start, long_start, ts)
                if long_start < long_end:
                    self._lines_per_event(out, stream, data[long_start:long_end], ts)
                start = long_end
        if end < n:
            self._lines_per_event(out, stream, data[end:], ts)
        if out:
            self._append(out, owned=True)  # not touched again

    def _lines_whole(
        self, out: bytearray, stream: str, data: bytes, start: int, stop: int, ts: int
    ) -> None:
        """Write data[start:stop] (whole lines, all short, none continuing a held one)
        as events, rotating after the event that reaches maxSize like the per-event
        path."""
        assert self._chunks is not None
        # A view, not a slice: the C escaper reads it in place (no copy of the chunk).
        lines = data if (start, stop) == (0, len(data)) else memoryview(data)[start:stop]
        if self._behind is not None:
            # The body goes into the buffer the encode before last used: its writes
            # must be done. At most two chunks are in flight.
            self._behind.wait_for(self._reuse_mark)
            self._reuse_mark = self._behind.submitted
        head, body = self._chunks.encode(stream, ts, lines)
        pos = 0
        end = body.rfind(b"\n") + 1
        out += head
        self._append(out)
        out.clear()
        view = memoryview(body)
        limit = self._max_size
        while limit and self._size + end - pos >= limit:
            # The event after which the file reaches maxSize ends the segment.
            cut = body.find(b"\n", pos + max(limit - self._size, 1) - 1, end) + 1
            self._append(view[pos:cut], owned=True)
            pos = cut
            self._due = "size"
            self._cut("size")
            limit = self._max_size
        if pos < end:
            self._append(view[pos:end], owned=True)

    def _lines_per_event(self, out: bytearray, stream: str, data: bytes, ts: int) -> None:
        """Event by event (see _write_lines); `out` collects what is not written yet."""
        held = self._held[stream]
        limit = self._max_event
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl < 0:
                held += data[pos:]
                while len(held) > limit:
                    self._split_base += 1
                    self._emit_event(out, stream, bytes(held[:limit]), ts, full=False)
                    del held[:limit]
                break
            if held:
                msg = bytes(held) + data[pos:nl]
                held.clear()
            else:
                msg = data[pos:nl]
            pos = nl + 1
            while len(msg) > limit:
                self._split_base += 1
                self._emit_event(out, stream, msg[:limit], ts, full=False)
                msg = msg[limit:]
            self._emit_event(out, stream, msg, ts, full=True)

    def _emit_event(self, out: bytearray, stream: str, msg: bytes, ts: int, *, full: bool) -> None:
        """Queue one event (or, with full=False, the cut-off head of an over-long one)
        as P pieces of `max_line_bytes` plus the F rest; rotate after it when due."""
        line = self._max_line
        last = len(msg) - line if full else len(msg)
        start = 0
        while start < last:
            out += self._encode(stream, msg[start : start + line], full=False, ts=ts)
            start += line
        if full:
            out += self._encode(stream, msg[start:], full=True, ts=ts)
        if self._due is None and self._max_size and self._size + len(out) >= self._max_size:
            self._due = "size"
        if self._due is not None:
            self._append(out)
            out.clear()
            self._cut(self._due)

    def _ts(self) -> int:
        from logvold.core.formats import timestamp_ns  # cri / json-file only

        return timestamp_ns(self._clock())

    def _encode(self, stream: str, msg: bytes, *, full: bool, ts: int) -> bytes:
        from logvold.core.formats import encode_cri_line, encode_json_entry  # not for raw

        if self.policy.format == "cri":
            # One write() stamps all its lines with one time: format it once, not per
            # line (the same bytes encode_cri_line makes; msg never holds a newline).
            if self._cri_prefix_key != (stream, ts):
                head = encode_cri_line(stream, ts, b"")[:-3]  # "<time> <stream> "
                self._cri_prefix = (head + b"P ", head + b"F ")
                self._cri_prefix_key = (stream, ts)
            return self._cri_prefix[full] + msg + b"\n"
        return encode_json_entry(stream, ts, msg + b"\n" if full else msg)

    # ----------------------------------------------------------- rotation

    @property
    def _rotates(self) -> bool:
        return bool(self._max_size) or self.policy.rotate != "Never"

    def _check_time(self) -> None:
        if self._next_period is not None and self._due is None:
            now = self._clock()
            if now >= self._next_period:
                if self._size:
                    self._due = "period"
                else:
                    self._next_period = self._period_after(now)

    def _period_after(self, now: datetime) -> datetime | None:
        """The next Hourly/Daily/fixed period boundary after `now`; None for Never."""
        if self.policy.rotate == "Never":
            return None
        from logvold.core.retention import next_period_boundary

        return next_period_boundary(now, self.policy.rotate, self._tz)

    def _maybe_cut_now(self) -> None:
        if self._due is None:
            return
        if self._size == 0:
            self._due = None
            self._peeks = 0
            return
        if self._raw and self._stale:
            self._resync()
        if self.at_boundary:
            self._cut(self._due)

    def _cut(self, reason: str) -> None:
        """Rename the active file to the next segment name and start a new active file.

        The old file's fsync, the directory fsync, retention and compression
        happen on the maintenance thread: the renamed file holds the same bytes
        the active file held, so deferring its fsync does not change what a
        crash can lose, and the write path never waits for the disk.
        """
        if not self._regular:
            self._due = None
            self._peeks = 0
            return
        now = self._clock()
        name = next_segment_name(self._base, now, [self._newest] if self._newest else [])
        seg_path = f"{self._dir}/{name.filename}"  # strings: no Path per rotation
        suffixes = ("",) if self.policy.compress == "none" else ("", ".gz", ".zst")
        if any(_taken(seg_path + sfx) for sfx in suffixes):
            # Someone else made this name: step past every segment on disk.
            name = next_segment_name(self._base, now, self._list_segments())
            seg_path = f"{self._dir}/{name.filename}"  # strings: no Path per rotation
        try:
            os.replace(self.path, seg_path)  # noqa: PTH105 - a str path, on the hot path
        except OSError as exc:
            raise StreamError(
                f"cannot rotate {self.path} to {seg_path}: {exc.strerror}",
                path=self.path,
                op="rotate",
            ) from exc
        old_fd, size = self._fd, self._size
        self._fd = -1
        self._newest = name
        self._due = None
        self._peeks = 0
        self._next_period = self._period_after(now)
        self.rotations += 1
        # The framer carries on: the new file starts at the cut, a boundary.
        # Nothing else to do for the old segment (no fsync, no retention): the spares'
        # thread closes it, woken once per rotation for both.
        behind = self._behind
        spares_close = (
            behind is None
            and self._spares is not None
            and not self._sync_segments
            and not self._retains
        )
        if not self._take_spare(close_fd=old_fd if spares_close else -1):
            self._open_fresh()
        if behind is not None:
            # After the old segment's queued writes: its fd is closed (or handed to
            # the maintenance thread, whose retention may compress it) only then.
            behind.call(lambda: self._dispose(old_fd))
        elif not spares_close:
            self._dispose(old_fd)
        if self._on_rotate is not None:
            self._drain()  # the callback may read the segment: it is complete
            self._on_rotate(
                RotatedSegment(path=seg_path, name=name, size_bytes=size, reason=reason)
            )

    def _dispose(self, old_fd: int) -> None:
        """A rotated segment's fd: sync and close, on the maintenance thread if any."""
        if self._worker is not None:
            # Even a bare close can take a file system a millisecond: not on this thread.
            self._worker.submit(old_fd if self._sync_segments else _Close(old_fd))
        elif self._sync_segments:
            _sync_and_close(old_fd, self._dir)
        else:
            os.close(old_fd)

    # --------------------------------------------------------------- files

    def _open_active(self, *, existing_ok: bool) -> None:
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        if not existing_ok:
            flags |= os.O_EXCL
        try:
            try:
                self._fd = os.open(self.path, flags | os.O_RDWR, 0o644)
                self._readable = True
            except PermissionError:
                self._fd = os.open(self.path, flags | os.O_WRONLY, 0o644)
                self._readable = False
            st = os.fstat(self._fd)
        except OSError as exc:
            raise StreamError(
                f"cannot open log file {self.path}: {exc.strerror}",
                path=self.path,
                op="open",
            ) from exc
        self._regular = stat.S_ISREG(st.st_mode)
        self._size = st.st_size if self._regular else 0
        self._stale = self._size > 0
        if self._regular:
            # We are this file's only writer: write at our own end-of-file position
            # (O_APPEND opened it there) so splice(2), which refuses O_APPEND, can too.
            fcntl.fcntl(
                self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_APPEND
            )
            os.lseek(self._fd, 0, os.SEEK_END)

    def _open_fresh(self) -> None:
        """Create the next active file at a cut (its name was just renamed away): one
        open(2), without O_APPEND, so nothing to switch off. Creations that keep
        proving slow start the spare-file thread, which makes them ahead from then on."""
        started = time.monotonic()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError:
            self._open_active(existing_ok=False)  # its error names the file and the cause
            return
        self._fd, self._readable, self._regular = fd, True, True
        self._size, self._stale = 0, False
        if self._may_spare and time.monotonic() - started > _SLOW_CREATE_S:
            self._slow_creates += 1
            if self._slow_creates == _SLOW_CREATES:
                self._spares = SpareFiles(self.path)  # later cuts take its files

    def _take_spare(self, close_fd: int = -1) -> bool:
        """Make a pre-made spare the active file; False when there is none.
        `close_fd` is closed in the background either way."""
        if self._spares is None:
            return False
        fd = self._spares.take(self.path, close_fd=close_fd)
        if fd < 0:
            return False
        self._fd, self._readable, self._regular = fd, True, True
        self._size, self._stale = 0, False
        return True

    def _append(self, data: bytes | bytearray | memoryview, *, owned: bool = False) -> None:
        """Write `data` (queue it, with write-behind: `owned` says the caller will not
        change it until the encode after next; anything else is copied first)."""
        behind = self._behind
        if behind is not None:
            if not owned:
                data = bytes(data)  # heads and per-event pieces: small
            n = memoryview(data).nbytes
            behind.write(self._fd, data)
            self._size += n
            self.bytes_written += n
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self._size += written
                self.bytes_written += written
        except OSError as exc:
            raise self._write_error(exc) from exc

    def _drain(self) -> None:
        """Wait for every queued write; raise the first that failed."""
        if self._behind is not None:
            self._behind.drain()
            self._raise_failure()

    def _raise_failure(self) -> None:
        assert self._behind is not None
        failure = self._behind.take_error()
        if failure is None:
            return
        if failure.fd == self._fd:  # counted at submit time, never written
            self._size -= failure.lost
            self.bytes_written -= failure.lost
        raise self._write_error(failure.error) from failure.error

    def _write_error(self, exc: OSError) -> StreamError:
        """The error a failed write (in place, spliced or behind) raises to the caller."""
        return StreamError(f"cannot write {self.path}: {exc.strerror}", path=self.path, op="write")

    def _list_segments(self) -> list[SegmentName]:
        return segments_of(self._base, self._dir_names())

    def _dir_names(self) -> list[str]:
        try:
            return os.listdir(self._dir)  # noqa: PTH208 - names only, no stat per entry
        except OSError:
            return []

    def _retention_pass(self) -> None:
        """Apply maxFiles / maxAge and compress: runs on the maintenance thread."""
        from pathlib import Path

        from logvold.core.retention import SegmentFile, plan_retention

        directory = Path(self._dir)
        segments: list[SegmentFile] = []
        for name in self._list_segments():
            try:
                size = (directory / name.filename).stat().st_size
            except FileNotFoundError:
                continue
            segments.append(SegmentFile(name=name, size_bytes=size))
        plan = plan_retention(segments, self._size, self.policy, self._clock())
        for name in plan.delete:
            try:
                (directory / name.filename).unlink()
                _log().info("removed segment %s (%s)", name.filename, plan.reasons.get(name.stem))
            except FileNotFoundError:
                pass
            except OSError as exc:
                _log().warning("cannot remove segment %s: %s", name.filename, exc)
        if self.policy.compress != "none":
            from logvold.fileio.compress import compress_segment  # gzip / zstd: only if used

            for name in plan.compress:
                try:
                    compress_segment(str(directory / name.filename), self.policy.compress)
                except StreamError as exc:
                    _log().warning("%s", exc)


def _taken(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _log() -> logging.Logger:
    """This module's logger; `logging` is imported by the first line written."""
    import logging

    return logging.getLogger(__name__)


def _sync_and_close(fd: int, directory: str) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        _log().warning("cannot fsync a closed segment in %s: %s", directory, exc)
    finally:
        os.close(fd)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        _log().warning("cannot fsync directory %s: %s", directory, exc)


@dataclass(frozen=True)
class _Close:
    """Maintenance job: close a just-rotated segment's descriptor (no fsync)."""

    fd: int


class _Maintenance:
    """One background thread: fsync closed segments, then retention and compression."""

    def __init__(self, writer: RotatingWriter) -> None:
        self._writer = writer
        self._jobs: queue.SimpleQueue[int | object | None] = queue.SimpleQueue()
        self._stop = object()
        self._thread = threading.Thread(target=self._run, name="logvold-segments", daemon=True)
        self._thread.start()

    def submit(self, job: int | object | None) -> None:
        """A rotated segment's fd to sync and close (-1: none) or `_Close` it, or None
        (retention only)."""
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(self._stop)
        self._thread.join()

    def _run(self) -> None:
        writer = self._writer
        stopping = False
        while not stopping:
            jobs = [self._jobs.get()]
            while not self._jobs.empty():
                jobs.append(self._jobs.get())
            for job in jobs:
                if job is self._stop:
                    stopping = True
                elif isinstance(job, _Close):
                    os.close(job.fd)
                elif isinstance(job, int) and job >= 0:
                    _sync_and_close(job, writer._dir)
            # One retention pass covers every rotation queued so far.
            rotated = (isinstance(job, int | _Close) or job is None for job in jobs)
            if writer._retains and any(rotated):
                try:
                    writer._retention_pass()
                except Exception:  # a bug here must not stop the writer
                    _log().exception("retention pass failed for %s", writer.path)
