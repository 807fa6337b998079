"""Strategy punch (default, lossless): the writer's offset never moves; what is cut is
punched out in place, and COLLAPSE_RANGE removes the punched prefix of O_APPEND files.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from logvold.core.steps import (
    CollapseStep,
    PiecesStep,
    PunchStep,
)
from logvold.errors import StateError
from logvold.fileio import stream_files as sf
from logvold.fileio.rotation.cutting import Cutting
from logvold.fileio.rotation.results import RotationResult
from logvold.fileio.safedir import SafeDir
from logvold.fileio.state import StreamState

log = logging.getLogger("logvold.fileio.rotator")  # one logger for the rotator's lines


class PunchSteps(Cutting):
    """Strategy punch: pieces copied, committed, PUNCH_HOLEd; COLLAPSE_RANGE later."""

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

    def _rotate_punch(
        self, d: SafeDir, fd: int, state: StreamState, reason: str
    ) -> RotationResult | None:
        state, run = self._cut_backlog(d, fd, state, reason, "punch")
        if not run.cuts and not run.holes:
            return None
        collapsed = self._maybe_collapse(fd, state)
        return run.result(reason, "punch", collapsed=collapsed)

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
            self._save(state.with_(intent=CollapseStep(length=length, collapsed_before=before)))
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

    def _recover_punch(self, d: SafeDir, state: StreamState, intent: PunchStep) -> None:
        stem, start, end = intent.stem, intent.start, intent.end
        seg = d.lstat(stem)
        if (
            seg is not None
            and stat.S_ISREG(seg.st_mode)
            and seg.st_size == end - start
            and state.committed_offset == start
        ):
            self._save(self._with_piece(state, stem, start, end))
            log.info("stream %s: committed segment %s found after a crash", self.info.key, stem)
            return
        if seg is not None and stat.S_ISREG(seg.st_mode):
            d.unlink(stem)
            d.fsync()
        self._save(state.with_(intent=None))

    def _recover_pieces(self, d: SafeDir, state: StreamState, intent: PiecesStep) -> None:
        """Commit the longest prefix of the batch whose segments are complete; remove the
        segments after it (their bytes were not punched: the active file still has them)."""
        segments, whole = state, True
        for stem, start, end in intent.pieces:
            seg = d.lstat(stem)
            regular = seg is not None and stat.S_ISREG(seg.st_mode)
            if (
                whole
                and regular
                and start == segments.committed_offset
                and seg is not None
                and seg.st_size == end - start
            ):
                segments = self._with_piece(segments, stem, start, end)
                continue
            whole = False
            if regular:
                d.unlink(stem)
        d.fsync()
        if segments.committed_offset != state.committed_offset:
            log.info(
                "stream %s: committed %d bytes of pieces found after a crash",
                self.info.key,
                segments.committed_offset - state.committed_offset,
            )
        self._save(segments.with_(intent=None))

    def _recover_collapse(self, d: SafeDir, state: StreamState, intent: CollapseStep) -> None:
        length, before = intent.length, intent.collapsed_before
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
