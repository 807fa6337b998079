"""Streams come and go: registry changes become managed streams, and a pod's streams outlive it.

The registry (static scan, pod discovery) tells the daemon on whichever thread changed
it; the change is applied on the loop: lock the stream's directory, hand it to the
workers and the scheduler, index its active file for hints, and ask for its first step.
A discovered stream whose pod went away is finalised (its last whole events cut into a
segment) and served, marked terminated, until maxAge passes or its directory goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.daemon.activity import ActivityLog
from logvold.daemon.locks import StreamDirectoryLocks, volume_root
from logvold.daemon.logger import LOGGER_NAME
from logvold.daemon.scheduler import TriggerScheduler
from logvold.daemon.steps import StepRequest
from logvold.daemon.workers import StreamWorkers
from logvold.sources.changes import StreamChanges
from logvold.sources.static import StaticSource
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from logvold.core.policy import Config

log = logging.getLogger(LOGGER_NAME)

TERMINATED_SUFFIX = "-terminated"
"""Appended to a stream's source once its pod is gone (see ManagedStreams._finalise)."""


class ManagedStreams:
    """The registry's streams as the daemon manages them: locked, stepped, indexed.

    It owns which active file belongs to which stream (for hints), the finalised
    streams of gone pods and the streams waiting for their first budget share; it asks
    the reconcile for a pass through `request_rescan(budgets)`. `attach` hands it the
    loop and the workers at start; before that registry changes are ignored."""

    def __init__(
        self,
        registry: StreamRegistry,
        source: StaticSource,
        locks: StreamDirectoryLocks,
        scheduler: TriggerScheduler[StreamKey],
        changes: StreamChanges,
        metrics: Metrics,
        activity: ActivityLog,
        *,
        clock: Callable[[], datetime],
        config: Callable[[], Config],
        stopping: Callable[[], bool],
        request_rescan: Callable[[bool], None],
    ) -> None:
        self._registry = registry
        self._source = source
        self._locks = locks
        self._scheduler = scheduler
        self._changes = changes
        self._metrics = metrics
        self._activity = activity
        self._clock = clock
        self._config = config
        self._stopping = stopping
        self._request_rescan = request_rescan
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: StreamWorkers | None = None
        self._path_index: dict[str, StreamKey] = {}
        self._terminated: dict[StreamKey, float] = {}
        """Streams of pods that went away -> monotonic time to drop them (maxAge)."""
        self._unstarted: set[StreamKey] = set()

    def attach(self, loop: asyncio.AbstractEventLoop, workers: StreamWorkers) -> None:
        self._loop = loop
        self._workers = workers

    @property
    def active_paths(self) -> Mapping[str, StreamKey]:
        """Active file path -> its stream (read on the loop thread for every hint)."""
        return self._path_index

    def take_unstarted(self) -> set[StreamKey]:
        """The streams added since the last pass that wait for their budget share."""
        unstarted, self._unstarted = self._unstarted, set()
        return unstarted

    def listener(self, action: str, info: StreamInfo) -> None:
        """The registry's subscriber: called on whichever thread changed the registry (a
        scan thread, discovery); the change is applied on the loop."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed: shutting down
            loop.call_soon_threadsafe(self.apply, action, info)

    def apply(self, action: str, info: StreamInfo) -> None:
        workers = self._workers
        assert workers is not None
        old = workers.info(info.key)
        if old is not None:
            self._path_index.pop(str(old.active_path), None)
        if action == "removed" and old is not None and self._finalise(info):
            return
        if action == "removed":
            self._terminated.pop(info.key, None)
            self._locks.drop_stream(info.key)
            if old is not None:
                workers.remove(info.key)
                self._scheduler.remove(info.key)
                self._changes.forget(info.key)  # its followers look, see it gone, end
            self._metrics.remove_stream(info.key.namespace, info.key.pod, info.key.container)
            self._activity.forget(str(info.key))
            log.info("stream removed", extra={"stream": str(info.key), "source": info.source})
        else:
            config = self._config()
            root = volume_root(config, info)
            if not self._locks.lock_stream(info, root):
                if old is not None:
                    workers.remove(info.key)
                    self._scheduler.remove(info.key)
                return
            self._path_index[str(info.active_path)] = info.key
            self._metrics.add_stream(info.key.namespace, info.key.pod, info.key.container)
            workers.set_crowded(self._source.crowded_directories())  # before its 1st step
            workers.put(info, root)
            if info.source != "static" and old is None:
                self._request_rescan(False)  # watch its directory soon, not at the next full pass
            self._scheduler.set_stream(info.key, info.policy)
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
            if under_budget(config, info):
                # Its first retention needs its budget share: the reconcile computes it.
                self._unstarted.add(info.key)
                self._request_rescan(True)
            else:
                workers.submit(info.key, StepRequest(check=True))
                if action == "updated":  # limits may have shrunk
                    self._request_rescan(False)
        self._metrics.streams.set(len(workers))

    def _finalise(self, info: StreamInfo) -> bool:
        """A discovered stream whose pod went away: cut its last whole events into a
        segment and keep serving it, marked terminated, until maxAge passes or its
        directory goes (the kubelet deletes emptyDirs). False: remove it now."""
        if (
            info.source == "static"
            or info.source.endswith(TERMINATED_SUFFIX)
            or self._stopping()
            or not info.directory.is_dir()
        ):
            return False
        assert self._workers is not None
        max_age_s = info.policy.max_age_s
        self._terminated[info.key] = time.monotonic() + max_age_s if max_age_s > 0 else math.inf
        self._path_index[str(info.active_path)] = info.key
        self._workers.submit(info.key, StepRequest(reason="final", retention=True))
        self._registry.put(
            dataclasses.replace(
                info,
                source=info.source + TERMINATED_SUFFIX,
                annotations={
                    **info.annotations,
                    "logvold.io/terminated": self._clock().isoformat(),
                },
            )
        )
        log.info(
            "stream finalised; served until maxAge or until its files go",
            extra={"stream": str(info.key), "maxAge": max_age_s or "unlimited"},
        )
        return True

    def relock(self) -> None:
        """Streams managed before their directory existed get its lock now."""
        workers = self._workers
        assert workers is not None
        config = self._config()
        for key in list(workers):
            info = workers.info(key)
            if (
                info is not None
                and not self._locks.holds_stream(key)
                and not self._locks.lock_stream(info, volume_root(config, info))
            ):
                workers.remove(key)
                self._scheduler.remove(key)

    def expire_terminated(self) -> None:
        """Drop finalised streams past their maxAge or whose directory is gone."""
        now = time.monotonic()
        for key, deadline in list(self._terminated.items()):
            info = self._registry.get(key)
            if info is None or not info.source.endswith(TERMINATED_SUFFIX):
                del self._terminated[key]  # the pod came back: discovery owns it again
            elif now >= deadline or not info.directory.is_dir():
                del self._terminated[key]
                self._registry.remove(key)


def under_budget(config: Config, info: StreamInfo) -> bool:
    """Does a byte budget (its volume's or the node's) share out the stream's space?"""
    return config.node_max_total_size_bytes > 0 or any(
        v.name == info.volume and v.max_total_size_bytes > 0 for v in config.volumes
    )
