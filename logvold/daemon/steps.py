"""One step on one stream, as a pool thread runs it: check the directory, rotate, keep retention.

Before every step the stream directory is walked from its safety root without
following symlinks (`fileio.safedir`), so a symlinked subDir, active file or
`.logvold` planted by the pod is refused, never followed. The first step of a
rotator recovers the stream's state; a step then rotates (a trigger fired or a
reason was given), enforces retention, and notes the active file's size trigger
(committed offset + maxSize) for the loop's per-write check. Also the values a step
takes and returns, and what the daemon needs of a rotator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from logvold.core.layout import STATE_DIR_NAME
from logvold.core.streams import StreamInfo
from logvold.daemon.survey import budget_share_arg
from logvold.errors import StreamError
from logvold.fileio.safedir import UnsafeFile, open_stream_dir
from logvold.fileio.state import load_state_in

if TYPE_CHECKING:
    from logvold.telemetry.metrics import Metrics


class Rotator(Protocol):
    """The part of `fileio.rotator.StreamRotator` the daemon drives."""

    def recover(self) -> None: ...
    def needs_rotation(self) -> str | None: ...
    def rotate(self, reason: str) -> Any: ...
    def enforce_retention(self, *, extra_budget_bytes: int | None = None) -> Any: ...
    def compress_pending(self, extra_budget_bytes: int | None = None) -> Any: ...


@runtime_checkable
class StoppableRotator(Protocol):
    """A rotator that a stop can hurry (abandon a copy past the deadline, before its
    commit) and settle (zero the committed tail): `fileio.rotator.StreamRotator`."""

    abandon_copy: Callable[[], bool]
    abandon_compress: Callable[[], bool]
    stop_pieces: Callable[[], bool]

    def quiesce(self) -> None: ...


RotatorFactory = Callable[[StreamInfo, "Metrics | None", Callable[[], datetime]], Rotator]


@dataclass
class StepRequest:
    """What a step should do; several requests for one stream merge into one."""

    check: bool = False
    """Ask the rotator whether a size or period trigger fired."""
    reason: str | None = None
    """Rotate for this reason regardless of `needs_rotation` (e.g. a period boundary)."""
    retention: bool = False
    """Enforce retention even if nothing rotated."""
    hint_at: float | None = None
    """Monotonic time of the hint that led here, for the trigger-to-rotation latency."""

    def merge(self, other: StepRequest) -> StepRequest:
        hints = [h for h in (self.hint_at, other.hint_at) if h is not None]
        return StepRequest(
            check=self.check or other.check,
            reason=self.reason or other.reason,
            retention=self.retention or other.retention,
            hint_at=min(hints) if hints else None,
        )


@dataclass(frozen=True, slots=True)
class StepOutcome:
    reason: str | None
    rotated: bool
    latency_s: float | None
    rotation: Any = None
    """The rotator's RotationResult when `rotated` (for the daemon's info line)."""
    retention: Any = None
    """The rotator's RetentionResult when retention ran."""
    more: bool = False
    """The rotation stopped at its per-step limits with backlog left: queue it again."""


@dataclass(eq=False)
class StreamSlot:
    """One managed stream in the workers: its rotator, its lock (one step at a time),
    and the loop's bookkeeping of requests, failures and the size trigger."""

    info: StreamInfo
    volume_root: Path | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    rotator: Rotator | None = None
    recovered: bool = False
    running: bool = False
    queued: StepRequest | None = None
    waiting: StepRequest | None = None
    """The request of a stream waiting for its turn in the fair queue (not yet running)."""
    compressing: bool = False
    compress_again: bool = False
    removed: bool = False
    budget_share: int | None = None
    failing: str | None = None
    trigger: tuple[int, int, int] | None = None
    """(device, inode, size) of the active file at which a size check is worth a step;
    None: unknown (check on the next hint). Written by the step thread, read on the loop."""
    seen_size: int = 0
    """Apparent size at the last size check: a smaller one means the writer truncated."""
    recheck: bool = False
    """A write was hinted while a step ran: look at the trigger again when it ends."""
    retry_at: float = 0.0
    """Monotonic time before which writes do not retry a failed step."""
    active: str = ""
    """The active file's path as text, for the per-hint lstat (no pathlib per write)."""

    def __post_init__(self) -> None:
        self.active = str(self.info.active_path)


