"""Runs rotator steps for many streams on two bounded thread pools.

One step in flight per stream (requests arriving meanwhile are merged and run
next); rotation checks and retention run on the rotation pool, compression on
its own pool so a long gzip never queues ahead of another stream's rotation.
Steps wait for a free rotation thread in a round-robin queue across volumes
(`core.fair_queue`), so a volume with thousands of streams due at once never
delays another volume's rotation by more than one step per busy volume.
Before every step the stream directory is walked from its safety root without
following symlinks (`fileio.safedir`), so a symlinked subDir, active file or
`.logvold` planted by the pod is refused, never followed. A stop finishes the steps
in flight (copy, commit, punch) within STOP_TIMEOUT_S, then zeroes each stream's
committed tail, so the files themselves hold every event once.

Size triggers react to writes without a step per write: after every step the
worker notes the active file's identity and the size at which it would reach
maxSize (committed offset + maxSize, from the state file), and `size_due()` -
called on the loop for each inotify modify hint - compares one lstat with it. A
stream far below its limit costs that lstat per batch of writes, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from logvold.core.fair_queue import RoundRobinQueue
from logvold.core.layout import STATE_DIR_NAME
from logvold.core.streams import StreamInfo, StreamKey
from logvold.daemon.survey import budget_share_arg
from logvold.errors import StreamError
from logvold.fileio.safedir import UnsafeFile, open_stream_dir
from logvold.fileio.state import load_state_in

if TYPE_CHECKING:
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

FAILED_RETRY_S = 1.0
"""A stream whose last step failed is retried on writes at most this often (it has no
size trigger then, so without it every batch of writes would be a failing step)."""


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

#: How long a stop waits for the steps in flight before it abandons a copy (cleanly, before
#: its commit: nothing is lost or doubled) and exits. A step's commit and punch are never
#: abandoned. Below the DaemonSet's terminationGracePeriodSeconds and systemd's TimeoutStopSec.
STOP_TIMEOUT_S = 20.0

#: After the steps in flight, zeroing the committed tails may take this much longer (a
#: directory walk, a 4 KiB read and a punch per stream): 20 + 5 s stays below the 30 s
#: grace periods.
QUIESCE_TIMEOUT_S = 5.0


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
class _Slot:
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


_ALLOC_SLACK_BYTES = 8192
"""Blocks a punched file may keep besides its live part (the partial block before the
committed offset, a block of preallocation)."""


class StreamWorkers:
    """The streams the daemon manages and the steps running on them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        rotator_factory: RotatorFactory,
        metrics: Metrics | None,
        clock: Callable[[], datetime],
        *,
        rotation_workers: int = 4,
        compression_workers: int = 2,
        on_rotated: Callable[[StreamInfo, StepOutcome], None] | None = None,
        on_step: Callable[[StreamKey], None] | None = None,
        on_outcome: Callable[[StreamInfo, StepOutcome], None] | None = None,
    ) -> None:
        """`on_step(key)`: on the loop after every finished step and compression (the
        files may have changed: followers are woken with it)."""
        self._loop = loop
        self._factory = rotator_factory
        self._metrics = metrics
        self._clock = clock
        self._on_rotated = on_rotated
        self._on_step = on_step
        self._on_outcome = on_outcome
        self._rotation_workers = rotation_workers
        self._rotation_pool = ThreadPoolExecutor(rotation_workers, "logvold-rotate")
        self._turns: RoundRobinQueue[tuple[str, str], StreamKey] = RoundRobinQueue()
        """Streams with a step waiting for a rotation thread, grouped by volume."""
        self._steps_running = 0
        self._crowded: frozenset[Path] = frozenset()
        """Directories too big to list (see `set_crowded`): no step starts there."""
        self._compression_pool = ThreadPoolExecutor(compression_workers, "logvold-compress")
        self._slots: dict[StreamKey, _Slot] = {}
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closing = False
        self._stop_deadline: float | None = None
        """Monotonic time after which a copy in flight is abandoned (set by close())."""
        self.failures = 0
        """Steps that raised (bad input included); `--once` turns this into its exit code."""
        self.rotations = 0
        self.latencies_s: list[float] = []

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def __iter__(self) -> Iterator[StreamKey]:
        return iter(list(self._slots))

    def infos(self) -> list[StreamInfo]:
        return [slot.info for slot in self._slots.values()]

    def info(self, key: StreamKey) -> StreamInfo | None:
        slot = self._slots.get(key)
        return slot.info if slot else None

    def budget_share(self, key: StreamKey) -> int | None:
        slot = self._slots.get(key)
        return slot.budget_share if slot else None

    def set_budget_share(self, key: StreamKey, share: int | None) -> None:
        slot = self._slots.get(key)
        if slot is not None:
            slot.budget_share = share

    # -- membership (loop thread) ------------------------------------------------------

    def put(self, info: StreamInfo, volume_root: Path | None) -> None:
        slot = self._slots.get(info.key)
        if slot is None:
            self._slots[info.key] = _Slot(info=info, volume_root=volume_root)
            return
        if slot.info != info:
            slot.info = info
            slot.volume_root = volume_root
            slot.rotator = None  # rebuilt with the new policy at the next step
            slot.recovered = False
            slot.trigger = None
            slot.active = str(info.active_path)

    def remove(self, key: StreamKey) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            slot.removed = True
            self._turns.discard(key)

    def set_crowded(self, directories: Iterable[Path]) -> None:
        """Directories holding more entries than a listing takes: a step there would list
        100,000 names only to be refused, so none is started until they shrink."""
        self._crowded = frozenset(directories)

    # -- scheduling (loop thread) ------------------------------------------------------

    def size_due(self, key: StreamKey) -> bool:
        """Whether a write to the stream may have crossed its maxSize: one lstat against
        the trigger noted after its last step. A stream without maxSize never is (its
        period boundaries come from the scheduler)."""
        slot = self._slots.get(key)
        if slot is None or slot.info.policy.max_size_bytes <= 0:
            return False
        if slot.running:
            slot.recheck = True  # decided when the step ends, with its fresh trigger
            return False
        trigger = slot.trigger
        if trigger is None:
            return slot.failing is None or time.monotonic() >= slot.retry_at
        try:
            st = os.lstat(slot.active)
        except OSError:
            return True
        shrank, slot.seen_size = st.st_size < slot.seen_size, st.st_size
        max_size = slot.info.policy.max_size_bytes
        return (
            (st.st_dev, st.st_ino) != trigger[:2]
            or st.st_size >= trigger[2]
            # The writer truncated its file (`> app.log`): the committed offset no
            # longer holds. Seen by the size going down, or, when the truncation and
            # the rewrite fell in one batch of hints, by more blocks allocated than a
            # punched file's live part can hold (with room for preallocation).
            or shrank
            or st.st_size < trigger[2] - max_size
            or st.st_blocks * 512 >= 2 * max_size + _ALLOC_SLACK_BYTES
        )

    def submit(self, key: StreamKey, request: StepRequest) -> bool:
        """Run `request` on the stream at its volume's next turn, or right after its step
        in flight."""
        slot = self._slots.get(key)
        if slot is None or self._closing or slot.info.directory in self._crowded:
            return False
        if slot.running:
            slot.queued = request if slot.queued is None else slot.queued.merge(request)
            return True
        if slot.waiting is not None:
            slot.waiting = slot.waiting.merge(request)
            return True
        slot.waiting = request
        self._turns.push(_volume_group(slot.info), key)
        self._start_turns()
        return True

    def _start_turns(self) -> None:
        """Start waiting steps, volumes in turn, while a rotation thread is free (the pool
        never holds a backlog of its own, so its FIFO cannot undo the fairness)."""
        while self._steps_running < self._rotation_workers and not self._closing:
            key = self._turns.pop()
            if key is None:
                return
            slot = self._slots.get(key)
            if slot is None or slot.waiting is None or slot.running:
                continue
            if slot.info.directory in self._crowded:
                slot.waiting = None  # queued before the scan found it crowded
                continue
            request, slot.waiting = slot.waiting, None
            slot.running = True
            self._steps_running += 1
            fut = self._loop.run_in_executor(self._rotation_pool, self._step, slot, request)
            self._track(fut)
            fut.add_done_callback(functools.partial(self._step_done, slot))

    def _submit_compress(self, slot: _Slot) -> None:
        if slot.compressing:
            slot.compress_again = True
            return
        slot.compressing = True
        fut = self._loop.run_in_executor(self._compression_pool, self._compress, slot)
        self._track(fut)
        fut.add_done_callback(lambda f: self._compress_done(slot, f))

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._inflight.add(fut)
        fut.add_done_callback(self._inflight.discard)

    def _step_done(self, slot: _Slot, fut: asyncio.Future[StepOutcome]) -> None:
        slot.running = False
        self._steps_running -= 1
        try:
            self._step_finished(slot, fut)
        finally:
            self._start_turns()

    def _step_finished(self, slot: _Slot, fut: asyncio.Future[StepOutcome]) -> None:
        if self._on_step is not None and not slot.removed:
            self._on_step(slot.info.key)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._failed(slot, "step", exc)
        else:
            outcome = fut.result()
            self._recovered_ok(slot)
            if outcome.rotated:
                self.rotations += 1
                if outcome.latency_s is not None:
                    if self._metrics is not None:
                        self._metrics.rotation_seconds.observe(outcome.latency_s)
                    self.latencies_s.append(outcome.latency_s)
                    del self.latencies_s[:-10000]
                if self._on_rotated is not None:
                    self._on_rotated(slot.info, outcome)
            if self._on_outcome is not None and not slot.removed:
                self._on_outcome(slot.info, outcome)
            if slot.info.policy.compress != "none" and not slot.removed:
                self._submit_compress(slot)
            if outcome.more and not slot.removed and not self._closing:
                # Behind every step already queued on the pool: a huge backlog is cut a
                # bounded step at a time while other streams keep rotating.
                more = StepRequest(reason=outcome.reason)
                slot.queued = more if slot.queued is None else slot.queued.merge(more)
        if slot.queued is not None and not slot.removed and not self._closing:
            queued, slot.queued = slot.queued, None
            self.submit(slot.info.key, queued)
        elif slot.recheck and not slot.removed and not self._closing:
            slot.recheck = False
            if self.size_due(slot.info.key):
                self.submit(slot.info.key, StepRequest(check=True, hint_at=time.monotonic()))

    def _compress_done(self, slot: _Slot, fut: asyncio.Future[Any]) -> None:
        slot.compressing = False
        if self._on_step is not None and not slot.removed:
            self._on_step(slot.info.key)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._failed(slot, "compress", exc)
        if slot.compress_again and not slot.removed and not self._closing:
            slot.compress_again = False
            self._submit_compress(slot)

    def _failed(self, slot: _Slot, what: str, exc: BaseException) -> None:
        self.failures += 1
        slot.retry_at = time.monotonic() + FAILED_RETRY_S
        kind = type(exc).__name__
        # The rotator counts its own StreamErrors; count what it never saw.
        if self._metrics is not None and isinstance(exc, UnsafeFile):
            k = slot.info.key
            self._metrics.unsafe_refused.labels(exc.kind).inc()
            self._metrics.rotation_failures.labels(k.namespace, k.pod, k.container, "unsafe").inc()
        elif self._metrics is not None and not isinstance(exc, StreamError):
            k = slot.info.key
            self._metrics.rotation_failures.labels(
                k.namespace, k.pod, k.container, "internal"
            ).inc()  # a closed label set
        signature = f"{what}:{kind}:{exc}"
        if slot.failing != signature:  # log once per distinct failure, not per retry
            slot.failing = signature
            log.warning(
                "%s failed; retried on the next trigger",
                what,
                extra={
                    "stream": str(slot.info.key),
                    "path": str(slot.info.active_path),
                    "error": f"{kind}: {exc}",
                },
            )

    def _recovered_ok(self, slot: _Slot) -> None:
        if slot.failing is not None:
            log.info("stream healthy again", extra={"stream": str(slot.info.key)})
            slot.failing = None

    # -- steps (pool threads) ----------------------------------------------------------

    def _rotator(self, slot: _Slot) -> Rotator:
        if slot.rotator is None:
            rotator = slot.rotator = self._factory(slot.info, self._metrics, self._clock)
            slot.recovered = False
            if isinstance(rotator, StoppableRotator):
                rotator.abandon_copy = self._past_stop_deadline
                rotator.abandon_compress = self._stopping
                rotator.stop_pieces = self._stopping
        return slot.rotator

    def _stopping(self) -> bool:
        return self._closing

    def _past_stop_deadline(self) -> bool:
        deadline = self._stop_deadline
        return deadline is not None and time.monotonic() >= deadline

    def _step(self, slot: _Slot, request: StepRequest) -> StepOutcome:
        with slot.lock:
            if slot.removed:
                return StepOutcome(None, False, None)
            slot.trigger = None  # unknown while the step changes the files
            check_safe(slot.info, slot.volume_root)
            rotator = self._rotator(slot)
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

    def _compress(self, slot: _Slot) -> None:
        # Under the stream's lock: retention must not delete a segment being compressed.
        # Other streams' rotations never wait: this runs on the compression pool.
        with slot.lock:
            if slot.removed:
                return
            check_safe(slot.info, slot.volume_root)
            self._rotator(slot).compress_pending(
                extra_budget_bytes=budget_share_arg(slot.budget_share)
            )

    # -- shutdown ----------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until no step is running or queued (used by `--once` and tests)."""
        while self._inflight or (self._turns and not self._closing):
            if not self._inflight:
                self._start_turns()
                if not self._inflight:
                    return  # only removed streams were waiting
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Finish the steps in flight (each commits and punches, or, past `timeout_s`,
        abandons its copy before the commit), drop the queued ones, then zero each
        stream's committed tail (`quiesce`) so the files hold every event once."""
        self._closing = True
        self._stop_deadline = time.monotonic() + timeout_s
        for pool in (self._rotation_pool, self._compression_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.gather(*list(self._inflight), return_exceptions=True)
        await asyncio.to_thread(self._rotation_pool.shutdown, wait=True)
        await asyncio.to_thread(self._compression_pool.shutdown, wait=True)
        await asyncio.to_thread(self._quiesce_all)

    def _quiesce_all(self) -> None:
        deadline = max(self._stop_deadline or 0.0, time.monotonic()) + QUIESCE_TIMEOUT_S
        for slot in list(self._slots.values()):
            if time.monotonic() >= deadline:
                log.warning("stop deadline reached: committed tails left unzeroed")
                return
            rotator = slot.rotator
            if slot.removed or not isinstance(rotator, StoppableRotator):
                continue
            with slot.lock:
                try:
                    rotator.quiesce()
                except (OSError, StreamError) as exc:
                    log.warning(
                        "cannot settle the stream at stop: %s",
                        exc,
                        extra={"stream": str(slot.info.key)},
                    )


def _volume_group(info: StreamInfo) -> tuple[str, str]:
    """The fairness group of a stream: its volume (a pod's volume names repeat across
    pods, so the pod's uid is part of it)."""
    return info.pod_uid or "", info.volume


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
