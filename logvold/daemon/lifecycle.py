"""The running daemon: its parts wired together, start, the guarded tasks, reload, stop, `--once`.

Composition only: the config makes streams (static source -> registry; pod
discovery feeds the same registry when `kubernetes.enabled`), hints
and period boundaries make steps (watcher, scheduler), steps run on bounded
pools (workers), and the HTTP API serves the registry. The daemon is a set of
named, guarded tasks: if one dies, all stop and the exit code says so. Signals
only set events. A periodic full reconcile is the truth; file events are hints.

Each job is a part owning its state (one module each): the directory locks
(locks.py), the managed streams (streams.py), file hints and the watcher (hints.py),
reconcile passes (reconcile.py), the config file's watch (config_watch.py), pod
discovery and the reload checks (reload.py), the HTTP server (http_server.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

from logvold.config.serve_settings import ServeOptions, load_effective_config
from logvold.core.clock import utcnow
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.daemon.activity import ActivityLog
from logvold.daemon.config_watch import ConfigFileWatch
from logvold.daemon.hints import FileHints
from logvold.daemon.http_server import HttpServer
from logvold.daemon.locks import StreamDirectoryLocks
from logvold.daemon.logger import LOGGER_NAME
from logvold.daemon.reconcile import Reconciler, wait_event
from logvold.daemon.reload import Discovery, load_checked, log_rejected, prepare_default_volume
from logvold.daemon.scheduler import TriggerScheduler
from logvold.daemon.sdnotify import Notifier
from logvold.daemon.steps import RotatorFactory, StepOutcome, StepRequest
from logvold.daemon.streams import ManagedStreams
from logvold.daemon.workers import StreamWorkers
from logvold.errors import ConfigError, UsageError
from logvold.fileio.dirlock import DirectoryLocked
from logvold.sources.changes import StreamChanges
from logvold.sources.static import StaticSource
from logvold.telemetry.logsetup import configure_logging
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from aiohttp import web

    from logvold.core.policy import Config

log = logging.getLogger(LOGGER_NAME)


def _default_rotator_factory() -> RotatorFactory:
    from logvold.fileio.rotator import StreamRotator

    def make(info: StreamInfo, metrics: Metrics | None, clock: Callable[[], datetime]) -> Any:
        from logvold.runner.reopen import run_reopen_action

        rotator = StreamRotator(info, metrics, clock)
        rotator.reopener = run_reopen_action  # signals and commands stay out of fileio
        return rotator

    return make


class Daemon:
    """The serve daemon as named steps a test can call: start(), run(), reload(), stop().

    It holds the config, the lifecycle (tasks, stop/reload requests, readiness,
    liveness) and the parts, which it wires with callbacks at construction."""

    def __init__(
        self,
        config: Config,
        options: ServeOptions | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        rotator_factory: RotatorFactory | None = None,
        load_config: Callable[[ServeOptions], Config] = load_effective_config,
    ) -> None:
        self.config = config
        self.options = options or ServeOptions()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._rotator_factory = rotator_factory
        self._load_config = load_config
        self.notifier = Notifier()
        """systemd's notify socket (Type=notify unit): a no-op without $NOTIFY_SOCKET."""
        self.registry = StreamRegistry()
        self.source = StaticSource(self.registry, self.metrics)
        self.workers: StreamWorkers | None = None
        """The step pools (built at start: they need the running loop)."""
        self.scheduler: TriggerScheduler[StreamKey] = TriggerScheduler(
            clock,
            time.monotonic,
            hint_delay_s=self.options.hint_delay_s,
            min_check_interval_s=self.options.min_check_interval_s,
        )
        self.changes = StreamChanges()
        """Per-stream change notices for followers: every hint about a stream and every
        finished step bump its version (the HTTP API's followers sleep on them)."""
        self.activity = ActivityLog(log)
        """Rate-limited info lines per stream: rotated, truncated."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()
        self._ready = False
        self._started = False
        self._failed_task: str | None = None
        self._heartbeat = time.monotonic()
        """Monotonic time of the event loop's last heartbeat (liveness)."""
        self.reloads_ok = 0
        self.reloads_failed = 0

        def current() -> Config:
            return self.config

        self.locks = StreamDirectoryLocks(self.metrics)
        """`.logvold/lock` of every managed directory: one manager per directory."""
        self.config_watch = ConfigFileWatch(self.options.config_path, self.request_reload)
        self.streams = ManagedStreams(
            self.registry,
            self.source,
            self.locks,
            self.scheduler,
            self.changes,
            self.metrics,
            self.activity,
            clock=clock,
            config=current,
            stopping=self._stop.is_set,
            request_rescan=lambda budgets: self.reconciler.request(budgets=budgets),
        )
        self.hints = FileHints(
            self.source,
            self.streams,
            self.scheduler,
            self.changes,
            self.config_watch,
            self.metrics,
            config=current,
            wake=self._wake.set,
            rescan=lambda volumes: self.reconciler.request(volumes),
            rescan_all=lambda: self.reconciler.request(full=True),
        )
        self.reconciler = Reconciler(
            self.source,
            self.streams,
            self.metrics,
            self.activity,
            clock=clock,
            config=current,
            refresh_watches=self.hints.refresh_watches,
        )
        self.discovery = Discovery(self.registry, self.metrics)
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

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def is_ready(self) -> bool:
        return self._ready

    def liveness(self) -> str | None:
        """None while the daemon makes progress; else why not (GET /livez answers 503).

        Stuck means: the event loop missed its heartbeats, a reconcile pass (volume scan,
        survey: worker threads) has run for `stall_timeout_s`, or none finished for
        rescanInterval plus that. A full reconcile is the truth the daemon runs on: without
        it new streams, retention and budgets stop, so a restart is the better outcome.
        """
        now = time.monotonic()
        stall_s = self.options.stall_timeout_s
        if self._tasks and now - self._heartbeat > stall_s:
            return f"event loop stalled: no heartbeat for {now - self._heartbeat:.0f}s"
        since = self.reconciler.running_since
        if since is not None and now - since > stall_s:
            return (
                f"reconcile stuck: a pass has run for {now - since:.0f}s "
                "(a volume scan or the survey does not return)"
            )
        idle_s = now - self.reconciler.last_done
        if self._tasks and idle_s > self.config.rescan_interval_s + stall_s:
            return f"reconcile loop stalled: no pass finished for {idle_s:.0f}s"
        return None

    # -- named steps ------------------------------------------------------------------

    async def start(self, *, watch: bool = True) -> None:
        """Wire everything, run the first full reconcile, start the HTTP server."""
        loop = asyncio.get_running_loop()
        self.workers = StreamWorkers(
            loop,
            self._rotator_factory or _default_rotator_factory(),
            self.metrics,
            self.clock,
            rotation_workers=self.options.rotation_workers,
            compression_workers=self.options.compression_workers,
            on_rotated=self.reconciler.on_rotated,
            on_step=self.changes.notify,
            on_outcome=self._on_outcome,
        )
        self.streams.attach(loop, self.workers)
        self.reconciler.attach(self.workers)
        prepare_default_volume(self.config, self.options)
        # Before any stream is managed: a directory another logvold manages stops the
        # start (exit 1) instead of two managers losing and duplicating its events.
        self.locks.lock_volumes(self.config)
        self.registry.subscribe(self.streams.listener)
        self.source.set_config(self.config)
        self.config_watch.remember(self.config_watch.read())
        self.hints.start(loop, self.workers, watch=watch)
        await self.reconciler.reconcile(full=True)
        await self.discovery.start(self.config)
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

    async def reload(self) -> bool:
        """Re-read the config; apply it if valid, else keep the old one (logged, counted)."""
        digest = self.config_watch.read()
        try:
            new = await load_checked(self._load_config, self.options, self.config, self.locks)
        except (ConfigError, UsageError, DirectoryLocked) as exc:
            self.reloads_failed += 1
            self.metrics.reloads.labels("error").inc()
            self.config_watch.remember(digest)  # do not retry the same bad content every rescan
            log_rejected(exc, self.options)
            return False
        old = self.config
        self.config = new
        self.config_watch.remember(digest)
        if (new.log_format, new.log_level) != (old.log_format, old.log_level):
            configure_logging(new.log_format, new.log_level)
        prepare_default_volume(new, self.options)
        self.source.set_config(new)
        # Policies of existing streams change through registry "updated" events.
        await self.reconciler.reconcile(full=True)
        await self.discovery.apply(old, new)
        if self.options.serve_http and (
            new.server != old.server or new.node_log_query != old.node_log_query
        ):
            await self.http.restart(old, new)
        self.reloads_ok += 1
        self.metrics.reloads.labels("success").inc()
        log.info("config reloaded", extra={"config": new.source, "streams": len(self.registry)})
        return True

    async def stop(self) -> None:
        """Finish the steps in flight (each writes its state), then close everything."""
        self._ready = False
        self.notifier.stopping()
        await self.discovery.stop()
        self.hints.stop()
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

    def _on_outcome(self, info: StreamInfo, outcome: StepOutcome) -> None:
        if outcome.rotated:
            self.activity.rotated(str(info.key), outcome.rotation, outcome.reason)
        if outcome.retention is not None:
            self.activity.truncated(str(info.key), outcome.retention)

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
            await wait_event(self._wake, max(timeout, 0.01))

    def _dispatch_due(self) -> None:
        assert self.workers is not None
        for due in self.scheduler.due():
            if due.reason == "period":
                request = StepRequest(reason="period", check=True)
            else:
                request = StepRequest(check=True, hint_at=time.monotonic())
            self.workers.submit(due.key, request)

    async def _reconcile_loop(self) -> None:
        def config_changed() -> None:
            if self.config_watch.changed():
                self.request_reload()  # safety net for a missed file event

        await self.reconciler.run(self._stop, config_changed)

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
            await wait_event(self._stop, 1.0)

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 from the event loop itself: a wedged loop stops the pings and
        systemd restarts the daemon (WatchdogSec in the unit)."""
        interval = self.notifier.watchdog_interval_s()
        assert interval is not None
        while not self._stop.is_set():
            self.notifier.ping()
            await wait_event(self._stop, interval)
