"""Per-stream change notices for followers: the daemon bumps a stream's version on
every file hint about it and on every step the rotator finishes; a caught-up
follower sleeps until its stream's version moves.

Why: followers used to stat three files every 50 ms each (200 idle followers cost
a third of a core). Now an idle follower is one parked future; the same inotify
events that drive the size triggers wake it, and the rotator's commits (state
files live in a directory nobody watches) wake it too. A slow fallback timeout in
the follower stays as a safety net for a missed notice. Loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable


class StreamChanges:
    """Version counters and waiters per stream key (event loop thread only)."""

    def __init__(self) -> None:
        self._versions: dict[Hashable, int] = {}
        self._waiters: dict[Hashable, set[asyncio.Future[None]]] = {}
        self.notices = 0
        """Notices so far (tests and benchmarks read it)."""

    def version(self, key: Hashable) -> int:
        """Take this before looking at the stream; `wait` returns once it moved."""
        return self._versions.get(key, 0)

    def notify(self, key: Hashable) -> None:
        """Something about `key` may have changed: wake its waiters."""
        self.notices += 1
        self._versions[key] = self._versions.get(key, 0) + 1
        waiters = self._waiters.pop(key, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def notify_all(self) -> None:
        """Wake every waiter (shutdown, or a lost-events overflow)."""
        for key in list(self._waiters):
            self.notify(key)

    def forget(self, key: Hashable) -> None:
        """The stream is gone: wake its waiters (they look and end), drop its counter."""
        self.notify(key)
        self._versions.pop(key, None)

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def wait(self, key: Hashable, seen: int, timeout_s: float) -> bool:
        """Until the version of `key` differs from `seen` (True) or `timeout_s` passed."""
        if self._versions.get(key, 0) != seen:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(fut)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await fut
            return fut.done() and not fut.cancelled()
        finally:
            if not fut.done():
                fut.cancel()
            current = self._waiters.get(key)
            if current is not None:
                current.discard(fut)
                if not current:
                    del self._waiters[key]
