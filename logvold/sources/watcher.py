"""File-system hints from ONE inotify instance, read on the event loop; the only
inotify user.

Why not watchdog: its inotify observer runs a thread and an inotify instance per
watched directory, and hands every event to the loop with `call_soon_threadsafe`;
at 550 streams that was a third of the daemon's CPU. Here the inotify fd is added
to the asyncio loop (`add_reader`): no thread at all. When the fd becomes
readable the reader is parked for `batch_s` so events pile up (and the kernel
merges identical consecutive ones), then everything queued is read in one go,
turned into `Hint`s, deduplicated and handed to the sink: a busy node costs at
most 1/batch_s wake-ups per second, not one per write.

Hints are only hints: the daemon's periodic full reconcile is the truth, so a
lost or coalesced event (or a queue overflow, reported through `on_error`) costs
latency, never correctness.

Directories are watched with IN_ONLYDIR | IN_DONT_FOLLOW: a pod controls the
names in its volume, so a symlink planted where a directory was is refused
(ENOTDIR), never followed to somewhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inotify_simple import INotify, flags, parse_events

log = logging.getLogger(__name__)

HintKind = Literal["modified", "changed"]
"""`modified`: a file's content changed. `changed`: an entry appeared, vanished or moved."""

BATCH_S = 0.01
"""How long events may pile up after the fd turns readable: bounds wake-ups to 100/s
and adds at most this much to a size trigger's reaction."""
READ_BYTES = 256 * 1024
"""One read of the inotify fd (~10,000 events); reads repeat until the queue is empty,
at most MAX_READS_PER_BATCH times, so one batch is bounded."""
MAX_READS_PER_BATCH = 16

WATCH_MASK = (
    flags.MODIFY
    | flags.CREATE
    | flags.DELETE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.DELETE_SELF
    | flags.MOVE_SELF
    | flags.ONLYDIR
    | flags.DONT_FOLLOW
    | flags.EXCL_UNLINK
)
_CHANGED = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
_SELF = flags.DELETE_SELF | flags.MOVE_SELF


@dataclass(frozen=True, slots=True)
class Hint:
    """Something may have changed at `path` (absolute); look, do not trust."""

    kind: HintKind
    path: str


Relevance = Callable[[Hint], bool]
"""Called on the loop thread for every hint before it is queued; must be cheap."""


