"""Strategy rename: rename the file to the segment name, create an empty active file and
run the reopen action (never a shell). The renamed file stays one segment (the writer
may append to it until it reopens).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from logvold.core.steps import RenameStep
from logvold.errors import ReopenFailed, StateError
from logvold.fileio.rotation.results import RotationResult
from logvold.fileio.rotation.segments import SegmentOps
from logvold.fileio.safedir import SafeDir
from logvold.fileio.state import StreamState

log = logging.getLogger("logvold.fileio.rotator")  # one logger for the rotator's lines


class RenameSteps(SegmentOps):
    """Strategy rename: the active file becomes the segment; the writer reopens."""

    def _rotate_rename(
        self, d: SafeDir, fd: int, state: StreamState, reason: str
    ) -> RotationResult | None:
        st = os.fstat(fd)
        if st.st_size <= state.physical_committed:
            return None
        name = self._segment_name(d)
        self._save(
            state.with_(intent=RenameStep(stem=name.stem, device=st.st_dev, inode=st.st_ino))
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

    def _recover_rename(self, d: SafeDir, state: StreamState, intent: RenameStep) -> None:
        stem = intent.stem
        seg = d.lstat(stem)
        active = d.lstat(self.info.base)
        if (
            seg is not None
            and (seg.st_dev, seg.st_ino) == (intent.device, intent.inode)
            and (active is None or active.st_ino != seg.st_ino)
        ):
            self._finish_rename(d, seg)
        else:
            self._save(state.with_(intent=None))
