"""File hints: which inotify events matter, and what each one asks of the daemon.

A write to an active file costs one lstat against its size trigger; a new name in a
watched directory asks for a rescan of its volume (debounced); a change of the config
file asks for a reload (debounced, compared by digest). Hints are never the truth: a lost
one (queue overflow) turns into a full rescan, and the periodic reconcile sees the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from logvold.core.streams import StreamKey
from logvold.daemon.config_watch import ConfigFileWatch
from logvold.daemon.logger import LOGGER_NAME
from logvold.daemon.scheduler import TriggerScheduler
from logvold.daemon.streams import ManagedStreams
from logvold.daemon.workers import StreamWorkers
from logvold.sources.changes import StreamChanges
from logvold.sources.static import StaticSource
from logvold.sources.watcher import DirectoryWatcher, Hint
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from logvold.core.policy import Config

log = logging.getLogger(LOGGER_NAME)


class FileHints:
    """The directory watcher, the set of directories it watches, and what its hints ask:
    `wake` (a stream is due), `rescan(volumes)` / `rescan_all()` (a reconcile pass), the
    config watch's debounced check, and the followers' change notices."""

    def __init__(
        self,
        source: StaticSource,
        streams: ManagedStreams,
        scheduler: TriggerScheduler[StreamKey],
        changes: StreamChanges,
        config_watch: ConfigFileWatch,
        metrics: Metrics,
        *,
        config: Callable[[], Config],
        wake: Callable[[], None],
        rescan: Callable[[Iterable[str]], None],
        rescan_all: Callable[[], None],
    ) -> None:
        self._source = source
        self._streams = streams
        self._scheduler = scheduler
        self._changes = changes
        self._config_watch = config_watch
        self._metrics = metrics
        self._config = config
        self._wake = wake
        self._rescan = rescan
        self._rescan_all = rescan_all
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: StreamWorkers | None = None
        self.watcher: DirectoryWatcher | None = None
        self._dir_volumes: dict[str, set[str]] = {}
        self._watch_problems: set[str] = set()

    def start(
        self, loop: asyncio.AbstractEventLoop, workers: StreamWorkers, *, watch: bool
    ) -> None:
        """Take the workers; with `watch`, open the inotify watcher (on the loop)."""
        self._loop = loop
        self._workers = workers
        if watch:
            self.watcher = DirectoryWatcher(
                loop, self._on_hint, self._relevance(), on_error=self._watch_error
            )
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()  # no thread: it only unregisters its fd from the loop
            self.watcher = None

    def _relevance(self) -> Callable[[Hint], bool]:
        # Runs on the loop thread for every hint of a batch: membership tests only.
        active = self._streams.active_paths
        config_watch = self._config_watch

        def relevant(hint: Hint) -> bool:
            if hint.kind == "modified":
                return hint.path in active or config_watch.is_config(hint.path)
            name = hint.path.rpartition("/")[2]
            return (
                hint.path in active
                or name.endswith(".log")
                or config_watch.is_config(hint.path)
                or name == "..data"
            )

        return relevant

    def _on_hint(self, hint: Hint) -> None:
        key = self._streams.active_paths.get(hint.path)
        if self._config_watch.is_config(hint.path) or (
            hint.kind == "changed" and hint.path.rpartition("/")[2] == "..data"
        ):
            if self._loop is not None:
                self._config_watch.schedule_check(self._loop)
            return
        if key is not None:
            self._changes.notify(key)  # wakes the stream's followers
        if hint.kind == "modified":
            # A write: a step only if it may have crossed maxSize (one lstat against the
            # trigger noted after the last step), so writes far below the limit cost
            # nothing more. Period boundaries come from the scheduler's clock.
            assert self._workers is not None
            if key is not None and self._workers.size_due(key) and self._scheduler.mark_dirty(key):
                self._wake()
            return
        if key is not None and self._scheduler.mark_dirty(key):
            self._wake()
        directory = hint.path.rpartition("/")[0]
        volumes = self._dir_volumes.get(directory)
        if volumes and (over := self._source.over_cap()):
            # A volume over its stream cap gains no stream from a new name; a pod churning
            # names there must not buy a rescan and survey per event (the full one sees it).
            volumes = {v for v in volumes if v not in over}
        if volumes:
            self._rescan(volumes)

    def _watch_error(self, path: str, exc: BaseException) -> None:
        self._metrics.watch_errors.labels("inotify").inc()
        log.warning("file watch error", extra={"path": path, "error": repr(exc)})
        if isinstance(exc, OverflowError):  # events were lost: look at everything now
            self._rescan_all()
            self._changes.notify_all()

    def refresh_watches(self) -> None:
        """Watch the directories of every stream, and the config file's (each pass)."""
        dirs = self._source.directories()
        dir_volumes: dict[str, set[str]] = {}
        for volume in self._config().volumes:
            for d in dirs:
                if d == Path(volume.path) or Path(volume.path) in d.parents:
                    dir_volumes.setdefault(str(d), set()).add(volume.name)
        self._dir_volumes = dir_volumes
        if self.watcher is None:
            return
        workers = self._workers
        assert workers is not None
        others = {
            i.directory
            for i in (workers.info(k) for k in workers)
            if i is not None and i.source != "static"
        }
        wanted = [d for d in sorted(set(dirs) | others) if d.is_dir()]
        config_dir = self._config_watch.directory()
        if config_dir is not None:
            wanted.append(config_dir)
        failed = self.watcher.set_directories(wanted)
        problems = {f"{path}: {exc.strerror or exc}" for path, exc in failed.items()}
        for problem in sorted(problems - self._watch_problems):
            self._metrics.watch_errors.labels("inotify").inc()
            log.warning(
                "cannot watch directory; relying on the periodic rescan", extra={"problem": problem}
            )
        self._watch_problems = problems
