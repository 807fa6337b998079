"""Retention of one stream (core/retention.py plans it): delete segments, trim a plain
segment's head (crash-safe through a trim marker), drop the oldest whole events of the
active file (punch), and compress what the plan names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat

from logvold.core.layout import SegmentName
from logvold.core.pieces import FREE_SPACE_RESERVE
from logvold.core.retention import RetentionPlan, SegmentFile, plan_retention
from logvold.core.steps import TrimStep, copied_stems
from logvold.errors import StateError
from logvold.fileio import stream_files as sf
from logvold.fileio.compress import CompressionInterrupted, compress_in
from logvold.fileio.rotation.extents import _data_extent
from logvold.fileio.rotation.punch import PunchSteps
from logvold.fileio.rotation.results import RetentionResult
from logvold.fileio.safedir import SafeDir, UnsafeFile
from logvold.fileio.state import StreamState

log = logging.getLogger("logvold.fileio.rotator")  # one logger for the rotator's lines


class RetentionSteps(PunchSteps):
    """Retention: delete, trim a plain segment's head, drop the active file's head."""

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
        if not self._recovered:
            # A crash's step in flight first: its segment is not committed yet, and once
            # compressed its recovery no longer finds it (plain) and rolls the step back,
            # leaving the compressed copy as a second home of events the active file keeps.
            self.recover()
            if not self._recovered:
                return ()
        done = []
        try:
            with self._episode("compress"), self._opened() as d:
                plan = self._plan(d, extra_budget_bytes)
                in_flight = copied_stems(self._state.intent if self._state else None)
                for name in plan.compress:
                    if self.abandon_compress():
                        break
                    if name.stem in in_flight:
                        continue  # a failed step's segment: the next rotation settles it
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
                s = self._save(s.with_(intent=TrimStep(stem=name.stem, size=st.st_size - cut)))
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

    def _recover_trim(self, d: SafeDir, state: StreamState, intent: TrimStep) -> None:
        """The trimmed copy replaced the segment (its size says so) or it did not."""
        stem, size = intent.stem, intent.size
        seg = d.lstat(stem)
        if seg is not None and stat.S_ISREG(seg.st_mode) and seg.st_size == size:
            state = self._trimmed_records(state, stem, size)
        self._save(state.with_(intent=None))
