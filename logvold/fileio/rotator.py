"""Rotation and retention of a file written by a FOREIGN process, crash-safely.

Strategies (policy.strategy):
- punch (default, lossless): cut the whole events in [committed, last
  boundary) into pieces of at most maxSize (core/pieces.py: a piece ends at the
  last boundary <= its start + maxSize, or after one bigger event); each piece
  is copied into a new segment (tmp, fsync, rename, dir fsync), the committed
  offset saved, then those bytes PUNCH_HOLEd in place, before the next piece
  (so every intent below covers one piece); the writer's offset never moves.
  A step cuts at most MAX_PIECES_PER_STEP / MAX_BYTES_PER_STEP /
  MAX_SECONDS_PER_STEP and reports `more_work`. Holes (SEEK_DATA/SEEK_HOLE)
  are never read: one at the committed offset is committed without a segment
  (truncation reason `hole`), one after data ends the piece before it. Pieces
  are lowered to the volume's free space (fstatvfs) less a reserve. With
  O_APPEND writers (or `collapse: always`) COLLAPSE_RANGE later removes the
  punched block-aligned prefix so the apparent size shrinks.
- rename: rename the file to the segment name, create an empty active file
  and run the reopen action (signal to a pid file or an argv, never a shell).
- copytruncate (legacy, lossy): copy in maxSize pieces (each committed), then
  ftruncate(0) once the whole backlog is copied; bytes written between the
  copy and the truncate are counted in logvold_copytruncate_lost_bytes_total.
  A step cut short (limits, free space: nothing is freed before the truncate,
  so a step's pieces fit in the free space) truncates at a later step.
- rename, bound: not split. The renamed file stays one segment because the writer
  may append to it until it reopens (no end to cut at), so its size is
  whatever the file had at the rename plus what the writer added before
  reopening; bound it with a reopen action and a low maxSize.

Crash safety: every multi-step change writes an intent into the state file
first, and `recover()` finishes or undoes it, idempotently:
- punch: `{op, stem, start, end}` (logical). `<stem>.tmp` is deleted. A
  renamed `<stem>` of exactly end-start bytes while committed == start is
  committed (roll forward); any other `<stem>` is deleted (roll back, the
  bytes are still in the active file because punching happens only after the
  commit is saved). After every recovery `[0, align(committed))` is punched
  again, which frees what a crash between commit and punch left allocated.
- pieces (punch, a batch of up to BATCH_PIECES pieces): `{op, pieces: [[stem,
  start, end], ...]}`. Each segment is written (tmp, fsync, rename), then one
  directory fsync, one commit, one punch. Recovery commits the longest prefix
  of pieces whose `<stem>` exists with exactly end-start bytes and starts at
  the committed offset, and deletes the segments after it (their bytes were
  not punched).
- collapse: `{op, length, collapsed_before}`. Before the intent is saved,
  `[0, length)` is punched, so it is a hole. After a crash, SEEK_DATA(0) tells:
  if the collapse ran, physical 0 holds former byte `length`, which is data
  (it lies in the unpunched block of the committed offset, before EOF); if it
  did not, the first data is at or after `length`.
- rename: `{op, stem, device, inode}`: if `<stem>` exists and the active file
  is another inode (or gone), the rename happened: finish it (create the
  active file, new state, reopen again: reopening twice is harmless).
- copytruncate: `{op, stem, start, end, physical_end}`: a finished segment
  with the active file still >= physical_end means the truncate did not run,
  so committed moves to `end` and the next copy starts there.
- trim (retention cuts a plain segment's head): `{op, stem, size}`: a `<stem>`
  of `size` bytes means the trimmed copy replaced it, so its record now starts
  `size` bytes before its (unchanged) logical end; otherwise nothing happened.

A corrupt state file (StateError) is moved aside (`.corrupt`) and the
committed offset rebuilt from the files without duplicating (state_rebuild.py).
A file the writer truncated (size < committed) or rewrote / recreated with a
reused inode number (the unpunched bytes just before the committed offset no
longer equal the newest segment's end) restarts at 0 and is never punched.
Retention that must drop the head of the active file advances the committed
offset to the first event end >= the planned cut and punches, writing no
segment. ENOSPC (or any I/O error) before the commit removes the tmp segment,
clears the intent and raises a retriable StreamError; errors after the commit
(punch, collapse) are logged and counted, and the next call settles them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from logvold.core.clock import utcnow
from logvold.core.framing import last_boundary_backward, make_framer
from logvold.core.layout import (
    STATE_DIR_NAME,
    SegmentName,
    next_segment_name,
    segments_of,
    state_file_name,
)
from logvold.core.pieces import (
    BATCH_BYTES,
    BATCH_PIECES,
    FREE_SPACE_RESERVE,
    MAX_BYTES_PER_STEP,
    MAX_PIECES_PER_STEP,
    MAX_SECONDS_PER_STEP,
    Piece,
    iter_pieces,
    piece_cap,
)
from logvold.core.retention import RetentionPlan, SegmentFile, period_start, plan_retention
from logvold.core.values import time_zone
from logvold.errors import ReopenFailed, StateError, StreamError
from logvold.fileio import stream_files as sf
from logvold.fileio.compress import CompressionInterrupted, compress_in
from logvold.fileio.refusals import Refusals
from logvold.fileio.reopen import Reopener
from logvold.fileio.safedir import SafeDir, UnsafeFile, open_stream_dir, plain_name
from logvold.fileio.state import SegmentRecord, StreamState, load_state_in, save_state_in
from logvold.fileio.state_rebuild import rebuild_state

if TYPE_CHECKING:
    from logvold.core.streams import StreamInfo
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_READ_CHUNK = 2**20


def _never() -> bool:
    return False


def _punched_head(fd: int, st: os.stat_result) -> bool:
    """Whether the file's head was punched (a leading hole) or zeroed (a clean stop)."""
    if st.st_size == 0:
        return False
    try:
        if os.lseek(fd, 0, os.SEEK_DATA) > 0:
            return True
    except OSError as e:
        if e.errno == errno.ENXIO:
            return True  # all hole
        raise
    return os.pread(fd, 1, 0) == b"\0"


