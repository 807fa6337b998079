"""Streams come and go: registry changes become managed streams, and a pod's streams outlive it.

The registry (static scan, pod discovery) tells the daemon on whichever thread changed
it; the change is applied on the loop: lock the stream's directory, hand it to the
workers and the scheduler, index its active file for hints, and ask for its first step.
A discovered stream whose pod went away is finalised (its last whole events cut into a
segment) and served, marked terminated, until maxAge passes or its directory goes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time

from logvold.core.streams import StreamInfo
from logvold.daemon.locks import DirectoryLockSteps, stream_owner
from logvold.daemon.state import LOGGER_NAME
from logvold.daemon.steps import StepRequest

log = logging.getLogger(LOGGER_NAME)

TERMINATED_SUFFIX = "-terminated"
"""Appended to a stream's source once its pod is gone (see StreamSteps._finalise)."""


class StreamSteps(DirectoryLockSteps):
    """Applying registry changes to the managed streams; finalising a gone pod's streams."""

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
            self.locks.drop(stream_owner(info.key))
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