def run_step(
    slot: StreamSlot, request: StepRequest, rotator_of: Callable[[StreamSlot], Rotator]
) -> StepOutcome:
    """A rotation step (rotation pool): under the stream's lock, so retention and
    compression of the same stream wait for it."""
    with slot.lock:
        if slot.removed:
            return StepOutcome(None, False, None)
        slot.trigger = None  # unknown while the step changes the files
        check_safe(slot.info, slot.volume_root)
        rotator = rotator_of(slot)
        if not slot.recovered:
            rotator.recover()
            slot.recovered = True
            # Retention is not forced here: the daemon's reconcile asks for it when the
            # stream's plan has work, so 1,000 streams start without 1,000 full listings.
            request = request.merge(StepRequest(check=True))
        reason = request.reason or (rotator.needs_rotation() if request.check else None)
        rotation = retention = None
        latency = None
        share = slot.budget_share
        extra_budget = None if share is None else max(share, 1)
        if reason is not None:
            try:
                rotation = rotator.rotate(reason)
            except StreamError:
                # A full disk fails the copy (nothing committed, nothing lost); retention
                # may free the room the next attempt needs, so it runs now, not only when
                # a reconcile happens to ask for it. The failure is still reported.
                with contextlib.suppress(StreamError):
                    rotator.enforce_retention(extra_budget_bytes=extra_budget)
                raise
            if rotation is not None and request.hint_at is not None:
                latency = time.monotonic() - request.hint_at
        if rotation is not None or request.retention:
            retention = rotator.enforce_retention(extra_budget_bytes=extra_budget)
        slot.trigger = size_trigger(slot.info)
        more = bool(getattr(rotation, "more_work", False))
        return StepOutcome(reason, rotation is not None, latency, rotation, retention, more)


def run_compress(slot: StreamSlot, rotator_of: Callable[[StreamSlot], Rotator]) -> None:
    """Compress the stream's closed segments (compression pool)."""
    # Under the stream's lock: retention must not delete a segment being compressed.
    # Other streams' rotations never wait: this runs on the compression pool.
    with slot.lock:
        if slot.removed:
            return
        check_safe(slot.info, slot.volume_root)
        rotator_of(slot).compress_pending(extra_budget_bytes=budget_share_arg(slot.budget_share))


def size_trigger(info: StreamInfo) -> tuple[int, int, int] | None:
    """(device, inode, size) at which the active file's live bytes (past the committed
    offset in the state file, as the rotator counts them) reach maxSize; None if unknown
    or the stream has no maxSize. Two small syscalls and a state read, once per step."""
    max_size = info.policy.max_size_bytes
    if max_size <= 0:
        return None
    try:
        with open_stream_dir(info) as d:
            st = d.lstat(info.base)
            state = load_state_in(d, info.base) if st is not None else None
    except (OSError, StreamError):
        return None
    if st is None:
        return None
    committed = 0
    if state is not None and (state.device, state.inode) == (st.st_dev, st.st_ino):
        physical = state.physical_committed
        committed = physical if physical <= st.st_size else 0
    return st.st_dev, st.st_ino, committed + max_size


def check_safe(info: StreamInfo, volume_root: Path | None) -> None:
    """Raise UnsafeFile unless the stream's directory is reached from its safety root
    without a symlink, and its active file and `.logvold` (if present) are a regular
    file and a directory. One walk of fds, no path resolution: what is checked is what
    the rotator then opens (and it checks again, on its own fds)."""
    if info.root is None and volume_root is not None:
        info = dataclasses.replace(info, root=volume_root)
    try:
        d = open_stream_dir(info)
    except FileNotFoundError:
        return  # not there (yet): nothing to touch
    with d:
        for name, want_dir in ((info.base, False), (STATE_DIR_NAME, True)):
            st = d.lstat(name)
            if st is None:
                continue
            where = str(d.path / name)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeFile(f"{where} is a symlink; not followed", kind="symlink", path=where)
            if want_dir and not stat.S_ISDIR(st.st_mode):
                raise UnsafeFile(
                    f"{where} is not a directory; not touched", kind="not-directory", path=where
                )
            if not want_dir and not stat.S_ISREG(st.st_mode):
                raise UnsafeFile(
                    f"{where} is not a regular file; not touched (replace it with a regular file)",
                    kind="not-regular",
                    path=where,
                )
