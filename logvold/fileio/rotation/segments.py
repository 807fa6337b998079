"""Segments of the rotator's strategies: event boundaries in the active file (framing,
bounded reads), the next segment name, and a crash-safe segment copy (tmp, fsync,
rename) with its rollback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from logvold.core.framing import last_boundary_backward, make_framer
from logvold.core.layout import SegmentName, next_segment_name, segments_of
from logvold.errors import StateError, StreamError
from logvold.fileio import stream_files as sf
from logvold.fileio.rotation.base import RotatorBase
from logvold.fileio.safedir import SafeDir, plain_name
from logvold.fileio.state import StreamState

_READ_CHUNK = 2**20


class SegmentOps(RotatorBase):
    """Boundaries, names and copies of segments (every strategy but the base needs them)."""

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
