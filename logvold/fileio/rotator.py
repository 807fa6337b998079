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
first, and `recover()` finishes or undoes it, idempotently (the markers are typed
in core/steps.py; a forged or garbled one is refused and dropped, touching nothing;
the steps of each strategy are in fileio/rotation/):
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
import logging
import os
import stat
from typing import TYPE_CHECKING

from logvold.core.clock import utcnow
from logvold.core.layout import (
    STATE_DIR_NAME,
    state_file_name,
)
from logvold.core.retention import period_start
from logvold.core.steps import (
    CollapseStep,
    CopytruncateStep,
    PunchStep,
    RefusedStep,
    RenameStep,
    Step,
    TrimStep,
)
from logvold.core.values import time_zone
from logvold.errors import StateError, StreamError
from logvold.fileio import stream_files as sf
from logvold.fileio.rotation.copytruncate import CopytruncateSteps
from logvold.fileio.rotation.rename import RenameSteps
from logvold.fileio.rotation.results import RetentionResult, RotationResult
from logvold.fileio.rotation.retention import RetentionSteps
from logvold.fileio.safedir import SafeDir, UnsafeFile
from logvold.fileio.state import StreamState

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class StreamRotator(RetentionSteps, RenameSteps, CopytruncateSteps):
    """Rotates and trims one stream's active file; one caller at a time (see RotatorBase
    for the constructor, fileio/rotation/ for the steps of each strategy)."""

    # ------------------------------------------------------------------ public API

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
        """ "size" | "period" | None, from stat() calls (and a pread when a truncated file
        was refilled past the committed offset: _head_refilled)."""
        try:
            if not self._recovered:
                self.recover()
                if not self._recovered:
                    return None
            with self._episode("check"), self._opened() as d:
                st = d.lstat(self.info.base)
                if st is None or not stat.S_ISREG(st.st_mode):
                    return None
                p = self._physical_committed_for(st)
                live = st.st_size - p
                if self.policy.max_size_bytes > 0 and live >= self.policy.max_size_bytes:
                    return "size"
                if p and self._head_refilled(d, st, p):
                    return "size"  # rotate() starts the rewritten file again at 0
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

    # ------------------------------------------------------------------ recovery

    def _recover(self, d: SafeDir) -> None:
        st = d.lstat(self.info.base)
        state = self._load(d, st)
        self._state = state
        for name in d.names():  # a crash inside _write_segment / _trim_segment
            if name.startswith(self.info.base + ".") and name.endswith((".tmp", ".trim")):
                with contextlib.suppress(OSError):
                    d.unlink(name)
        marker = state.intent if state is not None else None
        if state is not None and marker is not None:
            if isinstance(marker, RefusedStep):
                # A forged or damaged marker (core/steps.py validated it at load): refused,
                # dropped, no file touched.
                where = self.directory / STATE_DIR_NAME / state_file_name(self.info.base)
                self._refuse(
                    UnsafeFile(
                        f"state file step marker refused: {marker.reason}",
                        kind="outside",
                        path=str(where),
                    ),
                    "state",
                )
                self._save(state.with_(intent=None))
            else:
                log.info("stream %s: recovering an interrupted %s", self.info.key, marker.op)
                self._recover_intent(d, state, marker)
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

    def _recover_intent(self, d: SafeDir, state: StreamState, step: Step) -> None:
        if isinstance(step, PunchStep):
            self._recover_punch(d, state, step)
        elif isinstance(step, CollapseStep):
            self._recover_collapse(d, state, step)
        elif isinstance(step, RenameStep):
            self._recover_rename(d, state, step)
        elif isinstance(step, CopytruncateStep):
            self._recover_copytruncate(d, state, step)
        elif isinstance(step, TrimStep):
            self._recover_trim(d, state, step)
        else:
            self._recover_pieces(d, state, step)


__all__ = ["STATE_DIR_NAME", "RetentionResult", "RotationResult", "StreamRotator", "utcnow"]