class DirectoryWatcher:
    """Watches a changing set of directories (non-recursively) and hands hints, batched,
    to `sink` on the event loop's thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sink: Callable[[Hint], None],
        relevant: Relevance = lambda hint: True,
        on_error: Callable[[str, BaseException], None] | None = None,
        *,
        batch_s: float = BATCH_S,
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._relevant = relevant
        self._on_error = on_error
        self._batch_s = batch_s
        self._inotify: INotify | None = None
        self._fd = -1
        self._paths: dict[str, int] = {}
        """Watched directory -> watch descriptor."""
        self._wds: dict[int, list[str]] = {}
        """Watch descriptor -> directories (two names of one directory share one wd)."""
        self._parked: asyncio.TimerHandle | None = None
        self.batches = 0
        """Batches handed over so far (tests and benchmarks read it)."""

    def set_relevance(self, relevant: Relevance) -> None:
        self._relevant = relevant

    def start(self) -> None:
        """Open the inotify instance and register it with the loop (call on the loop)."""
        if self._inotify is not None:
            return
        self._inotify = INotify(nonblocking=True)
        self._fd = self._inotify.fileno()
        self._loop.add_reader(self._fd, self._readable)

    def stop(self) -> None:
        """Unregister and close (call on the loop's thread)."""
        if self._parked is not None:
            self._parked.cancel()
            self._parked = None
        if self._inotify is not None:
            with contextlib.suppress(Exception):  # loop already closed: nothing to remove
                self._loop.remove_reader(self._fd)
            self._inotify.close()
            self._inotify = None
            self._fd = -1
        self._paths.clear()
        self._wds.clear()

    @property
    def directories(self) -> list[str]:
        return sorted(self._paths)

    def set_directories(self, directories: Iterable[Path]) -> dict[str, OSError]:
        """Watch exactly `directories`; returns the ones that could not be watched.

        A directory that cannot be watched now (missing, a symlink, unreadable, the
        inotify watch limit) is retried on the next call, which the daemon makes on
        every full reconcile.
        """
        inotify = self._inotify
        if inotify is None:
            raise RuntimeError("DirectoryWatcher.start() was not called")
        wanted = {str(d) for d in directories}
        for path in [p for p in self._paths if p not in wanted]:
            self._unwatch(path)
        failed: dict[str, OSError] = {}
        for path in sorted(wanted - set(self._paths)):
            try:
                wd = inotify.add_watch(path, WATCH_MASK)
            except OSError as exc:
                failed[path] = exc
                continue
            self._paths[path] = wd
            names = self._wds.setdefault(wd, [])
            if path not in names:
                names.append(path)
        return failed

    def _unwatch(self, path: str) -> None:
        wd = self._paths.pop(path)
        names = self._wds.get(wd, [])
        if path in names:
            names.remove(path)
        if names:
            return  # another name of the same directory still wants it
        self._wds.pop(wd, None)
        if self._inotify is not None:
            try:
                self._inotify.rm_watch(wd)
            except OSError as exc:  # EINVAL: the kernel dropped it already (directory gone)
                log.debug("rm_watch failed", extra={"path": path, "error": str(exc)})

    # -- reading (loop thread) ---------------------------------------------------------

    def _readable(self) -> None:
        """The queue has events: let more arrive for batch_s, then read them all."""
        if self._inotify is None or self._parked is not None:
            return
        self._loop.remove_reader(self._fd)
        self._parked = self._loop.call_later(self._batch_s, self._drain)

    def _drain(self) -> None:
        self._parked = None
        if self._inotify is None:
            return
        try:
            self._deliver(self._read_batch())
        except Exception as exc:  # a bug here must not end the watching
            if self._on_error is not None:
                self._on_error("", exc)
            else:
                log.exception("inotify batch failed")
        finally:
            if self._inotify is not None:
                self._loop.add_reader(self._fd, self._readable)

    def _read_batch(self) -> dict[Hint, None]:
        hints: dict[Hint, None] = {}  # insertion-ordered set: one hint per path and kind
        for _ in range(MAX_READS_PER_BATCH):
            try:
                data = os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                break
            if not data:
                break
            for ev in parse_events(data):
                self._hints_of(ev.wd, ev.mask, ev.name, hints)
            if len(data) < READ_BYTES // 2:
                break
        return hints

    def _hints_of(self, wd: int, mask: int, name: str, out: dict[Hint, None]) -> None:
        if mask & flags.Q_OVERFLOW:
            if self._on_error is not None:
                self._on_error(
                    "",
                    OverflowError(
                        "inotify queue overflowed; events were lost until the next rescan"
                    ),
                )
            return
        if mask & flags.IGNORED:  # the kernel removed the watch (directory deleted)
            for path in self._wds.pop(wd, []):
                self._paths.pop(path, None)
            return
        dirs = self._wds.get(wd)
        if not dirs:
            return
        if mask & _SELF:
            for d in dirs:
                out[Hint("changed", d)] = None
            return
        if not name:
            return
        if mask & flags.MODIFY:
            if mask & flags.ISDIR:
                return
            kind: HintKind = "modified"
        elif mask & _CHANGED:
            kind = "changed"
        else:
            return
        for d in dirs:
            out[Hint(kind, f"{d}/{name}")] = None

    def _deliver(self, hints: dict[Hint, None]) -> None:
        if not hints:
            return
        self.batches += 1
        relevant = self._relevant
        for hint in hints:
            try:
                if relevant(hint):
                    self._sink(hint)
            except Exception as exc:  # one bad hint must not drop the rest of the batch
                if self._on_error is not None:
                    self._on_error(hint.path, exc)
                else:
                    log.exception("hint handling failed", extra={"path": hint.path})
