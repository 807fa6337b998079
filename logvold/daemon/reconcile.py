"""The reconcile pass, the daemon's truth: scan the volumes, survey the streams, submit what is due.

A full pass (every rescanInterval, after a reload or a lost hint) also expires finalised
streams, locks directories that appeared, and recomputes the byte-budget shares; a
partial one rescans only the volumes whose directories a hint named. The survey runs on
a worker thread and costs no step for a stream with nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from logvold.core.streams import StreamInfo
from logvold.daemon.activity import ActivityLog
from logvold.daemon.logger import LOGGER_NAME
from logvold.daemon.steps import StepOutcome, StepRequest
from logvold.daemon.streams import ManagedStreams
from logvold.daemon.survey import Survey, survey_streams
from logvold.daemon.workers import StreamWorkers
from logvold.sources.static import StaticSource
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from logvold.core.policy import Config

log = logging.getLogger(LOGGER_NAME)

RESCAN_DEBOUNCE_S = 0.2
"""Entries appearing together (a pod starting several containers) cost one rescan."""


class Reconciler:
    """Reconcile passes: what asks for one (hints, new streams, growing budgets), the
    loop that runs them, and how long the current or last one took (liveness)."""

    def __init__(
        self,
        source: StaticSource,
        streams: ManagedStreams,
        metrics: Metrics,
        activity: ActivityLog,
        *,
        clock: Callable[[], datetime],
        config: Callable[[], Config],
        refresh_watches: Callable[[], None],
    ) -> None:
        self._source = source
        self._streams = streams
        self._metrics = metrics
        self._activity = activity
        self._clock = clock
        self._config = config
        self._refresh_watches = refresh_watches
        self._workers: StreamWorkers | None = None
        self._wanted = asyncio.Event()
        self._volumes: set[str] = set()
        self._full = False
        self._budgets = False
        self.running_since: float | None = None
        """Monotonic start of the pass in progress (None: none runs)."""
        self.last_done = time.monotonic()
        """Monotonic end of the last pass."""
        self.passes = 0

    def attach(self, workers: StreamWorkers) -> None:
        self._workers = workers

    def request(
        self, volumes: Iterable[str] = (), *, full: bool = False, budgets: bool = False
    ) -> None:
        """A pass soon (debounced): of `volumes` (none named: the loop's choice), a full
        one, and/or one that recomputes the budget shares."""
        self._volumes.update(volumes)
        self._full = self._full or full
        self._budgets = self._budgets or budgets
        self._wanted.set()

    async def run(self, stop: asyncio.Event, before_full: Callable[[], None]) -> None:
        """Passes until `stop`: a full one every rescanInterval (after `before_full`),
        partial ones as asked."""
        next_full = time.monotonic() + self._config().rescan_interval_s
        while not stop.is_set():
            timeout = max(0.0, next_full - time.monotonic())
            await wait_event(self._wanted, timeout)
            if self._wanted.is_set():
                await asyncio.sleep(RESCAN_DEBOUNCE_S)
                self._wanted.clear()
            full = self._full or time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + self._config().rescan_interval_s
                before_full()
            await self.reconcile(full=full)

    async def reconcile(self, *, full: bool) -> None:
        """Scan volumes into the registry, survey the streams, submit what is due."""
        self.running_since = time.monotonic()
        try:
            await self._pass(full=full)
        finally:
            self.running_since = None
            self.last_done = time.monotonic()

    async def _pass(self, *, full: bool) -> None:
        workers = self._workers
        assert workers is not None
        volumes = None if full else set(self._volumes)
        self._volumes.clear()
        self._full = False
        await asyncio.to_thread(self._source.scan, volumes)
        workers.set_crowded(self._source.crowded_directories())
        if full:
            self._streams.expire_terminated()
            self._streams.relock()
        self._refresh_watches()
        with_budgets = self._budgets or full
        self._budgets = False
        infos = workers.infos()
        config = self._config()
        survey = await asyncio.to_thread(
            survey_streams,
            infos,
            now=self._clock(),
            shares={i.key: workers.budget_share(i.key) for i in infos},
            volume_budgets={v.name: v.max_total_size_bytes for v in config.volumes},
            node_budget_bytes=config.node_max_total_size_bytes,
            with_budgets=with_budgets,
        )
        if survey.shares is not None:
            self._apply_budget_shares(workers, infos, survey)
        unstarted = self._streams.take_unstarted()
        for key, check in survey.checks.items():
            # The survey's own stat found a missed size trigger or retention work; a
            # stream with neither costs no step (1,000 idle streams stay cheap).
            first = key in unstarted
            if check.retention or check.size_due or first:
                workers.submit(
                    key,
                    StepRequest(check=check.size_due or first, retention=check.retention or first),
                )
        self._activity.flush()
        self.passes += 1
        self._metrics.streams.set(len(workers))

    def _apply_budget_shares(
        self, workers: StreamWorkers, infos: list[StreamInfo], survey: Survey
    ) -> None:
        assert survey.shares is not None
        for info in infos:
            share = survey.shares.get(info.key)
            old = workers.budget_share(info.key)
            workers.set_budget_share(info.key, share)
            usage = survey.usages.get(info.key)
            if (
                share is not None
                and usage is not None
                and share < usage.total_bytes
                and (old is None or share < old)
            ):
                log.info(
                    "disk budget trims stream",
                    extra={
                        "stream": str(info.key),
                        "keep_bytes": share,
                        "used_bytes": usage.total_bytes,
                    },
                )

    def on_rotated(self, info: StreamInfo, outcome: StepOutcome) -> None:
        """The workers' callback after a rotation: budget shares move as streams grow."""
        config = self._config()
        volume_budget = next(
            (v.max_total_size_bytes for v in config.volumes if v.name == info.volume), 0
        )
        if volume_budget > 0 or config.node_max_total_size_bytes > 0:
            self.request(budgets=True)  # recompute soon


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until `event` is set or `timeout_s` passed. asyncio.timeout, not wait_for:
    Python 3.11's wait_for can swallow a cancellation that arrives as the event fires,
    which would leave a stopping daemon waiting a whole rescan interval."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
