"""Strategy copytruncate (legacy, lossy): copy in maxSize pieces (each committed), then
ftruncate(0) once the whole backlog is copied; bytes written between the copy and the
truncate are counted in logvold_copytruncate_lost_bytes_total.
"""

from __future__ import annotations

import logging
import os

from logvold.core.steps import CopytruncateStep
from logvold.fileio.rotation.cutting import Cutting
from logvold.fileio.rotation.results import RotationResult
from logvold.fileio.safedir import SafeDir
from logvold.fileio.state import StreamState

log = logging.getLogger("logvold.fileio.rotator")  # one logger for the rotator's lines


class CopytruncateSteps(Cutting):
    """Strategy copytruncate (legacy, lossy): copy in pieces, then truncate once."""

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

    def _recover_copytruncate(
        self, d: SafeDir, state: StreamState, intent: CopytruncateStep
    ) -> None:
        stem = intent.stem
        seg = d.lstat(stem)
        active = d.lstat(self.info.base)
        if seg is None or active is None:
            self._save(state.with_(intent=None))
        elif active.st_size >= intent.physical_end:
            # Copied but not truncated: skip what the segment holds.
            self._save(state.with_(committed_offset=intent.end, intent=None))
        else:
            self._save(StreamState(device=state.device, inode=state.inode))
