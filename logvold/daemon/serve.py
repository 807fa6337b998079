"""`logvold serve`: the daemon that rotates, truncates and serves logging volumes.

Composition only: the config makes streams (static source -> registry; pod
discovery feeds the same registry when `kubernetes.enabled`), hints
and period boundaries make steps (watcher, scheduler), steps run on bounded
pools (workers), and the HTTP API serves the registry. The daemon is a set of
named, guarded tasks: if one dies, all stop and the exit code says so. Signals
only set events. A periodic full reconcile is the truth; file events are hints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import functools
import hashlib
import logging
import math
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logvold.config.serve_settings import (
    ServeOptions,
    check_host,
    check_runtime,
    load_effective_config,
    parse_listen,
    ssl_context,
)
from logvold.core.clock import utcnow
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.daemon.activity import ActivityLog
from logvold.daemon.scheduler import TriggerScheduler
from logvold.daemon.sdnotify import Notifier
from logvold.daemon.survey import Survey, survey_streams
from logvold.daemon.workers import RotatorFactory, StepOutcome, StepRequest, StreamWorkers
from logvold.errors import ConfigError, LogvoldError, UsageError
from logvold.fileio.dirlock import DirectoryLocked, DirectoryLocks
from logvold.fileio.safedir import UnsafeFile
from logvold.sources.changes import StreamChanges
from logvold.sources.static import StaticSource
from logvold.sources.watcher import DirectoryWatcher, Hint
from logvold.telemetry.logsetup import FORMATS, LEVELS, configure_logging
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from aiohttp import web

    from logvold.core.policy import Config

log = logging.getLogger(__name__)

RESCAN_DEBOUNCE_S = 0.2
"""Entries appearing together (a pod starting several containers) cost one rescan."""
DISCOVERY_SYNC_TIMEOUT_S = 10.0
"""How long start-up waits for the first pod list before serving what it has."""
CONFIG_DEBOUNCE_S = 0.3
"""A config file written in several steps is read once, after the last one."""


def _default_rotator_factory() -> RotatorFactory:
    from logvold.fileio.rotator import StreamRotator

    def make(info: StreamInfo, metrics: Metrics | None, clock: Callable[[], datetime]) -> Any:
        from logvold.runner.reopen import run_reopen_action

        rotator = StreamRotator(info, metrics, clock)
        rotator.reopener = run_reopen_action  # signals and commands stay out of fileio
        return rotator

    return make


class Daemon:
    """The serve daemon as named steps a test can call: start(), run(), stop()."""

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
        self._runner: web.AppRunner | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()
        self._rescan = asyncio.Event()
        self._rescan_volumes: set[str] = set()
        self._full_rescan = False
        self._budget_pass = False
        self._unstarted: set[StreamKey] = set()
        self._path_index: dict[str, StreamKey] = {}
        self._dir_volumes: dict[str, set[str]] = {}
        self._config_digest: bytes | None = None
        self._config_watch_paths: frozenset[str] = frozenset()
        self._config_check_pending = False
        self._watch_problems: set[str] = set()
        self._terminated: dict[StreamKey, float] = {}
        """Streams of pods that went away -> monotonic time to drop them (maxAge)."""
        self._ready = False
        self._started = False
        self._failed_task: str | None = None
        self.locks = DirectoryLocks()
        """`.logvold/lock` of every managed directory: one manager per directory."""
        self._lock_problems: set[str] = set()
        self._heartbeat = time.monotonic()
        """Monotonic time of the event loop's last heartbeat (liveness)."""
        self._reconcile_since: float | None = None
        self._reconcile_done = time.monotonic()
        self.activity = ActivityLog(log)
        """Rate-limited info lines per stream: rotated, truncated."""
        self.reconciles = 0
        self.reloads_ok = 0
        self.reloads_failed = 0

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
        self._prepare_default_volume(self.config)
        # Before any stream is managed: a directory another logvold manages stops the
        # start (exit 1) instead of two managers losing and duplicating its events.
        self._lock_volumes(self.config)
        self.registry.subscribe(self._registry_listener)
        self.source.set_config(self.config)
        self._config_digest = self._read_config_digest()
        if watch:
            self.watcher = DirectoryWatcher(
                loop, self._on_hint, self._relevance(), on_error=self._watch_error
            )
            self.watcher.start()
        await self._reconcile(full=True)
        if self.config.kubernetes.enabled:
            await self._start_discovery(self.config)
        if self.options.serve_http:
            await self._start_server(self.config)
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
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
                if self._config_digest is not None and self._read_config_digest() not in (
                    None,
                    self._config_digest,
                ):
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

    # -- reconcile --------------------------------------------------------------------

    async def _reconcile(self, *, full: bool) -> None:
        """Scan volumes into the registry, survey the streams, submit what is due."""
        self._reconcile_since = time.monotonic()
        try:
            await self._reconcile_pass(full=full)
        finally:
            self._reconcile_since = None
            self._reconcile_done = time.monotonic()

    async def _reconcile_pass(self, *, full: bool) -> None:
        assert self.workers is not None
        volumes = None if full else set(self._rescan_volumes)
        self._rescan_volumes.clear()
        self._full_rescan = False
        await asyncio.to_thread(self.source.scan, volumes)
        self.workers.set_crowded(self.source.crowded_directories())
        if full:
            self._expire_terminated()
            self._relock_streams()
        self._refresh_watches()
        with_budgets = self._budget_pass or full
        self._budget_pass = False
        infos = self.workers.infos()
        config = self.config
        survey = await asyncio.to_thread(
            survey_streams,
            infos,
            now=self.clock(),
            shares={i.key: self.workers.budget_share(i.key) for i in infos},
            volume_budgets={v.name: v.max_total_size_bytes for v in config.volumes},
            node_budget_bytes=config.node_max_total_size_bytes,
            with_budgets=with_budgets,
        )
        if survey.shares is not None:
            self._apply_budget_shares(infos, survey)
        unstarted, self._unstarted = self._unstarted, set()
        for key, check in survey.checks.items():
            # The survey's own stat found a missed size trigger or retention work; a
            # stream with neither costs no step (1,000 idle streams stay cheap).
            first = key in unstarted
            if check.retention or check.size_due or first:
                self.workers.submit(
                    key,
                    StepRequest(check=check.size_due or first, retention=check.retention or first),
                )
        self.activity.flush()
        self.reconciles += 1
        self.metrics.streams.set(len(self.workers))

    def _apply_budget_shares(self, infos: list[StreamInfo], survey: Survey) -> None:
        assert self.workers is not None and survey.shares is not None
        for info in infos:
            share = survey.shares.get(info.key)
            old = self.workers.budget_share(info.key)
            self.workers.set_budget_share(info.key, share)
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

    def _on_outcome(self, info: StreamInfo, outcome: StepOutcome) -> None:
        if outcome.rotated:
            self.activity.rotated(str(info.key), outcome.rotation, outcome.reason)
        if outcome.retention is not None:
            self.activity.truncated(str(info.key), outcome.retention)

    def _on_rotated(self, info: StreamInfo, outcome: StepOutcome) -> None:
        volume_budget = next(
            (v.max_total_size_bytes for v in self.config.volumes if v.name == info.volume), 0
        )
        if volume_budget > 0 or self.config.node_max_total_size_bytes > 0:
            self._budget_pass = True  # shares move as streams grow: recompute soon
            self._rescan.set()

    # -- registry and hints (loop thread) ---------------------------------------------

    def _registry_listener(self, action: str, info: StreamInfo) -> None:
        # Called on whichever thread changed the registry (a scan thread, discovery).
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed: shutting down
            loop.call_soon_threadsafe(self._apply_registry_change, action, info)

    def _apply_registry_change(self, action: str, info: StreamInfo) -> None:
        assert self.workers is not None
        old = self.workers.info(info.key)
        if old is not None:
            self._path_index.pop(str(old.active_path), None)
        if action == "removed" and old is not None and self._finalise(info):
            return
        if action == "removed":
            self._terminated.pop(info.key, None)
            self.locks.drop(_stream_owner(info.key))
            if old is not None:
                self.workers.remove(info.key)
                self.scheduler.remove(info.key)
                self.changes.forget(info.key)  # its followers look, see it gone, end
            self.metrics.remove_stream(info.key.namespace, info.key.pod, info.key.container)
            self.activity.forget(str(info.key))
            log.info("stream removed", extra={"stream": str(info.key), "source": info.source})
        else:
            if not self._lock_stream(info):
                if old is not None:
                    self.workers.remove(info.key)
                    self.scheduler.remove(info.key)
                return
            self._path_index[str(info.active_path)] = info.key
            self.metrics.add_stream(info.key.namespace, info.key.pod, info.key.container)
            self.workers.set_crowded(self.source.crowded_directories())  # before its 1st step
            self.workers.put(info, self._volume_root(info))
            if info.source != "static" and old is None:
                self._rescan.set()  # watch its directory soon, not at the next full pass
            self.scheduler.set_stream(info.key, info.policy)
            if action == "added":
                p = info.policy
                log.info(
                    "stream added",
                    extra={
                        "stream": str(info.key),
                        "path": str(info.active_path),
                        "source": info.source,
                        "format": p.format,
                        "strategy": p.strategy,
                    },
                )
            else:
                log.info("stream policy updated", extra={"stream": str(info.key)})
            if self._under_budget(info):
                # Its first retention needs its budget share: the reconcile computes it.
                self._unstarted.add(info.key)
                self._budget_pass = True
                self._rescan.set()
            else:
                self.workers.submit(info.key, StepRequest(check=True))
                if action == "updated":  # limits may have shrunk
                    self._rescan.set()
        self.metrics.streams.set(len(self.workers))

    # -- directory locks ----------------------------------------------------------------

    def _lock_volumes(self, config: Config) -> None:
        """Hold the lock of every existing stream directory of the static volumes and
        drop those of volumes no longer configured. DirectoryLocked when another
        logvold manages one (start fails, a reload is rejected); missing or refused
        directories are left to the scan, which reports them."""
        wanted = _volume_lock_targets(config)
        taken: list[str] = []
        for owner, (root, directory) in wanted.items():
            if self.locks.holds(owner):
                continue
            try:
                self.locks.hold(owner, root, directory)
                taken.append(owner)
            except (UnsafeFile, FileNotFoundError):
                continue  # the scan reports it; its streams are refused or come later
            except OSError as exc:
                self._lock_problem(owner, f"cannot lock {directory}: {exc.strerror}")
            except DirectoryLocked:
                for mine in taken:  # a rejected config leaves no lock behind
                    self.locks.drop(mine)
                raise
        for owner in self.locks.owners():
            if owner.startswith("volume:") and owner not in wanted:
                self.locks.drop(owner)

    def _lock_stream(self, info: StreamInfo) -> bool:
        """Hold the lock of the stream's directory before it is managed; False (not
        managed: never rotated) when another logvold holds it or the directory is not a
        real directory inside its volume (a symlinked subDir)."""
        owner = _stream_owner(info.key)
        try:
            self.locks.hold(owner, self._volume_root(info) or info.directory, info.directory)
        except DirectoryLocked as exc:
            self._lock_problem(owner, str(exc), error=True)
            return False
        except UnsafeFile as exc:
            if self._lock_problem(owner, f"{exc}; stream {info.key} not managed"):
                self.metrics.unsafe_refused.labels(exc.kind).inc()
            return False
        except FileNotFoundError:
            pass  # no directory yet: nothing to rotate; locked at a later reconcile
        except OSError as exc:
            self._lock_problem(owner, f"cannot lock {info.directory}: {exc.strerror}")
        else:
            self._lock_problems.discard(owner)
        return True

    def _lock_problem(self, owner: str, message: str, *, error: bool = False) -> bool:
        """Log a lock problem once per owner (until it is solved); True when new."""
        if owner in self._lock_problems:
            return False
        self._lock_problems.add(owner)
        (log.error if error else log.warning)(message, extra={"owner": owner})
        return True

    def _relock_streams(self) -> None:
        """Streams managed before their directory existed get its lock now."""
        assert self.workers is not None
        for key in list(self.workers):
            info = self.workers.info(key)
            if (
                info is not None
                and not self.locks.holds(_stream_owner(key))
                and not self._lock_stream(info)
            ):
                self.workers.remove(key)
                self.scheduler.remove(key)

    def _finalise(self, info: StreamInfo) -> bool:
        """A discovered stream whose pod went away: cut its last whole events into a
        segment and keep serving it, marked terminated, until maxAge passes or its
        directory goes (the kubelet deletes emptyDirs). False: remove it now."""
        if (
            info.source == "static"
            or info.source.endswith(TERMINATED_SUFFIX)
            or self._stop.is_set()
            or not info.directory.is_dir()
        ):
            return False
        assert self.workers is not None
        max_age_s = info.policy.max_age_s
        self._terminated[info.key] = time.monotonic() + max_age_s if max_age_s > 0 else math.inf
        self._path_index[str(info.active_path)] = info.key
        self.workers.submit(info.key, StepRequest(reason="final", retention=True))
        self.registry.put(
            dataclasses.replace(
                info,
                source=info.source + TERMINATED_SUFFIX,
                annotations={**info.annotations, "logvold.io/terminated": self.clock().isoformat()},
            )
        )
        log.info(
            "stream finalised; served until maxAge or until its files go",
            extra={"stream": str(info.key), "maxAge": max_age_s or "unlimited"},
        )
        return True

    def _expire_terminated(self) -> None:
        """Drop finalised streams past their maxAge or whose directory is gone."""
        now = time.monotonic()
        for key, deadline in list(self._terminated.items()):
            info = self.registry.get(key)
            if info is None or not info.source.endswith(TERMINATED_SUFFIX):
                del self._terminated[key]  # the pod came back: discovery owns it again
            elif now >= deadline or not info.directory.is_dir():
                del self._terminated[key]
                self.registry.remove(key)

    def _under_budget(self, info: StreamInfo) -> bool:
        return self.config.node_max_total_size_bytes > 0 or any(
            v.name == info.volume and v.max_total_size_bytes > 0 for v in self.config.volumes
        )

    def _volume_root(self, info: StreamInfo) -> Path | None:
        """The stream's safety root: its own volume directory (for a discovered stream the
        pod's emptyDir, never the whole kubelet directory, so a subDir symlinked to another
        pod's volume is refused)."""
        if info.root is not None:
            return info.root
        if info.source != "static":
            return None
        for volume in self.config.volumes:
            if volume.name == info.volume:
                return Path(volume.path)
        return None

    def _relevance(self) -> Callable[[Hint], bool]:
        # Runs on the loop thread for every hint of a batch: membership tests only.
        active = self._path_index

        def relevant(hint: Hint) -> bool:
            if hint.kind == "modified":
                return hint.path in active or hint.path in self._config_watch_paths
            name = hint.path.rpartition("/")[2]
            return (
                hint.path in active
                or name.endswith(".log")
                or hint.path in self._config_watch_paths
                or name == "..data"
            )

        return relevant

    def _on_hint(self, hint: Hint) -> None:
        key = self._path_index.get(hint.path)
        if hint.path in self._config_watch_paths or (
            hint.kind == "changed" and hint.path.rpartition("/")[2] == "..data"
        ):
            if not self._config_check_pending and self._loop is not None:
                # An editor writing in place shows a half-written file for a moment.
                self._config_check_pending = True
                self._loop.call_later(CONFIG_DEBOUNCE_S, self._check_config_changed)
            return
        if key is not None:
            self.changes.notify(key)  # wakes the stream's followers
        if hint.kind == "modified":
            # A write: a step only if it may have crossed maxSize (one lstat against the
            # trigger noted after the last step), so writes far below the limit cost
            # nothing more. Period boundaries come from the scheduler's clock.
            assert self.workers is not None
            if key is not None and self.workers.size_due(key) and self.scheduler.mark_dirty(key):
                self._wake.set()
            return
        if key is not None and self.scheduler.mark_dirty(key):
            self._wake.set()
        directory = hint.path.rpartition("/")[0]
        volumes = self._dir_volumes.get(directory)
        if volumes and (over := self.source.over_cap()):
            # A volume over its stream cap gains no stream from a new name; a pod churning
            # names there must not buy a rescan and survey per event (the full one sees it).
            volumes = {v for v in volumes if v not in over}
        if volumes:
            self._rescan_volumes.update(volumes)
            self._rescan.set()

    def _check_config_changed(self) -> None:
        self._config_check_pending = False
        if self._read_config_digest() != self._config_digest:
            self.request_reload()

    def _watch_error(self, path: str, exc: BaseException) -> None:
        self.metrics.watch_errors.labels("inotify").inc()
        log.warning("file watch error", extra={"path": path, "error": repr(exc)})
        if isinstance(exc, OverflowError):  # events were lost: look at everything now
            self._full_rescan = True
            self._rescan.set()
            self.changes.notify_all()

    def _refresh_watches(self) -> None:
        dirs = self.source.directories()
        dir_volumes: dict[str, set[str]] = {}
        for volume in self.config.volumes:
            for d in dirs:
                if d == Path(volume.path) or Path(volume.path) in d.parents:
                    dir_volumes.setdefault(str(d), set()).add(volume.name)
        self._dir_volumes = dir_volumes
        if self.watcher is None:
            return
        assert self.workers is not None
        others = {
            i.directory
            for i in (self.workers.info(k) for k in self.workers)
            if i is not None and i.source != "static"
        }
        wanted = [d for d in sorted(set(dirs) | others) if d.is_dir()]
        config_dir = self._config_dir()
        if config_dir is not None:
            wanted.append(config_dir)
        failed = self.watcher.set_directories(wanted)
        problems = {f"{path}: {exc.strerror or exc}" for path, exc in failed.items()}
        for problem in sorted(problems - self._watch_problems):
            self.metrics.watch_errors.labels("inotify").inc()
            log.warning(
                "cannot watch directory; relying on the periodic rescan", extra={"problem": problem}
            )
        self._watch_problems = problems

    # -- config -----------------------------------------------------------------------

    def _config_dir(self) -> Path | None:
        if self.options.config_path is None:
            return None
        return Path(self.options.config_path).absolute().parent

    def _read_config_digest(self) -> bytes | None:
        if self.options.config_path is None:
            return None
        path = Path(self.options.config_path).absolute()
        self._config_watch_paths = frozenset({str(path)})
        try:
            return hashlib.sha256(path.read_bytes()).digest()
        except OSError:
            return b""

    async def reload(self) -> bool:
        """Re-read the config; apply it if valid, else keep the old one (logged, counted)."""
        digest = self._read_config_digest()
        try:
            new = await asyncio.to_thread(self._load_config, self.options)
            check_runtime(new)
            self._lock_volumes(new)
            await asyncio.to_thread(
                functools.partial(check_host, new, self.options, previous=self.config)
            )
        except (ConfigError, UsageError, DirectoryLocked) as exc:
            self.reloads_failed += 1
            self.metrics.reloads.labels("error").inc()
            self._config_digest = digest  # do not retry the same bad content every rescan
            problems = (
                [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [str(exc)]
            )
            log.error(
                "config reload rejected; the previous config stays in effect",
                extra={"config": self.options.config_path or "-", "problems": "; ".join(problems)},
            )
            return False
        old = self.config
        self.config = new
        self._config_digest = digest
        if (new.log_format, new.log_level) != (old.log_format, old.log_level):
            configure_logging(new.log_format, new.log_level)
        self._prepare_default_volume(new)
        self.source.set_config(new)
        # Policies of existing streams change through registry "updated" events.
        self._full_rescan = True
        await self._reconcile(full=True)
        if new.kubernetes != old.kubernetes:
            if self.discovery is not None:
                await asyncio.to_thread(self.discovery.stop)
                self.discovery = None
            if new.kubernetes.enabled:
                await self._start_discovery(new)
        elif self.discovery is not None and (new.defaults, new.max_streams_per_volume) != (
            old.defaults,
            old.max_streams_per_volume,
        ):
            self.discovery.update_defaults(new.defaults, new.max_streams_per_volume)
        if self.options.serve_http and (
            new.server != old.server or new.node_log_query != old.node_log_query
        ):
            await self._restart_server(old, new)
        self.reloads_ok += 1
        self.metrics.reloads.labels("success").inc()
        log.info("config reloaded", extra={"config": new.source, "streams": len(self.registry)})
        return True

    def _prepare_default_volume(self, config: Config) -> None:
        """The built-in `local` volume (no config file) is created if missing."""
        if self.options.config_path is not None and self.options.logs_dir is None:
            return
        for volume in config.volumes:
            if volume.name == "local":
                try:
                    Path(volume.path).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    log.warning(
                        "cannot create the logs directory",
                        extra={"path": volume.path, "error": exc.strerror},
                    )

    # -- discovery --------------------------------------------------------------------

    async def _start_discovery(self, config: Config) -> None:
        """Pods of this node feed the same registry as the static volumes."""
        from logvold.sources.kubernetes import PodDiscovery

        discovery = PodDiscovery(
            config.kubernetes,
            self.registry,
            self.metrics,
            config.defaults,
            max_streams_per_volume=config.max_streams_per_volume,
        )
        await asyncio.to_thread(discovery.start)  # loads credentials: LogvoldError if none
        self.discovery = discovery
        if not await asyncio.to_thread(discovery.wait_synced, DISCOVERY_SYNC_TIMEOUT_S):
            log.warning(
                "pods not listed yet; streams appear as the list arrives",
                extra={"node": discovery.node_name},
            )

    # -- HTTP -------------------------------------------------------------------------

    async def _start_server(self, config: Config) -> None:
        from logvold.server.app import build_app, start_server

        app = build_app(
            config=config,
            registry=self.registry,
            metrics=self.metrics,
            is_ready=self.is_ready,
            changes=self.changes,
            is_live=self.liveness,
        )
        if config.server.auth == "kubernetes":
            app.middlewares.append(_kubernetes_auth(config))
        try:
            self._runner = await start_server(
                app, config.server.listen, ssl_context=ssl_context(config)
            )
        except OSError as exc:
            raise LogvoldError(listen_error(config.server.listen, exc), op="listen") from exc
        _log_server_safety(config)

    async def _restart_server(self, old: Config, new: Config) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:
            await self._start_server(new)
        except (OSError, LogvoldError) as exc:
            log.error(
                "cannot start the HTTP server with the new config; restoring the old listener",
                extra={"listen": new.server.listen, "error": str(exc)},
            )
            await self._start_server(old)


def _log_server_safety(config: Config) -> None:
    """Say at start who may read what, and the limits in effect (clamped to the fds)."""
    from logvold.server.access import has_root_file_access
    from logvold.server.limits import effective_limits

    server = config.server
    limits = effective_limits(server.limits)
    if server.auth == "local" and has_root_file_access():
        log.warning(
            "no server.auth configured and logvold reads with root's file access: each "
            "client is served only the files its own user could open (local TCP clients "
            "by their uid, others only world-readable files); use the unix socket or "
            "server.auth for more (docs/SECURITY.md)",
            extra={"listen": server.listen, "socket": server.socket_path or "-"},
        )
    elif server.auth == "none" and not _is_loopback(server.listen):
        log.warning(
            "server.auth none on a non-loopback address: anyone who can connect reads every log",
            extra={"listen": server.listen},
        )
    log.info(
        "server limits",
        extra={
            "auth": server.auth,
            "socket": server.socket_path or "-",
            "header_timeout_s": limits.header_timeout_s,
            "max_connections": limits.max_connections,
            "max_followers": limits.max_followers,
            "max_followers_per_stream": limits.max_followers_per_stream,
            "max_heavy_reads": limits.max_heavy_reads,
        },
    )


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one, as Go's runtime does: every client
    connection, follower and rotation holds descriptors, and 1024 is a poor default for a
    node daemon. Returns (old soft, new soft)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, hard


def _stream_owner(key: StreamKey) -> str:
    return f"stream:{key}"


def _volume_lock_targets(config: Config) -> dict[str, tuple[Path, Path]]:
    """owner -> (safety root, directory) of every stream directory of the static volumes."""
    targets: dict[str, tuple[Path, Path]] = {}
    for volume in config.volumes:
        root = Path(volume.path)
        policies = [c.policy for c in volume.containers] or [config.defaults]
        for policy in policies:
            directory = root / policy.sub_dir if policy.sub_dir else root
            targets[f"volume:{volume.name}:{directory}"] = (root, directory)
    return targets


def listen_error(listen: str, exc: OSError) -> str:
    """What went wrong binding the API's address, and what to do about it."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        _, _, port = listen.rpartition(":")
        return (
            f"cannot listen on {listen}: address already in use; another process (maybe "
            f"another logvold) holds it: find it with `ss -ltnp 'sport = :{port}'`, or "
            "set server.listen (--listen) to a free port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {listen}: {reason}; the host has no such address: use "
            "127.0.0.1, 0.0.0.0 or one of its own addresses in server.listen (--listen)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {listen}: {reason}; ports below 1024 need "
            "CAP_NET_BIND_SERVICE: use a port >= 1024 in server.listen (--listen)"
        )
    return f"cannot listen on {listen}: {reason}; check server.listen (--listen)"


TERMINATED_SUFFIX = "-terminated"
"""Appended to a stream's source once its pod is gone (see Daemon._finalise)."""


def _kubernetes_auth(config: Config) -> Any:
    """TokenReview + SubjectAccessReview middleware; the API client is built at the
    first request that needs a review, so starting needs no credentials yet."""
    from logvold.server.auth import make_auth_middleware
    from logvold.sources.kube_api import KubernetesApi, make_api_client, resolve_node_name

    return make_auth_middleware(
        config.server,
        lambda: KubernetesApi(make_api_client(config.kubernetes)),
        node_name=resolve_node_name(config.kubernetes.node_name),
    )


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until `event` is set or `timeout_s` passed. asyncio.timeout, not wait_for:
    Python 3.11's wait_for can swallow a cancellation that arrives as the event fires,
    which would leave a stopping daemon waiting a whole rescan interval."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


# -- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="logvold serve",
        description="Rotate, truncate and serve the logging volumes of this node. Without "
        "--config, one volume `local` at ./logs (created if missing) is managed "
        "with the default policy and the API listens on 127.0.0.1:8642.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file (see config.example.yaml)")
    p.add_argument("--listen", metavar="HOST:PORT", help="override server.listen")
    p.add_argument(
        "--logs-dir", metavar="DIR", help="path of the default volume `local` (default ./logs)"
    )
    p.add_argument("--log-format", choices=FORMATS, help="format of logvold's own log lines")
    p.add_argument(
        "--log-level",
        choices=sorted(set(LEVELS) - {"warn"}),
        help="level of logvold's own log lines",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the effective config and exit"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="one reconcile pass (rotate, enforce retention, compress), then exit",
    )
    p.add_argument(
        "--rotation-workers",
        type=int,
        default=4,
        metavar="N",
        help="threads for rotation and retention steps (default 4)",
    )
    p.add_argument(
        "--compression-workers",
        type=int,
        default=2,
        metavar="N",
        help="threads for compressing closed segments (default 2)",
    )
    return p


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit code 2 comes from main_serve, not argparse
        raise _ArgumentError(message)


