"""Runs rotator steps for many streams on two bounded thread pools.

One step in flight per stream (requests arriving meanwhile are merged and run
next); rotation checks and retention run on the rotation pool, compression on
its own pool so a long gzip never queues ahead of another stream's rotation.
Steps wait for a free rotation thread in a round-robin queue across volumes
(`core.fair_queue`), so a volume with thousands of streams due at once never
delays another volume's rotation by more than one step per busy volume.
What a step does to its stream (the safety walk first) is `daemon.steps`. A stop
finishes the steps in flight (copy, commit, punch) within STOP_TIMEOUT_S, then
zeroes each stream's committed tail, so the files themselves hold every event once.

Size triggers react to writes without a step per write: after every step the
worker notes the active file's identity and the size at which it would reach
maxSize (committed offset + maxSize, from the state file), and `size_due()` -
called on the loop for each inotify modify hint - compares one lstat with it. A
stream far below its limit costs that lstat per batch of writes, nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logvold.core.fair_queue import RoundRobinQueue
from logvold.core.streams import StreamInfo, StreamKey
from logvold.daemon.steps import (
    Rotator,
    RotatorFactory,
    StepOutcome,
    StepRequest,
    StoppableRotator,
    StreamSlot,
    run_compress,
    run_step,
)
from logvold.errors import StreamError
from logvold.fileio.safedir import UnsafeFile

if TYPE_CHECKING:
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

FAILED_RETRY_S = 1.0
"""A stream whose last step failed is retried on writes at most this often (it has no
size trigger then, so without it every batch of writes would be a failing step)."""


#: How long a stop waits for the steps in flight before it abandons a copy (cleanly, before
#: its commit: nothing is lost or doubled) and exits. A step's commit and punch are never
#: abandoned. Below the DaemonSet's terminationGracePeriodSeconds and systemd's TimeoutStopSec.
STOP_TIMEOUT_S = 20.0

#: After the steps in flight, zeroing the committed tails may take this much longer (a
#: directory walk, a 4 KiB read and a punch per stream): 20 + 5 s stays below the 30 s
#: grace periods.
QUIESCE_TIMEOUT_S = 5.0


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
        self._slots: dict[StreamKey, StreamSlot] = {}
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
            self._slots[info.key] = StreamSlot(info=info, volume_root=volume_root)
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

    def _submit_compress(self, slot: StreamSlot) -> None:
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

    def _step_done(self, slot: StreamSlot, fut: asyncio.Future[StepOutcome]) -> None:
        slot.running = False
        self._steps_running -= 1
        try:
            self._step_finished(slot, fut)
        finally:
            self._start_turns()

    def _step_finished(self, slot: StreamSlot, fut: asyncio.Future[StepOutcome]) -> None:
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

    def _compress_done(self, slot: StreamSlot, fut: asyncio.Future[Any]) -> None:
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

    def _failed(self, slot: StreamSlot, what: str, exc: BaseException) -> None:
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

    def _recovered_ok(self, slot: StreamSlot) -> None:
        if slot.failing is not None:
            log.info("stream healthy again", extra={"stream": str(slot.info.key)})
            slot.failing = None

    # -- steps (pool threads) ----------------------------------------------------------

    def _rotator(self, slot: StreamSlot) -> Rotator:
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

    def _step(self, slot: StreamSlot, request: StepRequest) -> StepOutcome:
        return run_step(slot, request, self._rotator)

    def _compress(self, slot: StreamSlot) -> None:
        run_compress(slot, self._rotator)

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
