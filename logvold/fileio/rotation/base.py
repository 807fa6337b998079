"""The rotator's shared core: one stream's directory, its state (load, rebuild, save, the
state of today's active file), the commit of a piece, the punch, and the file helpers
every strategy uses."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from logvold.core.clock import utcnow
from logvold.core.layout import (
    STATE_DIR_NAME,
    SegmentName,
    state_file_name,
)
from logvold.errors import StateError, StreamError
from logvold.fileio import stream_files as sf
from logvold.fileio.refusals import Refusals
from logvold.fileio.reopen import Reopener
from logvold.fileio.rotation.extents import _punched_head
from logvold.fileio.safedir import SafeDir, UnsafeFile, open_stream_dir, plain_name
from logvold.fileio.state import (
    MAX_SEGMENT_RECORDS,
    SegmentRecord,
    StreamState,
    load_state_in,
    save_state_in,
)
from logvold.fileio.state_rebuild import rebuild_state

if TYPE_CHECKING:
    from logvold.core.streams import StreamInfo
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger("logvold.fileio.rotator")  # one logger for the rotator's lines


def _never() -> bool:
    return False


class RotatorBase:
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
        self._refill_checked: tuple[int, int] | None = None
        """(inode, st_blocks) at the last look for a refilled head that found none."""
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

    @property
    def directory(self) -> Path:
        """The stream directory, for messages: it is never opened by this path."""
        return self.info.directory

    @property
    def state(self) -> StreamState | None:
        """The last loaded or saved state (None before the first operation or without a file)."""
        return self._state

    def recover(self) -> None:
        """Finish or undo the step a crash left: fileio/rotator.py's StreamRotator."""
        raise NotImplementedError

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

    def _head_refilled(self, d: SafeDir, st: os.stat_result, p: int) -> bool:
        """Whether the writer truncated its file and wrote past the committed offset `p`
        before we looked (`cmd > file` on a restart): the size alone cannot tell, and the
        file would grow to p + maxSize before a rotation. The punched head [0, p) holds
        no blocks, so an allocation well beyond the live range hints that it holds data
        again; the hint (XFS preallocates past EOF) is confirmed by the bytes before `p`
        (_replaced), at most once per inode and allocation size."""
        block = self._block(st)
        head = sf.align_down(p, block)
        if head < 4 * block or st.st_blocks * 512 <= st.st_size - head + head // 2:
            return False
        if self._refill_checked == (st.st_ino, st.st_blocks) or self._state is None:
            return False
        opened = self._open_active(d)
        if opened is None:
            return False
        fd, now = opened
        try:
            if (now.st_dev, now.st_ino) != (self._state.device, self._state.inode):
                return False
            refilled = now.st_size >= p and self._replaced(d, fd, now, self._state)
        finally:
            os.close(fd)
        if not refilled:
            self._refill_checked = (st.st_ino, st.st_blocks)
        return refilled

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

    @staticmethod
    def _with_piece(
        state: StreamState, stem: str, start: int, end: int, last_write_ns: int = 0
    ) -> StreamState:
        """`state` with segment `stem` (logical [start, end)) committed: its record appended
        (the newest MAX_SEGMENT_RECORDS kept), the committed offset at `end`, no marker.
        Not saved. The record's write times: the cut before it and `last_write_ns` (the
        active file's mtime at this cut); 0 = unknown (a piece found by recovery)."""
        prev = state.segments[-1] if state.segments else None
        first = (
            prev.last_write_ns
            if last_write_ns and prev is not None and prev.logical_end == start
            else 0
        )
        rec = SegmentRecord(stem, start, end, first, last_write_ns)
        return state.with_(
            committed_offset=end,
            intent=None,
            segments=(*state.segments, rec)[-MAX_SEGMENT_RECORDS:],
        )

    def _free_bytes(self, d: SafeDir) -> int | None:
        """Bytes an unprivileged writer may still use on the volume (statvfs of the open
        directory fd), None when unknown."""
        try:
            v = os.fstatvfs(d.fd)
        except OSError:
            return None
        return v.f_bavail * v.f_frsize if v.f_blocks else None

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
