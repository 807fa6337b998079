"""What the serve daemon holds: its parts, queues, flags and counters, built in one place.

`Daemon` (daemon/lifecycle.py) is one object that the CLI, the HTTP app and tests drive;
its steps are grouped by job, one module each, every group built on the ones below it:
state (this) <- directory locks <- stream changes / file hints <- reconcile <- HTTP
server <- config reload <- lifecycle. The few queries every group asks (is the daemon
ready, is it making progress, which root guards a stream, which config file is watched)
live here too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from logvold.config.serve_settings import ServeOptions, load_effective_config
from logvold.core.clock import utcnow
from logvold.core.streams import StreamKey, StreamRegistry
from logvold.daemon import LOGGER_NAME
from logvold.daemon.activity import ActivityLog
from logvold.daemon.scheduler import TriggerScheduler
from logvold.daemon.sdnotify import Notifier
from logvold.daemon.steps import RotatorFactory
from logvold.daemon.workers import StreamWorkers
from logvold.sources.changes import StreamChanges
from logvold.sources.static import StaticSource
from logvold.sources.watcher import DirectoryWatcher
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from logvold.core.policy import Config
    from logvold.daemon.config_watch import ConfigFileWatch
    from logvold.daemon.locks import StreamDirectoryLocks
    from logvold.daemon.streams import ManagedStreams

log = logging.getLogger(LOGGER_NAME)


class DaemonState:
    """The serve daemon's parts and bookkeeping; the step groups subclass it."""

    locks: StreamDirectoryLocks
    """`.logvold/lock` of every managed directory: one manager per directory."""
    config_watch: ConfigFileWatch
    streams: ManagedStreams
    """The registry's streams as managed ones (locked, stepped, indexed for hints)."""

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
        self.registry = StreamRegistry()
        self.source = StaticSource(self.registry, self.metrics)
        self._rotator_factory = rotator_factory
        self._load_config = load_config
        self.notifier = Notifier()
        """systemd's notify socket (Type=notify unit): a no-op without $NOTIFY_SOCKET."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.workers: StreamWorkers | None = None
        self.scheduler: TriggerScheduler[StreamKey] = TriggerScheduler(
            clock,
            time.monotonic,
            hint_delay_s=self.options.hint_delay_s,
            min_check_interval_s=self.options.min_check_interval_s,
        )
        self.watcher: DirectoryWatcher | None = None
        self.changes = StreamChanges()
        """Per-stream change notices for followers: every hint about a stream and every
        finished step bump its version (the HTTP API's followers sleep on them)."""
        self.discovery: Any = None
        """PodDiscovery when `kubernetes.enabled` (imported only then: it pulls in the client)."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()
        self._rescan = asyncio.Event()
        self._rescan_volumes: set[str] = set()
        self._full_rescan = False
        self._budget_pass = False
        self._dir_volumes: dict[str, set[str]] = {}
        self._watch_problems: set[str] = set()
        self._ready = False
        self._started = False
        self._failed_task: str | None = None
        self._heartbeat = time.monotonic()
        """Monotonic time of the event loop's last heartbeat (liveness)."""
        self._reconcile_since: float | None = None
        self._reconcile_done = time.monotonic()
        self.activity = ActivityLog(log)
        """Rate-limited info lines per stream: rotated, truncated."""
        self.reconciles = 0
        self.reloads_ok = 0
        self.reloads_failed = 0

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
        if self._reconcile_since is not None and now - self._reconcile_since > stall_s:
            return (
                f"reconcile stuck: a pass has run for {now - self._reconcile_since:.0f}s "
                "(a volume scan or the survey does not return)"
            )
        idle_s = now - self._reconcile_done
        if self._tasks and idle_s > self.config.rescan_interval_s + stall_s:
            return f"reconcile loop stalled: no pass finished for {idle_s:.0f}s"
        return None