def main_serve(argv: Sequence[str]) -> int:
    """`logvold serve`: exit 0 ok, 1 runtime failure, 2 config or usage error."""
    parser = _parser()
    parser.__class__ = _Parser
    try:
        args = parser.parse_args(list(argv))
        if args.rotation_workers < 1 or args.compression_workers < 1:
            raise UsageError("--rotation-workers and --compression-workers must be >= 1")
        if args.listen is not None:
            parse_listen(args.listen)
    except _ArgumentError as exc:
        sys.stderr.write(f"{parser.format_usage()}logvold serve: error: {exc}\n")
        return 2
    except UsageError as exc:
        sys.stderr.write(f"logvold serve: error: {exc}\n")
        return 2
    options = ServeOptions(
        config_path=args.config,
        listen=args.listen,
        logs_dir=args.logs_dir,
        log_format=args.log_format,
        log_level=args.log_level,
        serve_http=not args.once,
        rotation_workers=args.rotation_workers,
        compression_workers=args.compression_workers,
    )
    try:
        config = load_effective_config(options)
        parse_listen(config.server.listen)
        check_runtime(config)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        sys.stderr.write(f"logvold serve: {len(exc.problems)} config problem(s); nothing started\n")
        return 2
    except (UsageError, LogvoldError) as exc:
        sys.stderr.write(f"logvold serve: error: {exc}\n")
        return 2
    if args.print_config:
        from logvold.config.yaml_file import dump_config

        sys.stdout.write(dump_config(config))
        return 0
    try:
        check_host(config, options)  # after --print-config: that may be for another host
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        sys.stderr.write(
            f"logvold serve: {len(exc.problems)} problem(s) on this host; nothing "
            "started (`logvold check-config FILE` shows the same)\n"
        )
        return 2
    configure_logging(config.log_format, config.log_level)
    old_soft, soft = raise_nofile_limit()
    log.info(
        "file descriptor limit",
        extra={
            "soft": soft,
            "was": old_soft,
            "hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        },
    )
    daemon = Daemon(config, options)
    try:
        return asyncio.run(_serve(daemon, once=args.once))
    except ConfigError as exc:  # e.g. a TLS key that cannot be loaded
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        return 2
    except DirectoryLocked as exc:
        sys.stderr.write(f"logvold serve: error: {exc}\n")
        return 1
    except (OSError, LogvoldError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1


async def _serve(daemon: Daemon, *, once: bool) -> int:
    if once:
        return await daemon.run_once()
    loop = asyncio.get_running_loop()
    for signum, action in (
        (signal.SIGTERM, daemon.request_stop),
        (signal.SIGINT, daemon.request_stop),
        (signal.SIGHUP, daemon.request_reload),
    ):
        loop.add_signal_handler(signum, action)
    try:
        try:
            await daemon.start()
        except BaseException:
            await daemon.stop()
            raise
        code = await daemon.run()
        await daemon.stop()
        return code
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
