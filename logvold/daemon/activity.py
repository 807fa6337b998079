"""The daemon's info lines about what it did to a stream (rotated it, truncated it),
at most one line per stream and kind per interval.

An operator reading `journalctl -u logvold` at the default level should see that
rotation works without a line per second from a busy stream: the first rotation of a
stream is logged, later ones within `interval_s` are counted, and the next line (or
`flush()`, which the daemon calls at each reconcile) carries how many there were.
Entries are dropped with their stream, so memory follows the number of streams.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_INTERVAL_S = 60.0
"""One line per stream and kind per minute: a stream rotating every second costs 60x less."""


@dataclass
class _Pending:
    last_logged: float
    count: int = 0
    """Events since the last line (not yet logged)."""
    totals: dict[str, int] = field(default_factory=dict)


class ActivityLog:
    """Rate-limited info lines per (stream, kind); one instance per daemon, loop thread only."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._pending: dict[tuple[str, str], _Pending] = {}

    def rotated(self, stream: str, rotation: Any, reason: str | None) -> None:
        """A committed rotation (`fileio.rotator.RotationResult` or the writer's)."""
        segment = getattr(rotation, "segment", None)
        start = getattr(rotation, "logical_start", 0) or 0
        end = getattr(rotation, "logical_end", 0) or 0
        fields: dict[str, object] = {"stream": stream, "reason": reason or "-"}
        if segment:
            fields["segment"] = segment
        strategy = getattr(rotation, "strategy", None)
        if strategy:
            fields["strategy"] = strategy
        self._event("rotated", stream, fields, {"bytes": max(0, int(end) - int(start))})

    def truncated(self, stream: str, retention: Any) -> None:
        """What retention removed, if anything (`fileio.rotator.RetentionResult`)."""
        deleted = tuple(getattr(retention, "deleted", ()) or ())
        dropped = int(getattr(retention, "dropped_active_bytes", 0) or 0)
        trimmed = getattr(retention, "trimmed_segment", None)
        if not deleted and not dropped and not trimmed:
            return
        reasons = sorted(set((getattr(retention, "reasons", None) or {}).values()))
        fields: dict[str, object] = {"stream": stream, "why": ",".join(reasons) or "-"}
        if trimmed:
            fields["trimmed_segment"] = trimmed
        self._event(
            "truncated",
            stream,
            fields,
            {
                "deleted_segments": len(deleted),
                "dropped_active_bytes": dropped,
                "freed_bytes": int(getattr(retention, "bytes_freed", 0) or 0),
            },
        )

    def forget(self, stream: str) -> None:
        """The stream is gone: report what was still pending, then drop its entries."""
        for kind in ("rotated", "truncated"):
            pending = self._pending.pop((stream, kind), None)
            if pending is not None and pending.count:
                self._summary(stream, kind, pending)

    def flush(self) -> None:
        """Report counts that waited longer than the interval (a stream gone quiet)."""
        now = self._monotonic()
        for (stream, kind), pending in list(self._pending.items()):
            if now - pending.last_logged < self._interval_s:
                continue
            if pending.count:
                self._summary(stream, kind, pending)
                pending.last_logged = now
            else:
                del self._pending[(stream, kind)]  # quiet for a whole interval: forget it

    def __len__(self) -> int:
        return len(self._pending)

    def _event(
        self, kind: str, stream: str, fields: dict[str, object], amounts: dict[str, int]
    ) -> None:
        now = self._monotonic()
        key = (stream, kind)
        pending = self._pending.get(key)
        if pending is not None and now - pending.last_logged < self._interval_s:
            pending.count += 1
            for name, value in amounts.items():
                pending.totals[name] = pending.totals.get(name, 0) + value
            return
        extra = {**fields, **amounts}
        if pending is not None and pending.count:
            extra["suppressed"] = pending.count  # not logged while rate-limited
        self._log.info("stream %s", kind, extra=extra)
        self._pending[key] = _Pending(last_logged=now)

    def _summary(self, stream: str, kind: str, pending: _Pending) -> None:
        self._log.info(
            "stream %s (summary)",
            kind,
            extra={"stream": stream, "times": pending.count, **pending.totals},
        )
        pending.count = 0
        pending.totals = {}
