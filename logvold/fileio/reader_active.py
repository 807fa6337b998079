"""The stream reader's cursor over the active file: reads by LOGICAL offset, checks each
read against the state file, and follows the file through punch, collapse, rename,
compression, truncation and removal."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Literal, Protocol

from logvold.core.layout import segments_of
from logvold.core.steps import CollapseStep, CopytruncateStep, PunchStep
from logvold.fileio.reader_dir import StreamDir
from logvold.fileio.reader_events import (
    READ_BYTES,
    Assembler,
    Event,
    Splitter,
    pread_all,
    read_compressed,
    skip_bytes,
)
from logvold.fileio.state import SegmentRecord, StreamState

log = logging.getLogger(__name__)


class StreamContext(Protocol):
    """What the cursor needs of its stream reader (fileio.reader.StreamReader is one).

    A protocol rather than an import of StreamReader, so that reader.py -> reader_active.py
    is the only direction between the two modules (no import cycle, not even for types).
    """

    directory: Path
    base: str
    fmt: str
    delimiter: bytes
    max_record: int
    files: StreamDir
    busy_limit_s: float
    gone_grace_s: float
    more_ready: bool

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def stop(self) -> Callable[[], bool]: ...

    def current_state(self) -> StreamState | None: ...

    def held_bytes(self, stem: str, fd: int | None) -> int | None: ...

    def block_events(self, block: bytes, base: int, assembler: Assembler) -> Iterator[Event]: ...


class ActiveCursor:
    """Reads the active file by LOGICAL offset, validated against the state file, and
    follows it through punch, collapse, rename, compression, truncation and removal."""

    def __init__(self, reader: StreamContext, state: StreamState | None, fd: int | None) -> None:
        self.r = reader
        self.path = reader.directory / reader.base
        self.fd: int | None = None
        self.ino = 0
        self.dev = 0
        self.collapsed = 0
        self.physical_start = 0
        self.skip: frozenset[str] = frozenset()
        self.stale_state: StreamState | None = None
        self.read_full = False
        """The last read filled a whole block: more is probably waiting."""
        self.last_bytes: tuple[int, bytes] = (0, b"")
        """The end offset and last bytes of what was read: recognise a copy of them."""
        self.truncation: CopytruncateStep | None = None
        """The last copytruncate marker seen: where the bytes before a truncation went."""
        self._open(state, fd)
        logical = self.physical_start + self.collapsed
        self.splitter = Splitter(reader.delimiter, logical, reader.max_record)
        self.assembler = Assembler(reader.fmt, self.skip)
        self.gone_since: float | None = None
        self.busy_since: float | None = None

    def _open(self, state: StreamState | None, fd: int | None) -> None:
        self.fd = fd
        self.skip = frozenset()
        if fd is None:
            return
        st = os.fstat(fd)
        self.ino, self.dev = st.st_ino, st.st_dev
        if (
            state is not None
            and state.inode == st.st_ino
            and state.device == st.st_dev
            and state.physical_committed > st.st_size
        ):
            # Truncated behind the rotator's back: this state describes bytes that are no
            # longer there. Read the file as it is until the rotator writes a new state.
            log.warning("%s is shorter than its committed offset; ignoring its state", self.path)
            self.stale_state = state
            state = None
        if state is not None and state.inode == st.st_ino and state.device == st.st_dev:
            self.collapsed = state.collapsed_bytes
            start = state.physical_committed
            now = self.r.current_state()
            if (
                now is not None
                and (now.inode, now.device) == (st.st_ino, st.st_dev)
                and now.committed_offset > state.committed_offset
            ):
                # Cut and punched since `state` was read: a hole at `start` now holds
                # events that are in segments, which the first step reads from there.
                # Skipping the hole would drop them.
                self.physical_start = start
                return
        else:
            self.collapsed = 0
            start = 0
            state = None
        self.physical_start = self._skip_hole(start, st.st_size)
        if self.physical_start != start and self._moved_since(state):
            # The rotator committed (and punched, or collapsed) after `state` was read and
            # before the hole was looked for: the hole holds events that are in segments
            # now, not a gap. Start at `start`; the first step reads them from there.
            self.physical_start = start
            self.skip = frozenset()

    def _moved_since(self, state: StreamState | None) -> bool:
        """Whether this file's state now differs from `state` (None: no state of this
        file) in what places its bytes. A punch or collapse follows the save of the state
        that permits it, so reading the state after the hole closes the race."""
        now = self.r.current_state()
        if now is None or (now.inode, now.device) != (self.ino, self.dev):
            return False
        if now == self.stale_state:
            return False  # the state this file was truncated behind: not a placement
        if state is None:
            return True
        return (now.committed_offset, now.collapsed_bytes, now.intent) != (
            state.committed_offset,
            state.collapsed_bytes,
            state.intent,
        )

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
        # Landed inside an event: start after the first (cut) record, and for cri/json-file
        # drop the first event of each stream too, since its head may be in the hole.
        pos = data + nuls
        streams = {"stdout", "stderr"} if self.r.fmt != "raw" else set()
        d = self.r.delimiter
        block = os.pread(self.fd, min(self.r.max_record, max(0, size - pos)), pos)
        k = block.find(d)
        if k >= 0:
            self.skip = frozenset(streams)
            return pos + k + len(d)
        self.skip = frozenset(streams | {"*"})  # its end is not written yet: drop it later
        return pos

    def seek(self, logical: int, skip: frozenset[str]) -> None:
        self.splitter.reset(logical)
        self.assembler = Assembler(self.r.fmt, skip)

    def physical_size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _emit(self, data: bytes) -> Iterator[Event]:
        block, base = self.splitter.feed_block(data)
        if block:
            self.last_bytes = (base + len(block), block[-64:])
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
                if self.read_full:  # a backlog: let the caller act between blocks
                    r.more_ready = True
                    yield None
                continue
            if got == "busy":
                if not follow and self._busy_too_long():
                    return
                yield None
                continue
            self.busy_since = None
            if not follow:
                return
            if self._rotated():
                yield from self._drain()
                self.close()
                self._open(self.r.current_state(), self.r.files.open_active())
                self.seek(self.physical_start + self.collapsed, self.skip)
                continue
            yield None

    def _busy_too_long(self) -> bool:
        """A read without follow waits for a rotation step in flight at most
        `busy_limit_s`: a step marker left behind (a crash, a daemon that is not running)
        would otherwise keep it open forever. It ends with what is committed (the
        segments, already served), and says so."""
        now = self.r.clock()
        if self.busy_since is None:
            self.busy_since = now
        if now - self.busy_since < self.r.busy_limit_s:
            return False
        log.warning(
            "%s: a rotation step marker stayed pending for %.0f s; the read ends at "
            "the committed offset",
            self.path,
            now - self.busy_since,
        )
        return True

    def _step(self) -> Generator[Event, None, Literal["data", "eof", "busy"]]:
        """One bounded read: "data" (bytes consumed), "eof" or "busy" (a rotation step
        is in flight; look again after a poll)."""
        assert self.fd is not None
        st = self._matching_state()
        if st is not None and isinstance(st.intent, PunchStep | CollapseStep | CopytruncateStep):
            if isinstance(st.intent, CopytruncateStep):
                self.truncation = st.intent
            return "busy"
        emitted = self.splitter.emitted
        if st is not None and st.committed_offset > emitted:
            yield from self._from_segments(st, emitted)
            return "data"
        collapsed = st.collapsed_bytes if st is not None else self.collapsed
        physical = self.splitter.consumed - collapsed
        size = os.fstat(self.fd).st_size
        if physical > size or self._rewritten(st, collapsed):
            if self._matching_state() != st:
                # The rotator collapsed (or punched) since `st` was read: the size and bytes
                # seen belong to the new layout, not to a truncation. Look again.
                return "busy"
            # Truncated under us (copytruncate or by hand), maybe written past us again.
            # A new generation: the state that described the old bytes (committed offset,
            # segments) says nothing about these, and following it would replay the old
            # events in a loop. It is ignored until the rotator writes a new one.
            if st is not None:
                self.stale_state = st
            yield from self._after_truncation()
            return "data"
        # Only what is there: a 1 MiB buffer per poll would be an mmap/munmap each time.
        data = (
            os.pread(self.fd, min(READ_BYTES, size - physical), physical)
            if physical < size
            else b""
        )
        self.read_full = len(data) == READ_BYTES
        if not data:
            return "eof"
        if self._matching_state() != st:
            return "busy"  # the file changed under the read: discard and look again
        self.collapsed = collapsed
        yield from self._emit(data)
        return "data"

    def _matching_state(self) -> StreamState | None:
        st = self.r.current_state()
        if st is None or st.inode != self.ino or st.device != self.dev or st == self.stale_state:
            return None
        return st

    def _from_segments(self, st: StreamState, emitted: int) -> Iterator[Event]:
        """A punch passed our position: the bytes from `emitted` on are in segments now."""
        self.splitter.reset(emitted)
        for rec in st.segments:
            if rec.logical_end <= emitted:
                continue
            opened = self.r.files.open_segment(rec.stem)
            if opened is None:
                continue
            seg_fd, compression = opened
            fd = None if compression else seg_fd
            start = self._placed_start(rec, fd)
            if start > self.splitter.consumed:
                log.warning(
                    "%s: events %d..%d were removed before a follower read them",
                    self.path,
                    self.splitter.consumed,
                    start,
                )
                self.splitter.reset(start)
                self.assembler.reset()
            skip = self.splitter.consumed - start
            want = rec.logical_end - self.splitter.consumed
            if fd is not None:
                try:
                    chunks: Iterator[bytes] = pread_all(fd, skip, skip + want)
                    for chunk in chunks:
                        yield from self._emit(chunk)
                finally:
                    os.close(fd)
            else:
                for chunk in skip_bytes(read_compressed(seg_fd, compression), skip):
                    yield from self._emit(chunk[: rec.logical_end - self.splitter.consumed])
                    if self.splitter.consumed >= rec.logical_end:
                        break
        if self.splitter.consumed < st.committed_offset:
            self.splitter.reset(st.committed_offset)
            self.assembler.reset()
        self.collapsed = st.collapsed_bytes

    def _placed_start(self, rec: SegmentRecord, fd: int | None) -> int:
        """Where the segment's bytes begin now: retention may have trimmed its head since
        `rec` was read."""
        held = self.r.held_bytes(rec.stem, fd)
        return rec.logical_start if held is None else max(rec.logical_start, rec.logical_end - held)

    def _after_truncation(self) -> Iterator[Event]:
        """Read what the copytruncate copied (if we saw its intent), then start over at 0."""
        t, self.truncation = self.truncation, None
        emitted = self.splitter.emitted
        if t is not None and t.start <= emitted < t.end:
            copied = StreamState(
                device=self.dev,
                inode=self.ino,
                committed_offset=t.end,
                segments=(SegmentRecord(t.stem, t.start, t.end),),
            )
            yield from self._from_segments(copied, emitted)
        elif (copy := self._copy_of_what_was_read(emitted)) is not None:
            yield from self._from_segments(copy, emitted)
        else:
            log.info("%s was truncated; reading it from its start", self.path)
        self.splitter.reset(0)
        self.assembler.reset()
        self.collapsed = 0

    def _rewritten(self, st: StreamState | None, collapsed: int) -> bool:
        """Whether the bytes just before our position are no longer those we read there
        (a truncation that the writer has already filled past us). One small pread."""
        assert self.fd is not None
        end, tail = self.last_bytes
        if end != self.splitter.emitted or not tail:
            return False
        lo = max(end - len(tail), st.committed_offset if st is not None else 0)
        if lo >= end:
            return False  # all of it is committed (maybe punched): nothing to compare
        return os.pread(self.fd, end - lo, lo - collapsed) != tail[len(tail) - (end - lo) :]

    def _copy_of_what_was_read(self, emitted: int) -> StreamState | None:
        """The newest plain segment, if it holds the file as it was before the truncation
        (its bytes before `emitted` are the very bytes this cursor read there)."""
        end, tail = self.last_bytes
        if end != emitted or not tail:
            return None
        names = segments_of(self.r.base, self.r.files.names())
        if not names or names[-1].compression:
            return None
        stem = names[-1].stem
        fd = self.r.files.open_file(stem)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < emitted or os.pread(fd, len(tail), emitted - len(tail)) != tail:
                return None
        finally:
            os.close(fd)
        return StreamState(
            device=self.dev,
            inode=self.ino,
            committed_offset=size,
            segments=(SegmentRecord(stem, 0, size),),
        )

    def _rotated(self) -> bool:
        return self.r.files.active_id() != (self.ino, self.dev)

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
        self.r.files.rewalk()  # the directory itself may have been replaced
        self._open(self.r.current_state(), self.r.files.open_active())
        if self.fd is not None:
            self.gone_since = None
            self.seek(self.physical_start + self.collapsed, self.skip)
            return False
        now = self.r.clock()
        if self.gone_since is None:
            self.gone_since = now
        return now - self.gone_since >= self.r.gone_grace_s
