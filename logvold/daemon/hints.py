"""File hints: which inotify events matter, and what each one asks of the daemon.

A write to an active file costs one lstat against its size trigger; a new name in a
watched directory asks for a rescan of its volume (debounced); a change of the config
file asks for a reload (debounced, compared by digest). Hints are never the truth: a lost
one (queue overflow) turns into a full rescan, and the periodic reconcile sees the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from logvold.daemon import LOGGER_NAME
from logvold.daemon.state import DaemonState
from logvold.sources.watcher import Hint

log = logging.getLogger(LOGGER_NAME)


class HintSteps(DaemonState):
    """The watcher's callbacks and the set of directories it watches."""

    def _relevance(self) -> Callable[[Hint], bool]:
        # Runs on the loop thread for every hint of a batch: membership tests only.
        active = self.streams.active_paths

        def relevant(hint: Hint) -> bool:
            if hint.kind == "modified":
                return hint.path in active or self.config_watch.is_config(hint.path)
            name = hint.path.rpartition("/")[2]
            return (
                hint.path in active
                or name.endswith(".log")
                or self.config_watch.is_config(hint.path)
                or name == "..data"
            )

        return relevant

    def _on_hint(self, hint: Hint) -> None:
        key = self.streams.active_paths.get(hint.path)
        if self.config_watch.is_config(hint.path) or (
            hint.kind == "changed" and hint.path.rpartition("/")[2] == "..data"
        ):
            if self._loop is not None:
                self.config_watch.schedule_check(self._loop)
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
        config_dir = self.config_watch.directory()
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
