"""Runs rotator steps for many streams on two bounded thread pools.

One step in flight per stream (requests arriving meanwhile are merged and run
next); rotation checks and retention run on the rotation pool, compression on
its own pool so a long gzip never queues ahead of another stream's rotation.
Before every step the active file is checked to be a regular file inside its
volume, so a symlink or directory planted in its place is never followed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from logvold.core.layout import STATE_DIR_NAME
from logvold.core.streams import StreamInfo, StreamKey
from logvold.errors import StreamError
from logvold.survey import budget_share_arg

if TYPE_CHECKING:
    from logvold.metrics import Metrics

log = logging.getLogger(__name__)


class Rotator(Protocol):
    """The part of `fileio.rotator.StreamRotator` the daemon drives."""

    def recover(self) -> None: ...
    def needs_rotation(self) -> str | None: ...
    def rotate(self, reason: str) -> Any: ...
    def enforce_retention(self, *, extra_budget_bytes: int | None = None) -> Any: ...
    def compress_pending(self, extra_budget_bytes: int | None = None) -> Any: ...


RotatorFactory = Callable[[StreamInfo, "Metrics | None", Callable[[], datetime]], Rotator]


class UnsafeStream(Exception):
    """The stream's files are not what they must be (symlink, directory, outside the volume)."""


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
        return StepRequest(check=self.check or other.check, reason=self.reason or other.reason,
                           retention=self.retention or other.retention,
                           hint_at=min(hints) if hints else None)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    reason: str | None
    rotated: bool
    latency_s: float | None
    rotation: Any = None
    """The rotator's RotationResult when `rotated` (for the daemon's info line)."""
    retention: Any = None
    """The rotator's RetentionResult when retention ran."""


@dataclass(eq=False)
class _Slot:
    info: StreamInfo
    volume_root: Path | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    rotator: Rotator | None = None
    recovered: bool = False
    running: bool = False
    queued: StepRequest | None = None
    compressing: bool = False
    compress_again: bool = False
    removed: bool = False
    budget_share: int | None = None
    failing: str | None = None


class StreamWorkers:
    """The streams the daemon manages and the steps running on them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rotator_factory: RotatorFactory,
                 metrics: Metrics | None, clock: Callable[[], datetime], *,
                 rotation_workers: int = 4, compression_workers: int = 2,
                 on_rotated: Callable[[StreamInfo, StepOutcome], None] | None = None,
                 on_outcome: Callable[[StreamInfo, StepOutcome], None] | None = None) -> None:
        self._loop = loop
        self._factory = rotator_factory
        self._metrics = metrics
        self._clock = clock
        self._on_rotated = on_rotated
        self._on_outcome = on_outcome
        self._rotation_pool = ThreadPoolExecutor(rotation_workers, "logvold-rotate")
        self._compression_pool = ThreadPoolExecutor(compression_workers, "logvold-compress")
        self._slots: dict[StreamKey, _Slot] = {}
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closing = False
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

    def remove(self, key: StreamKey) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            slot.removed = True

    # -- scheduling (loop thread) ------------------------------------------------------

    def submit(self, key: StreamKey, request: StepRequest) -> bool:
        """Run `request` on the stream now, or right after its step in flight."""
        slot = self._slots.get(key)
        if slot is None or self._closing:
            return False
        if slot.running:
            slot.queued = request if slot.queued is None else slot.queued.merge(request)
            return True
        slot.running = True
        fut = self._loop.run_in_executor(self._rotation_pool, self._step, slot, request)
        self._track(fut)
        fut.add_done_callback(lambda f: self._step_done(slot, f))
        return True

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
        if slot.queued is not None and not slot.removed and not self._closing:
            queued, slot.queued = slot.queued, None
            self.submit(slot.info.key, queued)

    def _compress_done(self, slot: _Slot, fut: asyncio.Future[Any]) -> None:
        slot.compressing = False
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
        kind = type(exc).__name__
        # The rotator counts its own StreamErrors; count what it never saw.
        if self._metrics is not None and not isinstance(exc, StreamError):
            k = slot.info.key
            error = "unsafe" if isinstance(exc, UnsafeStream) else kind
            self._metrics.rotation_failures.labels(k.namespace, k.pod, k.container, error).inc()
        signature = f"{what}:{kind}:{exc}"
        if slot.failing != signature:  # log once per distinct failure, not per retry
            slot.failing = signature
            log.warning("%s failed; retried on the next trigger", what,
                        extra={"stream": str(slot.info.key), "path": str(slot.info.active_path),
                               "error": f"{kind}: {exc}"})

    def _recovered_ok(self, slot: _Slot) -> None:
        if slot.failing is not None:
            log.info("stream healthy again", extra={"stream": str(slot.info.key)})
            slot.failing = None

    # -- steps (pool threads) ----------------------------------------------------------

    def _rotator(self, slot: _Slot) -> Rotator:
        if slot.rotator is None:
            slot.rotator = self._factory(slot.info, self._metrics, self._clock)
            slot.recovered = False
        return slot.rotator

    def _step(self, slot: _Slot, request: StepRequest) -> StepOutcome:
        with slot.lock:
            if slot.removed:
                return StepOutcome(None, False, None)
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
            if reason is not None:
                rotation = rotator.rotate(reason)
                if rotation is not None and request.hint_at is not None:
                    latency = time.monotonic() - request.hint_at
            if rotation is not None or request.retention:
                share = slot.budget_share
                retention = rotator.enforce_retention(
                    extra_budget_bytes=None if share is None else max(share, 1))
            return StepOutcome(reason, rotation is not None, latency, rotation, retention)

    def _compress(self, slot: _Slot) -> None:
        # Under the stream's lock: retention must not delete a segment being compressed.
        # Other streams' rotations never wait: this runs on the compression pool.
        with slot.lock:
            if slot.removed:
                return
            check_safe(slot.info, slot.volume_root)
            self._rotator(slot).compress_pending(
                extra_budget_bytes=budget_share_arg(slot.budget_share))

    # -- shutdown ----------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until no step is running or queued (used by `--once` and tests)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def close(self) -> None:
        """Finish the steps in flight (each writes its state), drop the queued ones."""
        self._closing = True
        for pool in (self._rotation_pool, self._compression_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.gather(*list(self._inflight), return_exceptions=True)
        await asyncio.to_thread(self._rotation_pool.shutdown, wait=True)
        await asyncio.to_thread(self._compression_pool.shutdown, wait=True)


def check_safe(info: StreamInfo, volume_root: Path | None) -> None:
    """Raise UnsafeStream unless the stream's files are plain files inside its volume."""
    directory = info.directory
    if volume_root is not None:
        real_dir = os.path.realpath(directory)
        real_root = os.path.realpath(volume_root)
        if real_dir != real_root and not real_dir.startswith(real_root.rstrip(os.sep) + os.sep):
            raise UnsafeStream(f"{directory} resolves outside its volume {volume_root}; "
                               "not touched")
    for path, want_dir in ((info.active_path, False), (directory / STATE_DIR_NAME, True)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if want_dir and not stat.S_ISDIR(st.st_mode):
            raise UnsafeStream(f"{path} is not a directory; not touched")
        if not want_dir and not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise UnsafeStream(f"{path} is {kind}; not touched (replace it with a regular file)")
