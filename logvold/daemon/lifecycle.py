"""The running daemon's lifecycle: start, the guarded tasks, stop, and `--once`.

Composition only: the config makes streams (static source -> registry; pod
discovery feeds the same registry when `kubernetes.enabled`), hints
and period boundaries make steps (watcher, scheduler), steps run on bounded
pools (workers), and the HTTP API serves the registry. The daemon is a set of
named, guarded tasks: if one dies, all stop and the exit code says so. Signals
only set events. A periodic full reconcile is the truth; file events are hints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

from logvold.core.streams import StreamInfo
from logvold.daemon import LOGGER_NAME
from logvold.daemon.config_watch import ConfigFileWatch
from logvold.daemon.http_server import HttpServer
from logvold.daemon.locks import StreamDirectoryLocks
from logvold.daemon.reload import ReloadSteps
from logvold.daemon.steps import RotatorFactory, StepRequest
from logvold.daemon.streams import ManagedStreams
from logvold.daemon.workers import StreamWorkers
from logvold.sources.watcher import DirectoryWatcher
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(LOGGER_NAME)

RESCAN_DEBOUNCE_S = 0.2
"""Entries appearing together (a pod starting several containers) cost one rescan."""


def _default_rotator_factory() -> RotatorFactory:
    from logvold.fileio.rotator import StreamRotator

    def make(info: StreamInfo, metrics: Metrics | None, clock: Callable[[], datetime]) -> Any:
        from logvold.runner.reopen import run_reopen_action

        rotator = StreamRotator(info, metrics, clock)
        rotator.reopener = run_reopen_action  # signals and commands stay out of fileio
        return rotator

    return make


class Daemon(ReloadSteps):
    """The serve daemon as named steps a test can call: start(), run(), stop().

    Its other steps come from the groups it is built on (daemon/state.py lists them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.locks = StreamDirectoryLocks(self.metrics)
        self.config_watch = ConfigFileWatch(self.options.config_path, self.request_reload)
        self.streams = ManagedStreams(
            self.registry,
            self.source,
            self.locks,
            self.scheduler,
            self.changes,
            self.metrics,
            self.activity,
            clock=self.clock,
            config=lambda: self.config,
            stopping=self._stop.is_set,
            request_rescan=self._request_rescan,
        )
        self.http = HttpServer(
            self.registry,
            self.metrics,
            self.changes,
            is_ready=self.is_ready,
            is_live=self.liveness,
        )

    @property
    def _runner(self) -> web.AppRunner | None:
        """The HTTP listener (tests read its port)."""
        return self.http.runner

    # -- named steps ------------------------------------------------------------------

    async def start(self, *, watch: bool = True) -> None:
        """Wire everything, run the first full reconcile, start the HTTP server."""
        loop = self._loop = asyncio.get_running_loop()
        self.workers = StreamWorkers(
            loop,
            self._rotator_factory or _default_rotator_factory(),
            self.metrics,
            self.clock,
            rotation_workers=self.options.rotation_workers,
            compression_workers=self.options.compression_workers,
            on_rotated=self._on_rotated,
            on_step=self.changes.notify,
            on_outcome=self._on_outcome,
        )
        self.streams.attach(loop, self.workers)
        self._prepare_default_volume(self.config)
        # Before any stream is managed: a directory another logvold manages stops the
        # start (exit 1) instead of two managers losing and duplicating its events.
        self.locks.lock_volumes(self.config)
        self.registry.subscribe(self.streams.listener)
        self.source.set_config(self.config)
        self.config_watch.remember(self.config_watch.read())
        if watch:
            self.watcher = DirectoryWatcher(
                loop, self._on_hint, self._relevance(), on_error=self._watch_error
            )
            self.watcher.start()
        await self._reconcile(full=True)
        if self.config.kubernetes.enabled:
            await self._start_discovery(self.config)
        if self.options.serve_http:
            await self.http.start(self.config)
        self._ready = True
        self._started = True
        self.notifier.ready(f"serving {len(self.workers)} streams")
        fields: dict[str, object] = {
            "streams": len(self.workers),
            "volumes": len(self.config.volumes),
            "config": self.config.source,
        }
        if self.options.serve_http:
            log.info("logvold serving", extra={**fields, "listen": self.config.server.listen})
        else:
            log.info("logvold checking every stream once", extra=fields)

    async def run(self) -> int:
        """Run the guarded tasks until stop is requested (0) or one of them dies (1)."""
        specs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "triggers": self._triggers_loop,
            "reconciler": self._reconcile_loop,
            "reloader": self._reload_loop,
            "heartbeat": self._heartbeat_loop,
        }
        if self.notifier.watchdog_interval_s() is not None:
            specs["watchdog"] = self._watchdog_loop
        for name, factory in specs.items():
            self._tasks[name] = asyncio.create_task(self._guard(name, factory), name=name)
        await self._stop.wait()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        return 1 if self._failed_task else 0

    async def stop(self) -> None:
        """Finish the steps in flight (each writes its state), then close everything."""
        self._ready = False
        self.notifier.stopping()
        if self.discovery is not None:
            await asyncio.to_thread(self.discovery.stop)
            self.discovery = None
        if self.watcher is not None:
            self.watcher.stop()  # no thread: it only unregisters its fd from the loop
            self.watcher = None
        if self.workers is not None:
            await self.workers.close()
        await self.http.close()
        self.locks.release_all()
        if self._started:  # a start that failed says why itself (main_serve: "cannot start")
            log.info("logvold stopped", extra={"failed_task": self._failed_task or "-"})

    async def run_once(self) -> int:
        """One reconcile pass (`--once`): rotate what needs it, enforce retention,
        compress, wait for all of it; 1 if a step failed."""
        await self.start(watch=False)
        assert self.workers is not None
        for key in self.workers:
            self.workers.submit(key, StepRequest(check=True, retention=True))
        await self.workers.drain()
        failures = self.workers.failures
        await self.stop()
        return 1 if failures else 0

    async def wait_idle(self) -> None:
        """Wait until no step is in flight (tests)."""
        if self.workers is not None:
            await self.workers.drain()

    # -- tasks ------------------------------------------------------------------------

    async def _guard(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed_task = name
            log.exception("task died; stopping", extra={"task": name})
            self._stop.set()
        else:
            if not self._stop.is_set():
                self._failed_task = name
                log.error("task ended unexpectedly; stopping", extra={"task": name})
                self._stop.set()

    async def _triggers_loop(self) -> None:
        assert self.workers is not None
        while not self._stop.is_set():
            self._dispatch_due()
            timeout = self.scheduler.next_wakeup_s()
            self._wake.clear()
            await _wait_event(self._wake, max(timeout, 0.01))

    def _dispatch_due(self) -> None:
        assert self.workers is not None
        for due in self.scheduler.due():
            if due.reason == "period":
                request = StepRequest(reason="period", check=True)
            else:
                request = StepRequest(check=True, hint_at=time.monotonic())
            self.workers.submit(due.key, request)

    async def _reconcile_loop(self) -> None:
        next_full = time.monotonic() + self.config.rescan_interval_s
        while not self._stop.is_set():
            timeout = max(0.0, next_full - time.monotonic())
            await _wait_event(self._rescan, timeout)
            if self._rescan.is_set():
                await asyncio.sleep(RESCAN_DEBOUNCE_S)
                self._rescan.clear()
            full = self._full_rescan or time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + self.config.rescan_interval_s
                if self.config_watch.changed():
                    self.request_reload()  # safety net for a missed file event
            await self._reconcile(full=full)

    async def _reload_loop(self) -> None:
        while not self._stop.is_set():
            await self._reload.wait()
            self._reload.clear()
            self.notifier.reloading()
            try:
                await self.reload()
            finally:
                self.notifier.ready(f"serving {len(self.registry)} streams")

    async def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            await _wait_event(self._stop, 1.0)

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 from the event loop itself: a wedged loop stops the pings and
        systemd restarts the daemon (WatchdogSec in the unit)."""
        interval = self.notifier.watchdog_interval_s()
        assert interval is not None
        while not self._stop.is_set():
            self.notifier.ping()
            await _wait_event(self._stop, interval)


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until `event` is set or `timeout_s` passed. asyncio.timeout, not wait_for:
    Python 3.11's wait_for can swallow a cancellation that arrives as the event fires,
    which would leave a stopping daemon waiting a whole rescan interval."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
