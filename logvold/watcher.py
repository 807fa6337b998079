"""File-system hints from watchdog (inotify on Linux); the only watchdog importer.

Observer threads turn OS events into immutable `Hint` values and hand them to
the event loop with `call_soon_threadsafe`. Hints are only hints: the daemon's
periodic full reconcile is the truth, so a lost or coalesced event costs
latency, never correctness. A hint already waiting is not queued twice, so a
busy writer costs one wake-up per batch, not one per write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger(__name__)

HintKind = Literal["modified", "changed"]
"""`modified`: a file's content changed. `changed`: an entry appeared, vanished or moved."""


@dataclass(frozen=True, slots=True)
class Hint:
    """Something may have changed at `path` (absolute); look, do not trust."""

    kind: HintKind
    path: str


Relevance = Callable[[Hint], bool]
"""Called on observer threads; must be cheap and thread-safe (read immutable data)."""


class _Handler(FileSystemEventHandler):
    def __init__(self, emit: Callable[[Hint], None]) -> None:
        self._emit = emit

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent | FileClosedEvent | FileClosedNoWriteEvent
                      | DirModifiedEvent):
            return
        if isinstance(event, FileModifiedEvent):
            self._emit(Hint("modified", _text(event.src_path)))
        elif isinstance(event, FileCreatedEvent | FileDeletedEvent | DirCreatedEvent
                        | DirDeletedEvent):
            self._emit(Hint("changed", _text(event.src_path)))
        elif isinstance(event, FileMovedEvent | DirMovedEvent):
            self._emit(Hint("changed", _text(event.src_path)))
            self._emit(Hint("changed", _text(event.dest_path)))


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)


class DirectoryWatcher:
    """Watches a changing set of directories (non-recursively) and queues hints."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Callable[[Hint], None],
                 relevant: Relevance = lambda hint: True,
                 on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self._loop = loop
        self._sink = sink
        self._relevant = relevant
        self._on_error = on_error
        self._observer: Any = None
        self._watches: dict[str, Any] = {}
        self._pending: set[Hint] = set()
        self._pending_lock = threading.Lock()
        self._handler = _Handler(self._emit)

    def set_relevance(self, relevant: Relevance) -> None:
        self._relevant = relevant

    def start(self) -> None:
        observer = Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self._watches.clear()

    @property
    def directories(self) -> list[str]:
        return sorted(self._watches)

    def set_directories(self, directories: Iterable[Path]) -> dict[str, OSError]:
        """Watch exactly `directories`; returns the ones that could not be watched.

        A directory that cannot be watched now (missing, unreadable, inotify
        limit) is retried on the next call, which the daemon makes on every
        full reconcile.
        """
        if self._observer is None:
            raise RuntimeError("DirectoryWatcher.start() was not called")
        self._revive_if_dead()
        wanted = {str(d) for d in directories}
        for path in list(self._watches):
            if path not in wanted:
                watch = self._watches.pop(path)
                try:
                    self._observer.unschedule(watch)
                except (KeyError, OSError) as exc:
                    log.debug("unschedule failed", extra={"path": path, "error": str(exc)})
        failed: dict[str, OSError] = {}
        for path in sorted(wanted - set(self._watches)):
            try:
                self._watches[path] = self._observer.schedule(self._handler, path, recursive=False)
            except OSError as exc:
                failed[path] = exc
        return failed

    def _revive_if_dead(self) -> None:
        """Restart the observer if one of watchdog's threads died (an exception inside
        watchdog itself, not in our handler, ends it silently): report it, then watch
        everything again, so hints do not quietly degrade to the slow rescan."""
        observer = self._observer
        dead = [e for e in getattr(observer, "emitters", ()) if not e.is_alive()]
        gone = [e for e in dead if not Path(e.watch.path).is_dir()]
        for emitter in gone:  # its directory was deleted: the emitter ended by design
            path = os.fsdecode(emitter.watch.path)
            watch = self._watches.pop(path, None)
            if watch is not None:
                try:
                    observer.unschedule(watch)
                except (KeyError, OSError) as exc:
                    log.debug("unschedule failed", extra={"path": path, "error": str(exc)})
        if observer.is_alive() and len(gone) == len(dead):
            return
        if self._on_error is not None:
            self._on_error("", RuntimeError("a watchdog thread died; restarting the observer"))
        try:
            observer.stop()
        except Exception as exc:  # a broken observer must not stop the restart
            log.debug("stopping the dead observer failed", extra={"error": repr(exc)})
        self._watches.clear()
        self.start()

    def _deliver(self, hint: Hint) -> None:
        # A `modified` hint stays pending until the consumer has looked at the
        # file (rearm), so a busy writer costs one hint per check, not per write.
        if hint.kind != "modified":
            self.rearm(hint)
        self._sink(hint)

    def rearm(self, hint: Hint) -> None:
        """The consumer has acted on `hint`: the next such event is worth a new hint."""
        with self._pending_lock:
            self._pending.discard(hint)

    def _emit(self, hint: Hint) -> None:
        try:
            if not self._relevant(hint):
                return
            with self._pending_lock:
                if hint in self._pending:
                    return
                self._pending.add(hint)
            self._loop.call_soon_threadsafe(self._deliver, hint)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down
        except Exception as exc:  # never let an observer thread die silently
            if self._on_error is not None:
                self._on_error(hint.path, exc)
