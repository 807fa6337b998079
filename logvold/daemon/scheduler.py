"""When to look at which stream: size hints and Hourly/Daily period boundaries.

Pure bookkeeping with injected clocks (wall clock for period boundaries in the
stream's timezone, a monotonic clock for hint batching), so a unit test drives
it without sleeping. The daemon asks `due()` for work and `next_wakeup_s()`
for how long it may sleep; it never stats a stream nobody hinted at, so 1,000
idle streams cost nothing between full reconciles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from logvold.core.retention import next_period_boundary
from logvold.core.values import time_zone

if TYPE_CHECKING:
    from logvold.core.policy import LogPolicy

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
DueReason = Literal["period", "hint"]

MAX_SLEEP_S = 60.0
"""Upper bound of one sleep, so a wall-clock step is noticed within a minute."""


@dataclass(frozen=True, slots=True)
class Due(Generic[K]):
    """Stream `key` should be looked at now, because of `reason`."""

    key: K
    reason: DueReason


@dataclass(slots=True)
class _Entry:
    rotate: str
    tz: tzinfo
    boundary: datetime | None
    dirty_since: float | None = None
    last_check: float = float("-inf")


class TriggerScheduler(Generic[K]):
    """Per-stream trigger state: dirty marks from hints and the next period boundary."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        *,
        hint_delay_s: float = 0.05,
        min_check_interval_s: float = 0.5,
    ) -> None:
        """`hint_delay_s`: batch hints arriving together; `min_check_interval_s`: a stream
        written continuously is checked at most this often (size triggers fire within it)."""
        self._clock = clock
        self._monotonic = monotonic
        self._hint_delay_s = hint_delay_s
        self._min_check_interval_s = min_check_interval_s
        self._entries: dict[K, _Entry] = {}
        self._dirty: dict[K, None] = {}  # insertion-ordered set: only these cost work
        self._min_boundary: datetime | None = None
        self._min_boundary_stale = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def set_stream(self, key: K, policy: LogPolicy) -> None:
        """Add a stream or update its policy (recomputing its next boundary)."""
        tz = time_zone(policy.timezone)  # checked with the config: ValueError names it
        boundary = next_period_boundary(self._clock(), policy.rotate, tz)
        old = self._entries.get(key)
        entry = _Entry(rotate=policy.rotate, tz=tz, boundary=boundary)
        if old is not None:
            entry.dirty_since, entry.last_check = old.dirty_since, old.last_check
        self._entries[key] = entry
        self._min_boundary_stale = True

    def remove(self, key: K) -> None:
        if self._entries.pop(key, None) is not None:
            self._dirty.pop(key, None)
            self._min_boundary_stale = True

    def mark_dirty(self, key: K) -> bool:
        """A hint says `key` changed; False if the stream is unknown."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.dirty_since is None:
            entry.dirty_since = self._monotonic()
            self._dirty[key] = None
        return True

    def next_boundary(self, key: K) -> datetime | None:
        entry = self._entries.get(key)
        return entry.boundary if entry else None

    def due(self) -> list[Due[K]]:
        """Streams to look at now; their dirty mark is consumed, boundaries advance."""
        now = self._clock()
        mono = self._monotonic()
        out: list[Due[K]] = []
        earliest = self._earliest_boundary()
        if earliest is not None and now >= earliest:
            for key, entry in self._entries.items():
                if entry.boundary is not None and now >= entry.boundary:
                    out.append(Due(key, "period"))
                    entry.boundary = next_period_boundary(now, entry.rotate, entry.tz)
                    entry.dirty_since = None
                    entry.last_check = mono
                    self._dirty.pop(key, None)
            self._min_boundary_stale = True
        for key in list(self._dirty):
            entry = self._entries[key]
            if entry.dirty_since is not None and mono >= self._ready_at(entry):
                out.append(Due(key, "hint"))
                entry.dirty_since = None
                entry.last_check = mono
                del self._dirty[key]
        return out

    def next_wakeup_s(self) -> float:
        """Seconds until `due()` may return something (0 = now), at most MAX_SLEEP_S."""
        wait = MAX_SLEEP_S
        if self._dirty:
            mono = self._monotonic()
            for key in self._dirty:
                wait = min(wait, self._ready_at(self._entries[key]) - mono)
        earliest = self._earliest_boundary()
        if earliest is not None:
            wait = min(wait, (earliest - self._clock()).total_seconds())
        return max(0.0, wait)

    def _earliest_boundary(self) -> datetime | None:
        if self._min_boundary_stale:
            boundaries = [e.boundary for e in self._entries.values() if e.boundary is not None]
            self._min_boundary = min(boundaries, default=None)
            self._min_boundary_stale = False
        return self._min_boundary

    def _ready_at(self, entry: _Entry) -> float:
        assert entry.dirty_since is not None
        return max(
            entry.dirty_since + self._hint_delay_s, entry.last_check + self._min_check_interval_s
        )
