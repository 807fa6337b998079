"""Cutting [committed, last boundary) into maxSize pieces (core/pieces.py), each one
written, committed and (punch) punched before the next.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

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
from logvold.core.steps import (
    CopytruncateStep,
    PieceMark,
    PiecesStep,
    PunchStep,
    Step,
)
from logvold.errors import StreamError
from logvold.fileio.rotation.extents import _live_extent
from logvold.fileio.rotation.results import RotationResult, _Run
from logvold.fileio.rotation.segments import SegmentOps
from logvold.fileio.safedir import SafeDir
from logvold.fileio.state import StreamState

log = logging.getLogger("logvold.fileio.rotator")  # one logger for the rotator's lines


class Cutting(SegmentOps):
    """Cutting the backlog into pieces, one segment each (punch and copytruncate)."""

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
        self._save(state.with_(intent=PiecesStep(pieces=tuple(PieceMark(*i) for i in plan))))
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
            committed = self._with_piece(committed, stem, start, end, st.st_mtime_ns)
        state = self._save(committed)
        freed = self._punch(fd, st, p, batch[done - 1].end)
        for i, ((stem, start, end), piece) in enumerate(zip(plan[:done], batch, strict=False)):
            freed_here = freed if i == done - 1 else 0
            run.cuts.append(_cut(reason, "punch", stem, start, end, freed_here, st))
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
        intent: Step
        if strategy == "punch":
            intent = PunchStep(stem=name.stem, start=start, end=end)
        else:
            intent = CopytruncateStep(stem=name.stem, start=start, end=end, physical_end=piece.end)
        self._save(state.with_(intent=intent))
        try:
            self._write_segment(d, fd, name.stem, p, piece.size, st)
        except OSError as e:
            self._abort(d, state, name.stem, e)
        freed = 0
        if strategy == "punch":
            state = self._save(self._with_piece(state, name.stem, start, end, st.st_mtime_ns))
            freed = self._punch(fd, st, p, piece.end)
        else:
            state = self._save(state.with_(committed_offset=end, intent=None))
        return state, _cut(reason, strategy, name.stem, start, end, freed, st)

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

    def _last_at_most(self, fd: int, hole: int, size: int) -> Callable[[int, int], int | None]:
        """Framing's last boundary in (lo, hi]; the start of a hole is a boundary too."""

        def search(lo: int, hi: int) -> int | None:
            if hi == hole < size:
                return hole
            return self._last_boundary(fd, lo, hi)

        return search

    def _first_after(self, fd: int) -> Callable[[int, int], int | None]:
        return lambda lo, hi: self._first_boundary_at_or_after(fd, lo, lo + 1, hi)


def _cut(
    reason: str, strategy: str, stem: str, start: int, end: int, freed: int, st: os.stat_result
) -> RotationResult:
    """One committed piece: segment `stem` holds logical [start, end); `freed` punched."""
    return RotationResult(
        reason=reason,
        strategy=strategy,
        segment=stem,
        logical_start=start,
        logical_end=end,
        bytes_freed=freed,
        last_write_ns=st.st_mtime_ns,
    )