def _data_extent(fd: int, pos: int, size: int) -> tuple[int, int]:
    """(first data offset >= pos, first hole offset after it), both capped at `size`, from
    SEEK_DATA/SEEK_HOLE: a sparse file's holes are skipped, never read as zeroes. Where
    the filesystem cannot tell, everything is data."""
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return size, size  # only a hole up to the end
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return pos, size
        raise
    if data >= size:
        return size, size
    try:
        hole = os.lseek(fd, data, os.SEEK_HOLE)
    except OSError as e:
        if e.errno not in (errno.ENXIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        hole = size
    return data, min(hole, size)


def _past_zeros(fd: int, data: int, end: int, block: int) -> int:
    """The first non-NUL byte in [data, data + block) (SEEK_DATA answers in blocks: the
    block after a hole starts with the zeroes up to the writer's first byte)."""
    head = os.pread(fd, min(block, end - data), data)
    return data + len(head) - len(head.lstrip(b"\0"))


def _before_zeros(fd: int, start: int, hole: int, block: int) -> int:
    """The end of the last non-NUL byte in [hole - block, hole): the partial block before
    a hole (a `truncate` past the end) holds zeroes after the last written byte."""
    lo = max(start, hole - block)
    tail = os.pread(fd, hole - lo, lo)
    return lo + len(tail.rstrip(b"\0"))


def _live_extent(fd: int, p: int, size: int, block: int) -> tuple[int, int]:
    """`_data_extent` with the zeroes of the partial blocks around a hole counted as hole:
    (data, hole) with data > p when [p, data) is to be skipped, else [p, hole) is data and
    a hole (hole < size) or the end of the file follows."""
    data, hole = _data_extent(fd, p, size)
    if data == p and hole < size:
        end = _before_zeros(fd, p, hole, block)
        if end > p:
            return p, end
        data, hole = _data_extent(fd, hole, size)  # only zeroes up to the hole
    if data > p:
        data = _past_zeros(fd, data, hole, block)
    return data, hole


@dataclass
class _Run:
    """What one rotation step cut (mutable, private to the step)."""

    started: float
    cuts: list[RotationResult] = field(default_factory=list)
    copied: int = 0
    holes: int = 0
    more: bool = False
    failed: bool = False

    def result(
        self, reason: str, strategy: str, *, collapsed: int = 0, lost: int = 0
    ) -> RotationResult:
        first = self.cuts[0] if self.cuts else None
        last = self.cuts[-1] if self.cuts else None
        return RotationResult(
            reason=reason,
            strategy=strategy,
            segment=last.segment if last else "",
            logical_start=first.logical_start if first else 0,
            logical_end=last.logical_end if last else 0,
            bytes_freed=sum(c.bytes_freed for c in self.cuts),
            collapsed_bytes=collapsed,
            lost_bytes=lost,
            last_write_ns=last.last_write_ns if last else 0,
            cuts=tuple(self.cuts),
            more_work=self.more,
            hole_bytes=self.holes,
        )


@dataclass(frozen=True, kw_only=True)
class RotationResult:
    """One committed rotation."""

    reason: str
    strategy: str
    """The strategy actually applied (punch may fall back to rename)."""
    segment: str
    """File name of the new segment, inside the stream directory."""
    logical_start: int
    logical_end: int
    """Logical bytes [start, end) of the active file now in `segment` (rename: size at rename)."""
    bytes_freed: int = 0
    """Bytes punched out of the active file (block-aligned part of the cut)."""
    collapsed_bytes: int = 0
    """Bytes removed from the active file's head by COLLAPSE_RANGE in this rotation."""
    lost_bytes: int = 0
    """copytruncate only: bytes written after the copy, gone with the truncate."""
    last_write_ns: int = 0
    """The active file's mtime at the cut (0: the segment keeps its own, rename)."""
    cuts: tuple[RotationResult, ...] = ()
    """The pieces of this step, one segment each, oldest first (core/pieces.py); empty for
    rename and for a step that only skipped a hole. `segment`, `logical_start/end` and
    `bytes_freed` above then describe all of them together (the last segment's name)."""
    more_work: bool = False
    """The step stopped at its limits (pieces, bytes, seconds, stop) with backlog left:
    the caller should queue another step."""
    hole_bytes: int = 0
    """Bytes of holes (SEEK_HOLE) skipped at the committed offset: never copied."""


@dataclass(frozen=True, kw_only=True)
class RetentionResult:
    """What enforce_retention did."""

    deleted: tuple[str, ...] = ()
    """Segment file names removed, oldest first."""
    reasons: Mapping[str, str] = field(default_factory=dict)
    """Segment stem -> maxAge | maxFiles | maxTotalSize | budget."""
    dropped_active_bytes: int = 0
    """Bytes of whole events dropped from the active file's head (no segment written)."""
    trimmed_segment: str | None = None
    bytes_freed: int = 0
    compress_pending: tuple[str, ...] = ()
    """Plain segments the plan wants compressed: call compress_pending() from a worker."""


class StreamRotator:
    """Rotates and trims one stream's active file; one caller at a time.

    `punch_supported`: None = probe the filesystem once; False forces the
    rename fallback (tests). `collapse_min_bytes`: collapse only once this
    much punched prefix has accumulated (collapse takes the inode lock and
    shifts extents, so it is batched); None = min(64 MiB, 4 * maxSize).
    """

    def __init__(
        self,
        info: StreamInfo,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        *,
        punch_supported: bool | None = None,
        collapse_min_bytes: int | None = None,
    ) -> None:
        plain_name(info.base)
        self.info = info
        self.policy = info.policy
        self.metrics = metrics
        self.clock = clock
        self._labels = (info.key.namespace, info.key.pod, info.key.container)
        self._punch_ok = punch_supported
        self._collapse_ok = True
        mx = self.policy.max_size_bytes
        self._collapse_min = (
            collapse_min_bytes
            if collapse_min_bytes is not None
            else min(64 * 2**20, 4 * mx)
            if mx > 0
            else 64 * 2**20
        )
        self._state: StreamState | None = None
        self._recovered = False
        self._anchor: datetime | None = None
        self._warned: set[str] = set()
        self._punch_from_zero = False
        self._dir: SafeDir | None = None
        self._refusals = Refusals(info.key, metrics, str(info.directory))
        self._episode = self._refusals.episode
        self._refuse = self._refusals.refuse
        self.abandon_copy: Callable[[], bool] = _never
        """Polled between copy chunks: True abandons the copy before its commit (clean
        rollback), so a stop past its deadline never waits for a huge backlog."""
        self.abandon_compress: Callable[[], bool] = _never
        self.reopener: Reopener | None = None
        """How to ask the writer to reopen after a rename (the daemon's runner.reopen)."""
        """Polled between compressed blocks: True abandons compression (kept plain)."""
        self.stop_pieces: Callable[[], bool] = _never
        """Polled between the pieces of a step: True ends the step after the piece cut
        (the daemon is stopping; the rest is cut by the next run)."""
        self._last_name: SegmentName | None = None

    # ------------------------------------------------------------------ public API

    @property
    def directory(self) -> Path:
        """The stream directory, for messages: it is never opened by this path."""
        return self.info.directory

    @property
    def state(self) -> StreamState | None:
        """The last loaded or saved state (None before the first operation or without a file)."""
        return self._state

    def recover(self) -> None:
        """Finish or undo the intent a crash left, then free what a crash left allocated.

        A refused directory (symlinked component, symlinked `.logvold`) leaves the stream
        unrecovered: no step runs on it until the refusal ends."""
        try:
            with self._episode("recover") as ep, self._opened() as d:
                self._recover(d)
            if ep.refused:
                return
        except FileNotFoundError:
            pass
        except OSError as e:
            self._io_error("recover", e)
            raise StreamError(
                f"cannot recover stream {self.info.key} in {self.directory}: {e.strerror}",
                path=str(self.info.active_path),
                op="recover",
            ) from e
        self._recovered = True

    def rotate(self, reason: str) -> RotationResult | None:
        """Cut the active file at its last event boundary; None if nothing whole to cut.

        Raises StreamError (retriable: nothing was committed) on I/O errors such as ENOSPC.
        A refused file (UnsafeFile) is counted, logged once per episode, and not rotated.
        """
        if not self._recovered:
            self.recover()
            if not self._recovered:
                return None
        result = None
        try:
            with self._episode("rotate"), self._opened() as d:
                if self._state is not None and self._state.intent is not None:
                    self._recover(d)  # a failed step left an intent: settle it first
                opened = self._open_active(d)
                if opened is None:
                    return None
                fd, st = opened
                try:
                    result = self._rotate(d, fd, st, reason)
                finally:
                    os.close(fd)
        except FileNotFoundError:
            return None
        except StreamError:
            if self.metrics:
                self.metrics.rotation_failures.labels(*self._labels, "io").inc()
            raise
        except (OSError, StateError) as e:
            self._fail(e, "rotate")
        if result is not None:
            self._anchor = self.clock()
            cuts = result.cuts or ((result,) if result.segment else ())
            if self.metrics:
                if cuts:
                    self.metrics.rotations.labels(*self._labels, reason, result.strategy).inc(
                        len(cuts)
                    )
                if result.bytes_freed:
                    self.metrics.bytes_freed.labels(*self._labels, "rotate").inc(result.bytes_freed)
            for cut in cuts:
                self._after_cut(cut)  # after the counters: they move right at the commit
            self._update_gauges()
        return result

    def _after_cut(self, result: RotationResult) -> None:
        """Stamp the segment with its last write time; count its bytes and events."""
        from logvold.fileio.segment_stats import count_segment, stamp_last_write

        with contextlib.suppress(OSError, StreamError), self._opened() as d:
            stamp_last_write(d, result.segment, result.last_write_ns)
            if self.metrics:
                n = count_segment(
                    d, result.segment, result.logical_end - result.logical_start, self.policy
                )
                self.metrics.observe_written(
                    *self._labels, nbytes=n.nbytes, events=n.events, split=n.split
                )

    def needs_rotation(self) -> str | None:
        """ "size" | "period" | None, from stat() calls only."""
        try:
            if not self._recovered:
                self.recover()
                if not self._recovered:
                    return None
            with self._episode("check"), self._opened() as d:
                st = d.lstat(self.info.base)
                if st is None or not stat.S_ISREG(st.st_mode):
                    return None
                live = st.st_size - self._physical_committed_for(st)
                if self.policy.max_size_bytes > 0 and live >= self.policy.max_size_bytes:
                    return "size"
                if self.policy.rotate == "Never" or live <= 0:
                    return None
                now = self.clock()
                start = period_start(now, self.policy.rotate, time_zone(self.policy.timezone))
                if self._anchor is None:
                    segs = sf.list_segments(d, self.info.base)
                    self._anchor = segs[-1].name.stamp if segs else now
                if start is not None and self._anchor < start:
                    return "period"
        except (OSError, StreamError):
            return None
        return None

    def enforce_retention(self, extra_budget_bytes: int | None = None) -> RetentionResult:
        """Apply plan_retention: delete segments, trim a plain segment's head, drop the
        active file's oldest whole events. Compression is only reported (see compress_pending)."""
        if not self._recovered:
            self.recover()
            if not self._recovered:
                return RetentionResult()
        try:
            with self._episode("retention"), self._opened() as d:
                return self._enforce(d, extra_budget_bytes)
        except FileNotFoundError:
            pass
        except (OSError, StateError) as e:
            self._fail(e, "retention")
        return RetentionResult()

    def compress_pending(self, extra_budget_bytes: int | None = None) -> tuple[str, ...]:
        """Compress the plain segments the retention plan names (run from a worker thread).

        Returns the file names compressed. A segment still open for writing (rename
        strategy, writer not reopened yet) is left for a later call; one that is not a
        regular, singly linked file is refused (counted, logged once) and left alone.
        """
        if self.policy.compress == "none":
            return ()
        done = []
        try:
            with self._episode("compress"), self._opened() as d:
                plan = self._plan(d, extra_budget_bytes)
                for name in plan.compress:
                    if self.abandon_compress():
                        break
                    st = d.lstat(name.filename)
                    if st is None or not stat.S_ISREG(st.st_mode):
                        continue
                    if self.policy.strategy == "rename" and sf.open_writers(st.st_dev, st.st_ino):
                        continue
                    try:
                        out = compress_in(
                            d,
                            name.filename,
                            self.policy.compress,
                            should_stop=self.abandon_compress,
                        )
                    except UnsafeFile as e:
                        self._refuse(e, "compress")
                        continue
                    except CompressionInterrupted:
                        break
                    if out is None:
                        continue
                    done.append(name.filename)
                    if self.metrics:
                        self.metrics.compressions.labels(self.policy.compress).inc()
        except FileNotFoundError:
            pass
        except OSError as e:
            self._fail(e, "compress")
        self._update_gauges()
        return tuple(done)

    def quiesce(self) -> None:
        """On a clean stop: zero the committed bytes the last punch kept (the partial block
        before the committed offset), so the files themselves hold every event once: a
        reader of the active file other than logvold's never meets a committed event again.
        No state change: `_replaced` and the rebuild take zeroed bytes for committed ones, so
        a crash on either side of the punch leaves a file the next start recognises."""
        s = self._state
        if (
            s is None
            or s.intent is not None
            or self.policy.strategy != "punch"
            or self._punch_ok is not True
        ):
            return
        try:
            with self._episode("stop"), self._opened() as d:
                opened = self._open_active(d)
                if opened is None:
                    return
                fd, st = opened
                try:
                    if (st.st_dev, st.st_ino) != (s.device, s.inode) or self._current(
                        d, fd, st
                    ) is not s:
                        return
                    p = s.physical_committed
                    lo = sf.align_down(p, self._block(st))
                    if p > lo and os.pread(fd, p - lo, lo) != bytes(p - lo):
                        sf.punch_hole(fd, lo, p - lo)  # unaligned: the kernel zeroes them
                finally:
                    os.close(fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            self._io_error("stop", e)
            log.warning(
                "stream %s: could not zero the committed tail at stop: %s", self.info.key, e
            )

    # ------------------------------------------------------------------ refusals

    @contextlib.contextmanager
    def _opened(self) -> Iterator[SafeDir]:
        """The stream directory for one operation, walked from the stream's safety root
        without following symlinks; `_save` writes state through it."""
        with open_stream_dir(self.info) as d:
            self._dir = d
            try:
                yield d
            finally:
                self._dir = None

    # ------------------------------------------------------------------ state

    def _load(self, d: SafeDir, st: os.stat_result | None) -> StreamState | None:
        """The saved state; a corrupt one, or a missing one while the active file starts
        with a punched hole, is rebuilt from the files (never re-copied from offset 0)."""
        try:
            state = load_state_in(d, self.info.base)
        except StateError as e:
            log.warning("stream %s: %s", self.info.key, e)
            self._io_error("load-state", e)
            if isinstance(e.__cause__, UnsafeFile):
                self._refuse(e.__cause__, "state")
            if st is None or not stat.S_ISREG(st.st_mode):
                return None
            name = state_file_name(self.info.base)
            with contextlib.suppress(OSError), d.subdir(STATE_DIR_NAME) as sd:
                sd.rename(name, name + ".corrupt")
            return self._rebuild(d, "corrupt")
        if state is None and st is not None and stat.S_ISREG(st.st_mode):
            return self._rebuild(d, "missing")
        return state

    def _rebuild(self, d: SafeDir, why: str) -> StreamState | None:
        """Rebuild the committed offset from the active file and the newest segment. For a
        missing state only when the file was punched (a leading hole or zeroed bytes):
        otherwise nothing of it was committed and offset 0 is right."""
        opened = d.open_file(self.info.base)
        try:
            if why == "missing" and not _punched_head(opened.fd, opened.st):
                return None
            state = rebuild_state(
                d, opened.fd, opened.st, self.info.base, self.policy.format, self.policy.delimiter
            )
        finally:
            os.close(opened.fd)
        self._save(state)
        log.warning(
            "stream %s: %s state rebuilt from the files: committed physical offset %d",
            self.info.key,
            why,
            state.committed_offset,
        )
        return state

    def _save(self, state: StreamState) -> StreamState:
        assert self._dir is not None, "state is saved within an operation"
        save_state_in(self._dir, self.info.base, state)
        self._state = state
        return state

    def _physical_committed_for(self, st: os.stat_result) -> int:
        s = self._state
        if s is None or (s.device, s.inode) != (st.st_dev, st.st_ino):
            return 0
        p = s.physical_committed
        return p if p <= st.st_size else 0

    def _current(self, d: SafeDir, fd: int, st: os.stat_result) -> StreamState:
        """State of the open active file: fresh for a new inode, reset after a writer truncate."""
        s = self._state
        if s is None or (s.device, s.inode) != (st.st_dev, st.st_ino):
            if s is not None:
                log.info(
                    "stream %s: new active file (inode %d), starting at offset 0",
                    self.info.key,
                    st.st_ino,
                )
            return StreamState(device=st.st_dev, inode=st.st_ino)
        if st.st_size < s.physical_committed or self._replaced(d, fd, st, s):
            log.warning(
                "stream %s: the writer truncated or replaced %s (%d bytes, committed "
                "%d): starting again at 0",
                self.info.key,
                self.info.base,
                st.st_size,
                s.physical_committed,
            )
            if self.metrics:
                self.metrics.truncations.labels(*self._labels, "writer").inc()
            return StreamState(device=st.st_dev, inode=st.st_ino)
        return s

    def _replaced(self, d: SafeDir, fd: int, st: os.stat_result, s: StreamState) -> bool:
        """True when the bytes just before the committed offset are neither the end of the
        newest segment nor zeroes (a clean stop's quiesce): the writer truncated and rewrote
        the file, or it was recreated with a reused inode number. Those bytes (the unaligned
        tail of the last committed block) are never punched while running; when the offset
        is block-aligned or the segment is gone, nothing can tell."""
        p = s.physical_committed
        n = p - sf.align_down(p, self._block(st))
        if n == 0:
            return False
        here = os.pread(fd, n, p - n)
        if here == bytes(n):
            return False  # zeroed by a clean stop (quiesce), maybe just before a crash
        if not s.segments or s.segments[-1].logical_end != s.committed_offset:
            return False
        seg = d.lstat(s.segments[-1].stem)
        if seg is None or not stat.S_ISREG(seg.st_mode) or seg.st_size < n:
            return False
        try:
            opened = d.open_file(s.segments[-1].stem)
        except UnsafeFile as e:
            self._refuse(e, "check")
            return False
        try:
            tail = os.pread(opened.fd, n, opened.st.st_size - n)
        finally:
            os.close(opened.fd)
        return here != tail

    # ------------------------------------------------------------------ helpers

    def _open_active(self, d: SafeDir) -> tuple[int, os.stat_result] | None:
        """O_RDWR fd of the active file if it is a regular, singly linked file in the
        directory: a symlink, FIFO, directory or hard link in its place is refused (an
        outside file hard-linked here would be punched and served)."""
        try:
            opened = d.open_file(self.info.base, os.O_RDWR)
        except FileNotFoundError:
            return None
        except UnsafeFile as e:
            self._refuse(e, "active")
            if self.metrics:
                self.metrics.rotation_failures.labels(*self._labels, "not-regular").inc()
            return None
        return opened.fd, opened.st

    def _io_error(self, op: str, e: BaseException) -> None:
        if self.metrics:
            cause = e if isinstance(e, OSError) else e.__cause__
            code = (
                errno.errorcode.get(cause.errno or 0, "EIO")
                if isinstance(cause, OSError)
                else "EINVAL"
            )
            self.metrics.io_errors.labels(op, code).inc()

    def _fail(self, e: OSError | StateError, op: str) -> NoReturn:
        self._io_error(op, e)
        if self.metrics:
            self.metrics.rotation_failures.labels(*self._labels, "io").inc()
        what = e.strerror if isinstance(e, OSError) else str(e)
        raise StreamError(
            f"stream {self.info.key}: {op} failed: {what}; retried later",
            path=str(self.info.active_path),
            op=op,
        ) from e

    def _block(self, st: os.stat_result) -> int:
        return max(st.st_blksize, 512)

    def _punch_supported(self) -> bool:
        if self._punch_ok is None:
            assert self._dir is not None, "probed within an operation"
            self._punch_ok = sf.punch_supported(self._dir)
            if not self._punch_ok:
                log.warning(
                    "stream %s: PUNCH_HOLE unsupported in %s: falling back to rename",
                    self.info.key,
                    self.directory,
                )
        return self._punch_ok

    def _reader(self, fd: int) -> Callable[[int, int], bytes]:
        return lambda offset, size: os.pread(fd, size, offset)

    def _last_boundary(self, fd: int, start: int, end: int) -> int | None:
        """Last event end in (start, end]: framing's answer, maxEventSize cuts included."""
        if end <= start:
            return None
        try:
            b = last_boundary_backward(
                self._reader(fd),
                start,
                end,
                self.policy.format,
                self.policy.delimiter,
                self.policy.max_event_size_bytes,
            )
        except ValueError:  # short read: the writer truncated meanwhile; the next call sees it
            return None
        return b if b is not None and b > start else None

    def _first_boundary_at_or_after(self, fd: int, start: int, target: int, end: int) -> int | None:
        """First event end >= target reading forward from boundary `start` (bounded reads);
        the last end before `end` when none is >= target; None when there is none."""
        framer = make_framer(
            self.policy.format, self.policy.delimiter, self.policy.max_event_size_bytes
        )
        last: int | None = None
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(_READ_CHUNK, end - pos), pos)
            if not chunk:
                break
            for off in framer.feed(chunk):
                last = start + off
                if last >= target:
                    return last
            pos += len(chunk)
        return last

    def _segment_name(self, d: SafeDir, after: SegmentName | None = None) -> SegmentName:
        """After every segment on disk AND every one the state still records: a name whose
        files retention deleted is never given again while a record (which a follower may
        be about to read by that name) still points at its old byte range. `after`: the
        name of the piece just cut in this step (newer than all of those), so the pieces
        of one step list the directory once; in one second they are numbered on."""
        if after is not None:
            return next_segment_name(self.info.base, self.clock(), [after])
        existing = [e.name for e in sf.list_segments(d, self.info.base)]
        if self._state is not None:
            existing += segments_of(self.info.base, [r.stem for r in self._state.segments])
        return next_segment_name(self.info.base, self.clock(), existing)

    def _write_segment(
        self,
        d: SafeDir,
        src_fd: int,
        stem: str,
        offset: int,
        length: int,
        like: os.stat_result,
        *,
        sync_dir: bool = True,
    ) -> None:
        """[offset, offset+length) of the active file into `<stem>` via `<stem>.tmp`
        (`sync_dir=False`: the caller fsyncs the directory once for several segments)."""
        tmp = plain_name(stem + ".tmp")
        out = d.create_exclusive(tmp, like.st_mode & 0o666)  # a planted symlink is replaced
        try:
            with contextlib.suppress(OSError):
                os.fchown(out, like.st_uid, like.st_gid)
            sf.copy_range(src_fd, out, offset, length, should_stop=self.abandon_copy)
            os.fsync(out)
        except BaseException:
            os.close(out)
            with contextlib.suppress(OSError):
                d.unlink(tmp)
            raise
        os.close(out)
        d.rename(tmp, stem)
        if sync_dir:
            d.fsync()

    def _abort(self, d: SafeDir, state: StreamState, stem: str, e: OSError) -> None:
        """Undo a failed copy: remove tmp and segment, clear the intent (best effort)."""
        for name in (stem + ".tmp", stem):
            with contextlib.suppress(OSError):
                d.unlink(name)
        with contextlib.suppress(OSError, StateError):
            self._save(state.with_(intent=None))
        self._io_error("rotate-copy", e)
        raise StreamError(
            f"stream {self.info.key}: cannot write segment {stem}: {e.strerror}; "
            "nothing was committed, the rotation is retried",
            path=str(self.directory / stem),
            op="rotate",
        ) from e

    def _punch(self, fd: int, st: os.stat_result, start: int, end: int) -> int:
        """Punch the block-aligned part of physical [align_down(start), align_down(end)).

        Runs after the commit, so a failure only leaves bytes allocated: it is logged,
        counted, and the next punch starts at 0 to free them.
        """
        block = self._block(st)
        if self._punch_from_zero:
            start = 0
        lo, hi = sf.align_down(start, block), sf.align_down(end, block)
        if hi <= lo:
            return 0
        try:
            sf.punch_hole(fd, lo, hi - lo)
        except OSError as e:
            self._io_error("punch", e)
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                self._punch_ok = False
                log.warning(
                    "stream %s: PUNCH_HOLE refused (%s): later rotations rename",
                    self.info.key,
                    e.strerror,
                )
            else:
                self._punch_from_zero = True
                log.warning(
                    "stream %s: PUNCH_HOLE failed (%s): retried at the next rotation",
                    self.info.key,
                    e.strerror,
                )
            return 0
        self._punch_from_zero = False
        return hi - lo

    def _intent_stem(self, intent: Mapping[str, Any]) -> str:
        """The segment an intent names: a forged state file may name any file, but recovery
        only ever touches a segment name of this stream."""
        stem = plain_name(str(intent.get("stem")))
        names = segments_of(self.info.base, [stem])
        if not names or names[0].compression:
            raise UnsafeFile(
                f"state intent names {stem!r}, not a segment of {self.info.base}",
                kind="outside",
                path=str(self.directory / stem),
            )
        return stem

    def _records(self, state: StreamState, rec: SegmentRecord) -> tuple[SegmentRecord, ...]:
        return (*state.segments, rec)[-64:]

    # ------------------------------------------------------------------ rotation

    def _rotate(
        self, d: SafeDir, fd: int, st: os.stat_result, reason: str
    ) -> RotationResult | None:
        state = self._current(d, fd, st)
        strategy = self.policy.strategy
        if strategy == "punch" and not self._punch_supported():
            strategy = "rename"
        if strategy == "rename" and state.physical_committed > 0 and self._punch_supported():
            # Rotated by punch before (strategy changed): a rename would repeat the committed
            # head in the segment, so this inode stays with punch until the writer reopens.
            strategy = "punch"
        if strategy == "punch":
            return self._rotate_punch(d, fd, state, reason)
        if strategy == "rename":
            return self._rotate_rename(d, fd, state, reason)
        return self._rotate_copytruncate(d, fd, state, reason)

    def _rotate_punch(
        self, d: SafeDir, fd: int, state: StreamState, reason: str
    ) -> RotationResult | None:
        state, run = self._cut_backlog(d, fd, state, reason, "punch")
        if not run.cuts and not run.holes:
            return None
        collapsed = self._maybe_collapse(fd, state)
        return run.result(reason, "punch", collapsed=collapsed)

    def _cut_backlog(
        self, d: SafeDir, fd: int, state: StreamState, reason: str, strategy: str
    ) -> tuple[StreamState, _Run]:
        """Cut [committed, last boundary) into maxSize pieces (core/pieces.py), each one
        written, committed and (punch) punched before the next: a crash or an abandoned
        copy leaves every earlier piece committed and at most one intent to settle.

        Bounded per step (pieces, bytes, seconds: core/pieces.py constants, and the
        daemon stopping): the run says `more` and the worker queues the step again
        behind other streams. Holes in the live range (SEEK_DATA/SEEK_HOLE) are never
        read: a hole at the committed offset is skipped (committed, no segment, counted
        as truncation `hole`); a hole after data ends the piece before it, as an event
        boundary. Pieces are sized by free space too (fstatvfs): a backlog bigger than
        the free space still rotates, piece by piece, as each punch frees what it copied;
        copytruncate frees nothing before its truncate, so its whole step fits in it."""
        run = _Run(started=time.monotonic())
        self._last_name = None
        mx = self.policy.max_size_bytes
        for _extent in range(MAX_PIECES_PER_STEP):
            st = os.fstat(fd)
            p = state.physical_committed
            if p >= st.st_size:
                break
            data, hole = _live_extent(fd, p, st.st_size, self._block(st))
            if data > p:
                state = self._drop_hole(fd, st, state, p, data, punch=strategy == "punch")
                run.holes += data - p
                continue
            free = self._free_bytes(d)
            cap = piece_cap(mx, free)
            room = MAX_BYTES_PER_STEP
            if strategy == "copytruncate" and free is not None and free > FREE_SPACE_RESERVE:
                room = min(room, free - FREE_SPACE_RESERVE)
            pieces = iter_pieces(
                p, hole, cap, self._last_at_most(fd, hole, st.st_size), self._first_after(fd)
            )
            # punch commits a batch of pieces with one intent (fewer fsyncs); the batch is
            # punched only after its commit, so it must fit in the free space as a whole.
            batch_pieces = BATCH_PIECES if strategy == "punch" else 1
            batch_room = BATCH_BYTES
            if free is not None and free > FREE_SPACE_RESERVE:
                batch_room = max(cap, min(batch_room, free - FREE_SPACE_RESERVE))
            batch: list[Piece] = []
            for piece in pieces:
                queued = sum(b.size for b in batch)
                if (run.cuts or batch) and (
                    len(run.cuts) + len(batch) >= MAX_PIECES_PER_STEP
                    or run.copied + queued + piece.size > room
                    or time.monotonic() - run.started >= MAX_SECONDS_PER_STEP
                    or self.stop_pieces()
                    or self.abandon_copy()
                ):
                    run.more = True
                    break
                if batch and (len(batch) >= batch_pieces or queued + piece.size > batch_room):
                    state = self._cut_batch(d, fd, state, st, batch, reason, strategy, run)
                    batch = []
                    if run.failed:
                        return state, run
                batch.append(piece)
            if batch:
                state = self._cut_batch(d, fd, state, st, batch, reason, strategy, run)
            if run.more or run.failed:
                return state, run
            if hole >= st.st_size or state.physical_committed < hole:
                break  # the end of the file (a partial event stays), or a boundary search gave up
        else:
            run.more = True
        return state, run

    def _cut_batch(
        self,
        d: SafeDir,
        fd: int,
        state: StreamState,
        st: os.stat_result,
        batch: list[Piece],
        reason: str,
        strategy: str,
        run: _Run,
    ) -> StreamState:
        """Cut `batch` (consecutive pieces), recording the cuts in `run`. A failure after
        the first piece leaves the pieces before it committed and sets `run.failed`; at
        the first piece it raises StreamError (nothing committed), as a single cut did."""
        try:
            if strategy != "punch" or len(batch) == 1:
                for piece in batch:
                    state, cut = self._cut_piece(d, fd, state, st, piece, reason, strategy)
                    run.cuts.append(cut)
                    run.copied += piece.size
                return state
            return self._cut_pieces(d, fd, state, st, batch, reason, run)
        except StreamError:
            if not run.cuts:
                raise
            if self.metrics:  # the pieces before stand committed; retried later
                self.metrics.rotation_failures.labels(*self._labels, "io").inc()
            run.failed = True
            return self._state if self._state is not None else state

    def _cut_pieces(
        self,
        d: SafeDir,
        fd: int,
        state: StreamState,
        st: os.stat_result,
        batch: list[Piece],
        reason: str,
        run: _Run,
    ) -> StreamState:
        """Several punch pieces under ONE intent `{op: pieces, pieces: [[stem, start,
        end], ...]}`: each segment written (tmp, fsync, rename), one directory fsync, one
        commit of them all, one punch. Recovery keeps the longest prefix of pieces whose
        segments are complete (exact size) and removes the rest (still in the active
        file: nothing is punched before the commit). 2 + n + 1 + 2 fsyncs for n pieces
        instead of 6 n."""
        p = state.physical_committed
        assert batch[0].start == p, (batch[0], p)
        shift = state.committed_offset - p  # logical = physical + shift
        plan: list[tuple[str, int, int]] = []
        for piece in batch:
            self._last_name = name = self._segment_name(d, self._last_name)
            plan.append((name.stem, piece.start + shift, piece.end + shift))
        self._save(state.with_(intent={"op": "pieces", "pieces": [list(item) for item in plan]}))
        done = 0
        error: OSError | None = None
        for (stem, _start, _end), piece in zip(plan, batch, strict=True):
            try:
                self._write_segment(d, fd, stem, piece.start, piece.size, st, sync_dir=False)
            except OSError as e:
                error = e
                break
            done += 1
        if done == 0:
            assert error is not None
            self._abort(d, state, plan[0][0], error)
        d.fsync()
        committed = state
        for stem, start, end in plan[:done]:
            committed = committed.with_(
                segments=self._records(
                    committed,
                    SegmentRecord(
                        stem, start, end, _previous_cut_ns(committed, start), st.st_mtime_ns
                    ),
                )
            )
        state = self._save(committed.with_(committed_offset=plan[done - 1][2], intent=None))
        freed = self._punch(fd, st, p, batch[done - 1].end)
        for i, ((stem, start, end), piece) in enumerate(zip(plan[:done], batch, strict=False)):
            run.cuts.append(
                RotationResult(
                    reason=reason,
                    strategy="punch",
                    segment=stem,
                    logical_start=start,
                    logical_end=end,
                    bytes_freed=freed if i == done - 1 else 0,
                    last_write_ns=st.st_mtime_ns,
                )
            )
            run.copied += piece.size
        if error is not None:
            for stem, _start, _end in plan[done:]:
                with contextlib.suppress(OSError):
                    d.unlink(stem + ".tmp")
            self._io_error("rotate-copy", error)
            raise StreamError(
                f"stream {self.info.key}: cannot write segment {plan[done][0]}: "
                f"{error.strerror}; the pieces before it are committed, the "
                "rest is retried",
                path=str(self.directory / plan[done][0]),
                op="rotate",
            ) from error
        return state

    def _cut_piece(
        self,
        d: SafeDir,
        fd: int,
        state: StreamState,
        st: os.stat_result,
        piece: Piece,
        reason: str,
        strategy: str,
    ) -> tuple[StreamState, RotationResult]:
        """One piece as one segment, exactly like a whole rotation used to be: intent,
        copy (tmp, fsync, rename, dir fsync), commit, then (punch) the punch."""
        p = state.physical_committed
        assert piece.start == p, (piece, p)
        self._last_name = name = self._segment_name(d, self._last_name)
        start, end = state.committed_offset, state.committed_offset + piece.size
        if strategy == "punch":
            intent: dict[str, Any] = {"op": "punch", "stem": name.stem, "start": start, "end": end}
        else:
            intent = {
                "op": "copytruncate",
                "stem": name.stem,
                "start": start,
                "end": end,
                "physical_end": piece.end,
            }
        self._save(state.with_(intent=intent))
        try:
            self._write_segment(d, fd, name.stem, p, piece.size, st)
        except OSError as e:
            self._abort(d, state, name.stem, e)
        freed = 0
        if strategy == "punch":
            state = self._save(
                state.with_(
                    committed_offset=end,
                    intent=None,
                    segments=self._records(
                        state,
                        SegmentRecord(
                            name.stem, start, end, _previous_cut_ns(state, start), st.st_mtime_ns
                        ),
                    ),
                )
            )
            freed = self._punch(fd, st, p, piece.end)
        else:
            state = self._save(state.with_(committed_offset=end, intent=None))
        return state, RotationResult(
            reason=reason,
            strategy=strategy,
            segment=name.stem,
            logical_start=start,
            logical_end=end,
            bytes_freed=freed,
            last_write_ns=st.st_mtime_ns,
        )

    def _drop_hole(
        self, fd: int, st: os.stat_result, state: StreamState, p: int, data: int, *, punch: bool
    ) -> StreamState:
        """[p, data) is a hole: never written by an appending writer, so not events (a
        hostile truncate-extend, a writer seeking past its end). Committed without a
        segment and without reading it; punch frees the committed block before it."""
        if "hole" not in self._warned:
            self._warned.add("hole")
            log.warning(
                "stream %s: %s has a hole of %d bytes at offset %d: skipped, not "
                "copied (holes are not events)",
                self.info.key,
                self.info.base,
                data - p,
                p,
            )
        state = self._save(state.with_(committed_offset=state.committed_offset + data - p))
        if punch:
            self._punch(fd, st, p, data)
        if self.metrics:
            self.metrics.truncations.labels(*self._labels, "hole").inc()
        return state

    def _free_bytes(self, d: SafeDir) -> int | None:
        """Bytes an unprivileged writer may still use on the volume (statvfs of the open
        directory fd), None when unknown."""
        try:
            v = os.fstatvfs(d.fd)
        except OSError:
            return None
        return v.f_bavail * v.f_frsize if v.f_blocks else None

    def _last_at_most(self, fd: int, hole: int, size: int) -> Callable[[int, int], int | None]:
        """Framing's last boundary in (lo, hi]; the start of a hole is a boundary too."""

        def search(lo: int, hi: int) -> int | None:
            if hi == hole < size:
                return hole
            return self._last_boundary(fd, lo, hi)

        return search

    def _first_after(self, fd: int) -> Callable[[int, int], int | None]:
        return lambda lo, hi: self._first_boundary_at_or_after(fd, lo, lo + 1, hi)

    def _maybe_collapse(self, fd: int, state: StreamState) -> int:
        mode = self.policy.collapse
        if mode == "never" or not self._collapse_ok:
            return 0
        st = os.fstat(fd)
        length = sf.align_down(state.physical_committed, self._block(st))
        if length < max(self._collapse_min, self._block(st)) or length >= st.st_size:
            return 0  # COLLAPSE_RANGE must end before EOF
        if mode == "auto":
            writers = sf.open_writers(st.st_dev, st.st_ino)
            if not writers or not all(w.append for w in writers):
                return 0
        before = state.collapsed_bytes
        try:
            # [0, length) must be a hole so that recovery can tell (SEEK_DATA) if it ran.
            sf.punch_hole(fd, 0, length)
            self._save(
                state.with_(intent={"op": "collapse", "length": length, "collapsed_before": before})
            )
            try:
                sf.collapse_range(fd, 0, length)
            except OSError as e:
                self._save(state.with_(intent=None))
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    self._collapse_ok = False
                    log.warning(
                        "stream %s: COLLAPSE_RANGE refused (%s): the file keeps its apparent size",
                        self.info.key,
                        e.strerror,
                    )
                    return 0
                raise
            self._save(state.with_(collapsed_bytes=before + length, intent=None))
        except (OSError, StateError) as e:
            # Committed already; an intent left in memory is settled by the next call.
            self._io_error("collapse", e)
            log.warning("stream %s: collapse failed: %s", self.info.key, e)
            return 0
        log.debug("stream %s: collapsed %d bytes", self.info.key, length)
        return length

    def _rotate_rename(
        self, d: SafeDir, fd: int, state: StreamState, reason: str
    ) -> RotationResult | None:
        st = os.fstat(fd)
        if st.st_size <= state.physical_committed:
            return None
        name = self._segment_name(d)
        self._save(
            state.with_(
                intent={"op": "rename", "stem": name.stem, "device": st.st_dev, "inode": st.st_ino}
            )
        )
        try:
            d.rename(self.info.base, name.stem)
            d.fsync()
        except OSError:
            with contextlib.suppress(OSError, StateError):
                self._save(state.with_(intent=None))
            raise
        self._finish_rename(d, st)
        return RotationResult(
            reason=reason,
            strategy="rename",
            segment=name.stem,
            logical_start=state.committed_offset,
            logical_end=state.committed_offset + st.st_size - state.physical_committed,
        )

    def _finish_rename(self, d: SafeDir, old: os.stat_result) -> None:
        """After the rename: an empty active file like the old one, fresh state, reopen."""
        try:
            nfd = d.create_exclusive(self.info.base, old.st_mode & 0o666, replace=False)
            with contextlib.suppress(OSError):
                os.fchown(nfd, old.st_uid, old.st_gid)
            os.close(nfd)
            d.fsync()
        except FileExistsError:
            pass  # the writer reopened first
        st = d.lstat(self.info.base)
        if st is not None and stat.S_ISREG(st.st_mode):
            self._save(StreamState(device=st.st_dev, inode=st.st_ino))
        else:
            assert self._state is not None
            self._save(self._state.with_(intent=None))
        self._reopen()

    def _reopen(self) -> None:
        action = self.policy.reopen
        if action is None:
            if "no-reopen" not in self._warned:
                self._warned.add("no-reopen")
                log.warning(
                    "stream %s: rename without a reopen action: a writer that does not "
                    "reopen by itself keeps writing the renamed segment",
                    self.info.key,
                )
            return
        try:
            if self.reopener is None:
                raise ReopenFailed("this rotator has no reopener", op="reopen")
            self.reopener(action, str(self.info.key))
        except (ReopenFailed, OSError) as e:
            log.warning(
                "stream %s: reopen action failed: %s; the writer keeps writing the "
                "renamed segment until it reopens",
                self.info.key,
                e,
            )
            if self.metrics:
                self.metrics.rotation_failures.labels(*self._labels, "reopen").inc()

    def _rotate_copytruncate(
        self, d: SafeDir, fd: int, state: StreamState, reason: str
    ) -> RotationResult | None:
        """Copy the backlog in pieces (each committed with its own intent), then truncate
        once every whole event is copied; a step cut short (limits, free space) leaves the
        committed offset past its pieces and the next step goes on from there."""
        state, run = self._cut_backlog(d, fd, state, reason, "copytruncate")
        if not run.cuts and not run.holes:
            return None
        lost = 0
        if not run.more and not run.failed:
            st = os.fstat(fd)
            lost = st.st_size - state.physical_committed
            os.ftruncate(fd, 0)
            self._save(StreamState(device=st.st_dev, inode=st.st_ino))
            if lost > 0:
                log.warning(
                    "stream %s: copytruncate lost %d bytes written during the copy; "
                    "use strategy punch where the filesystem supports it",
                    self.info.key,
                    lost,
                )
                if self.metrics:
                    self.metrics.lost_bytes.labels(*self._labels).inc(lost)
        return run.result(reason, "copytruncate", lost=max(lost, 0))

    # ------------------------------------------------------------------ retention

    def _plan(self, d: SafeDir, extra_budget_bytes: int | None) -> RetentionPlan:
        segs = sf.list_segments(d, self.info.base, on_refused=self._refuse)
        st = d.lstat(self.info.base)
        live = 0
        if st is not None and stat.S_ISREG(st.st_mode):
            live = max(st.st_size - self._physical_committed_for(st), 0)
        files = [SegmentFile(e.name, e.size_bytes) for e in segs]
        return plan_retention(files, live, self.policy, self.clock(), extra_budget_bytes)

    def _enforce(self, d: SafeDir, extra_budget_bytes: int | None) -> RetentionResult:
        plan = self._plan(d, extra_budget_bytes)
        plan = self._without_trim_if_full(d, plan)
        freed = 0
        deleted = []
        for name in plan.delete:
            for filename in {name.filename, name.stem, name.stem + ".gz", name.stem + ".zst"}:
                st = d.lstat(filename)
                if st is None or stat.S_ISDIR(st.st_mode):
                    continue  # a directory planted under a segment name is left alone
                d.unlink(filename)  # a symlink itself, never its target
                freed += sf.allocated_bytes(st)
                deleted.append(filename)
            if self.metrics:
                why = plan.reasons.get(name.stem, "retention")
                self.metrics.truncations.labels(*self._labels, why).inc()
        if deleted:
            d.fsync()
            if self.metrics:
                self.metrics.bytes_freed.labels(*self._labels, "delete").inc(freed)
        trimmed = None
        if plan.trim_segment is not None and plan.trim_segment_bytes > 0:
            trimmed, n = self._trim_segment(d, plan.trim_segment, plan.trim_segment_bytes)
            freed += n
        dropped = 0
        if plan.active_bytes_to_drop > 0:
            dropped, n = self._drop_active(
                d, plan.active_bytes_to_drop, plan.budget_reason or "maxTotalSize"
            )
            freed += n
        self._update_gauges()
        return RetentionResult(
            deleted=tuple(deleted),
            reasons=dict(plan.reasons),
            dropped_active_bytes=dropped,
            trimmed_segment=trimmed,
            bytes_freed=freed,
            compress_pending=tuple(n.filename for n in plan.compress),
        )

    def _without_trim_if_full(self, d: SafeDir, plan: RetentionPlan) -> RetentionPlan:
        """A trim copies the kept part of a segment: on a volume without room for that copy
        (a disk full of backlog), the segment is deleted whole instead, so retention frees
        room when it is needed most (at most maxSize more than the plan asked for)."""
        name = plan.trim_segment
        if name is None or plan.trim_segment_bytes <= 0 or name.compression:
            return plan
        st = d.lstat(name.filename)
        free = self._free_bytes(d)
        if (
            st is None
            or free is None
            or st.st_size - plan.trim_segment_bytes + FREE_SPACE_RESERVE <= free
        ):
            return plan
        why = plan.budget_reason or "maxTotalSize"
        log.info(
            "stream %s: no room to trim %s (%d bytes free): deleted whole",
            self.info.key,
            name.filename,
            free,
        )
        return dataclasses.replace(
            plan,
            delete=(*plan.delete, name),
            trim_segment=None,
            trim_segment_bytes=0,
            reasons={**plan.reasons, name.stem: why},
        )

    def _trim_segment(self, d: SafeDir, name: SegmentName, nbytes: int) -> tuple[str | None, int]:
        """Drop at least `nbytes` of a plain segment's head, up to an event boundary.

        A trim only ever removes a head, so a segment's logical END never moves: readers
        place a plain segment by `logical_end - size`, which holds on either side of the
        rename. The intent lets recovery bring the record in line after a crash."""
        if name.compression:
            return None, 0  # compressed: kept whole until it can go entirely
        try:
            opened = d.open_file(name.filename)
        except UnsafeFile as e:
            self._refuse(e, "trim")
            return None, 0
        fd, st = opened.fd, opened.st
        try:
            cut = self._first_boundary_at_or_after(fd, 0, nbytes, st.st_size)
            if cut is None or cut <= 0:
                return None, 0
            s = self._state
            if s is not None:
                s = self._save(
                    s.with_(intent={"op": "trim", "stem": name.stem, "size": st.st_size - cut})
                )
            trim = name.stem + ".trim"  # complete copy, then atomically over the segment
            self._write_segment(d, fd, trim, cut, st.st_size - cut, st)
        finally:
            os.close(fd)
        d.rename(trim, name.filename)
        d.fsync()
        if s is not None:
            self._save(self._trimmed_records(s, name.stem, st.st_size - cut).with_(intent=None))
        if self.metrics:
            self.metrics.truncations.labels(*self._labels, "maxTotalSize").inc()
            self.metrics.bytes_freed.labels(*self._labels, "trim").inc(cut)
        return name.filename, cut

    @staticmethod
    def _trimmed_records(state: StreamState, stem: str, size: int) -> StreamState:
        """The record of `stem` placed to hold the last `size` bytes before its end."""
        return state.with_(
            segments=tuple(
                r._replace(logical_start=max(r.logical_start, r.logical_end - size))
                if r.stem == stem
                else r
                for r in state.segments
            )
        )

    def _drop_active(self, d: SafeDir, nbytes: int, why: str) -> tuple[int, int]:
        """Advance the committed offset past the oldest whole events (>= nbytes), no segment."""
        opened = self._open_active(d)
        if opened is None:
            return 0, 0
        fd, st = opened
        try:
            state = self._current(d, fd, st)
            if self.policy.strategy != "punch" or not self._punch_supported():
                return 0, 0  # no way to free the head in place: the next rotation cuts it
            p = state.physical_committed
            data, hole = _data_extent(fd, p, st.st_size)
            if data > p:
                return 0, 0  # a hole at the committed offset: the next rotation skips it
            b = self._first_boundary_at_or_after(fd, p, p + nbytes, hole)
            if b is None or b <= p:
                return 0, 0
            state = self._save(state.with_(committed_offset=state.committed_offset + b - p))
            freed = self._punch(fd, st, p, b)
            self._maybe_collapse(fd, state)
        finally:
            os.close(fd)
        if self.metrics:
            self.metrics.truncations.labels(*self._labels, why).inc()
            self.metrics.bytes_freed.labels(*self._labels, "truncate").inc(freed)
        return b - p, freed

    def _update_gauges(self) -> None:
        if not self.metrics:
            return
        with contextlib.suppress(OSError, StreamError), open_stream_dir(self.info) as d:
            segs = sf.list_segments(d, self.info.base)
            st = d.lstat(self.info.base)
            active = sf.allocated_bytes(st) if st is not None and stat.S_ISREG(st.st_mode) else 0
            self.metrics.segments.labels(*self._labels).set(len(segs))
            self.metrics.disk_usage.labels(*self._labels).set(
                active + sum(e.allocated_bytes for e in segs)
            )

    # ------------------------------------------------------------------ recovery

    def _recover(self, d: SafeDir) -> None:
        st = d.lstat(self.info.base)
        state = self._load(d, st)
        self._state = state
        for name in d.names():  # a crash inside _write_segment / _trim_segment
            if name.startswith(self.info.base + ".") and name.endswith((".tmp", ".trim")):
                with contextlib.suppress(OSError):
                    d.unlink(name)
        if state is not None and state.intent is not None:
            op = state.intent.get("op")
            log.info("stream %s: recovering an interrupted %s", self.info.key, op)
            try:
                self._recover_intent(d, state, op)
            except UnsafeFile as e:
                if e.kind != "outside":
                    raise
                self._refuse(e, "state")  # a forged intent: dropped, nothing touched
                self._save(state.with_(intent=None))
        state = self._state
        try:
            if state is None or self.policy.strategy != "punch" or not self._punch_supported():
                return
        except OSError as e:  # cannot probe now (e.g. ENOSPC): the leak is freed later
            self._io_error("probe", e)
            return
        opened = self._open_active(d)
        if opened is None:
            return
        fd, st = opened
        try:
            if (state.device, state.inode) == (st.st_dev, st.st_ino):
                current = self._current(d, fd, st)
                if current is state:  # not rewritten or replaced while we were down
                    self._punch(fd, st, 0, state.physical_committed)
                else:
                    self._save(current)
        finally:
            os.close(fd)

    def _recover_intent(self, d: SafeDir, state: StreamState, op: object) -> None:
        assert state.intent is not None
        if op == "punch":
            self._recover_punch(d, state, state.intent)
        elif op == "collapse":
            self._recover_collapse(d, state, state.intent)
        elif op == "rename":
            self._recover_rename(d, state, state.intent)
        elif op == "copytruncate":
            self._recover_copytruncate(d, state, state.intent)
        elif op == "trim":
            self._recover_trim(d, state, state.intent)
        elif op == "pieces":
            self._recover_pieces(d, state, state.intent)
        else:
            self._save(state.with_(intent=None))

    def _recover_punch(self, d: SafeDir, state: StreamState, intent: Mapping[str, Any]) -> None:
        stem = self._intent_stem(intent)
        start, end = int(intent["start"]), int(intent["end"])
        seg = d.lstat(stem)
        if (
            seg is not None
            and stat.S_ISREG(seg.st_mode)
            and seg.st_size == end - start
            and state.committed_offset == start
        ):
            self._save(
                state.with_(
                    committed_offset=end,
                    intent=None,
                    segments=self._records(state, SegmentRecord(stem, start, end)),
                )
            )
            log.info("stream %s: committed segment %s found after a crash", self.info.key, stem)
            return
        if seg is not None and stat.S_ISREG(seg.st_mode):
            d.unlink(stem)
            d.fsync()
        self._save(state.with_(intent=None))

    def _recover_pieces(self, d: SafeDir, state: StreamState, intent: Mapping[str, Any]) -> None:
        """Commit the longest prefix of the batch whose segments are complete; remove the
        segments after it (their bytes were not punched: the active file still has them)."""
        items = intent.get("pieces")
        if not isinstance(items, list):
            items = []
        committed, segments, whole = state.committed_offset, state, True
        for item in items[:MAX_PIECES_PER_STEP]:
            try:
                stem = self._intent_stem({"stem": item[0]})
                start, end = int(item[1]), int(item[2])
            except (TypeError, ValueError, IndexError, KeyError):
                break  # a forged or damaged intent: nothing more is committed from it
            seg = d.lstat(stem)
            regular = seg is not None and stat.S_ISREG(seg.st_mode)
            if (
                whole
                and regular
                and start == committed
                and seg is not None
                and seg.st_size == end - start
            ):
                segments = segments.with_(
                    segments=self._records(segments, SegmentRecord(stem, start, end))
                )
                committed = end
                continue
            whole = False
            if regular:
                d.unlink(stem)
        d.fsync()
        if committed != state.committed_offset:
            log.info(
                "stream %s: committed %d bytes of pieces found after a crash",
                self.info.key,
                committed - state.committed_offset,
            )
        self._save(segments.with_(committed_offset=committed, intent=None))

    def _recover_collapse(self, d: SafeDir, state: StreamState, intent: Mapping[str, Any]) -> None:
        length, before = int(intent["length"]), int(intent["collapsed_before"])
        done = False
        opened = self._open_active(d)
        if opened is not None and state.collapsed_bytes == before:
            fd, st = opened
            try:
                if (st.st_dev, st.st_ino) == (state.device, state.inode):
                    try:
                        first_data = os.lseek(fd, 0, os.SEEK_DATA)
                    except OSError as e:
                        if e.errno != errno.ENXIO:
                            raise
                        first_data = st.st_size
                    done = first_data < length
            finally:
                os.close(fd)
        elif opened is not None:
            os.close(opened[0])
        collapsed = before + length if done else state.collapsed_bytes
        self._save(state.with_(collapsed_bytes=collapsed, intent=None))

    def _recover_rename(self, d: SafeDir, state: StreamState, intent: Mapping[str, Any]) -> None:
        stem = self._intent_stem(intent)
        seg = d.lstat(stem)
        active = d.lstat(self.info.base)
        if (
            seg is not None
            and (seg.st_dev, seg.st_ino) == (intent["device"], intent["inode"])
            and (active is None or active.st_ino != seg.st_ino)
        ):
            self._finish_rename(d, seg)
        else:
            self._save(state.with_(intent=None))

    def _recover_trim(self, d: SafeDir, state: StreamState, intent: Mapping[str, Any]) -> None:
        """The trimmed copy replaced the segment (its size says so) or it did not."""
        stem = self._intent_stem(intent)
        size = int(intent["size"])
        seg = d.lstat(stem)
        if seg is not None and stat.S_ISREG(seg.st_mode) and seg.st_size == size:
            state = self._trimmed_records(state, stem, size)
        self._save(state.with_(intent=None))

    def _recover_copytruncate(
        self, d: SafeDir, state: StreamState, intent: Mapping[str, Any]
    ) -> None:
        stem = self._intent_stem(intent)
        seg = d.lstat(stem)
        active = d.lstat(self.info.base)
        if seg is None or active is None:
            self._save(state.with_(intent=None))
        elif active.st_size >= int(intent["physical_end"]):
            # Copied but not truncated: skip what the segment holds.
            end = int(intent["end"])
            self._save(state.with_(committed_offset=end, intent=None))
        else:
            self._save(StreamState(device=state.device, inode=state.inode))


__all__ = ["STATE_DIR_NAME", "RetentionResult", "RotationResult", "StreamRotator", "utcnow"]


def _previous_cut_ns(state: StreamState, start: int) -> int:
    """The last write time of the segment cut just before logical `start`, else 0."""
    prev = state.segments[-1] if state.segments else None
    return prev.last_write_ns if prev is not None and prev.logical_end == start else 0
