"""Retention and rotation-period decisions: given a listing, a policy and a
clock, say what to delete, compress or trim. Applying them is the rotator's job.

The rule from the proposal: what is kept is always the largest suffix of
whole events that fits. Whole segments go first (oldest first); when the
budget cuts through the oldest surviving piece, the plan names how many bytes
to drop from its head and the caller moves that cut forward to an event
boundary, so the kept bytes are a suffix of whole events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from logvold.core.layout import SegmentName
from logvold.core.log_policy import period_seconds

if TYPE_CHECKING:
    from logvold.core.log_policy import LogPolicy, Rotate


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """A closed segment as seen on disk."""

    name: SegmentName
    size_bytes: int
    """On-disk size (compressed size for .gz/.zst): budgets are about disk."""


@dataclass(frozen=True, kw_only=True)
class RetentionPlan:
    """What to do to bring a stream within its policy; empty means nothing."""

    delete: tuple[SegmentName, ...] = ()
    """Whole segments to remove, oldest first."""
    reasons: Mapping[str, str] = field(default_factory=dict)
    """Segment stem -> why: `maxAge`, `maxFiles`, `maxTotalSize` or `budget`."""
    compress: tuple[SegmentName, ...] = ()
    """Plain segments to compress now (the newest stays plain with delayCompress)."""
    trim_segment: SegmentName | None = None
    """Oldest kept segment whose head must be dropped to fit the byte budget."""
    trim_segment_bytes: int = 0
    """At least this many on-disk bytes of `trim_segment`'s head go (cut moves to a boundary)."""
    active_bytes_to_drop: int = 0
    """At least this many bytes of the live active data's head go (after every segment)."""
    budget_reason: str = ""
    """`maxTotalSize` or `budget`, when a trim or active drop is planned."""

    @property
    def empty(self) -> bool:
        return not (
            self.delete or self.compress or self.trim_segment_bytes or self.active_bytes_to_drop
        )


def plan_retention(
    segments: Sequence[SegmentFile],
    active_live_bytes: int,
    policy: LogPolicy,
    now: datetime,
    extra_budget_bytes: int | None = None,
) -> RetentionPlan:
    """Decide deletions, compressions and head trims for one stream.

    `segments` may come in any order; `active_live_bytes` is the part of the
    active file not yet cut into segments. `extra_budget_bytes` is a cap handed
    down from a per-volume or per-node budget; the tighter of it and
    `maxTotalSize` applies (0 or None = no cap).
    """
    ordered = sorted(segments, key=lambda s: s.name)
    reasons: dict[str, str] = {}
    kept = list(ordered)

    if policy.max_age_s > 0:
        horizon = now - timedelta(seconds=policy.max_age_s)
        # A segment's stamp is its close time: nothing in it is newer than that.
        for seg in list(kept):
            if seg.name.stamp < horizon:
                reasons[seg.name.stem] = "maxAge"
                kept.remove(seg)

    if policy.max_files > 0 and len(kept) > policy.max_files:
        for seg in kept[: len(kept) - policy.max_files]:
            reasons[seg.name.stem] = "maxFiles"
        kept = kept[len(kept) - policy.max_files :]

    budget, budget_reason = _effective_budget(policy.max_total_size_bytes, extra_budget_bytes)
    trim_segment: SegmentName | None = None
    trim_bytes = 0
    active_drop = 0
    if budget is not None:
        total = sum(s.size_bytes for s in kept) + active_live_bytes
        while kept and total - kept[0].size_bytes >= budget and total > budget:
            total -= kept[0].size_bytes
            reasons[kept[0].name.stem] = budget_reason
            kept.pop(0)
        if total > budget:
            excess = total - budget
            if kept:
                trim_segment, trim_bytes = kept[0].name, excess
            else:
                active_drop = excess

    deleted = tuple(s.name for s in ordered if s.name.stem in reasons)
    compress: tuple[SegmentName, ...] = ()
    if policy.compress != "none":
        plain = [s.name for s in kept if s.name.compression == ""]
        if policy.delay_compress and plain and plain[-1] == kept[-1].name:
            plain = plain[:-1]
        compress = tuple(plain)
    return RetentionPlan(
        delete=deleted,
        reasons=reasons,
        compress=compress,
        trim_segment=trim_segment,
        trim_segment_bytes=trim_bytes,
        active_bytes_to_drop=active_drop,
        budget_reason=budget_reason if (trim_bytes or active_drop) else "",
    )


def _effective_budget(max_total: int, extra: int | None) -> tuple[int | None, str]:
    caps = [(max_total, "maxTotalSize")] if max_total > 0 else []
    if extra is not None and extra > 0:
        caps.append((extra, "budget"))
    if not caps:
        return None, ""
    value, reason = min(caps, key=lambda c: c[0])
    return value, reason


def period_start(now: datetime, rotate: Rotate, tz: tzinfo) -> datetime | None:
    """Start of the period containing `now`, in `tz`; None for Never.

    A fixed period starts at a multiple of its length counted on the local wall clock
    from the epoch, so `15m` starts at :00, :15, :30 and :45 local time and `1d` at
    local midnight (for lengths that divide a day)."""
    local = now.astimezone(tz)
    if rotate == "Hourly":
        return local.replace(minute=0, second=0, microsecond=0)
    if rotate == "Daily":
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    every = period_seconds(rotate)
    if every is None:
        return None
    offset = local.utcoffset() or timedelta(0)
    wall = now.timestamp() + offset.total_seconds()
    start = wall - wall % every - offset.total_seconds()
    return datetime.fromtimestamp(start, UTC).astimezone(tz)


def next_period_boundary(now: datetime, rotate: Rotate, tz: tzinfo) -> datetime | None:
    """The first period boundary strictly after `now` (an aware datetime), or None.

    Daily boundaries are local midnights, computed on the wall clock so a DST
    change makes that day 23 or 25 hours long, as an operator would expect.
    """
    start = period_start(now, rotate, tz)
    if start is None:
        return None
    if rotate == "Hourly":
        # Hours are absolute: step in UTC (aware `+ timedelta` is wall-clock
        # arithmetic in Python, which would repeat or skip an hour at DST).
        return (start.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
    every = period_seconds(rotate)
    if every is not None:
        boundary = (start.astimezone(UTC) + timedelta(seconds=every)).astimezone(tz)
        # A DST change moves the local grid: the next boundary is the first grid point
        # after `now` on the new offset (never one at or before `now`).
        again = period_start(boundary, rotate, tz)
        if again is not None and again > now:
            boundary = again
        return boundary
    next_day = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=tz)
    return next_day


def crossed_period(last_rotation: datetime, now: datetime, rotate: Rotate, tz: tzinfo) -> bool:
    """True when a period boundary lies in (last_rotation, now]: a time trigger is due."""
    boundary = next_period_boundary(last_rotation, rotate, tz)
    return boundary is not None and boundary <= now
