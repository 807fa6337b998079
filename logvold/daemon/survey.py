"""The reconcile's survey of streams: disk usage from one listing per directory,
byte-budget shares across streams, and which streams have retention work or a
size trigger that no hint reported. Runs on a worker thread; returns values only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from logvold.core.budget import UsagePiece, budget_shares, clip_to_shares, combine_shares
from logvold.core.retention import plan_retention
from logvold.core.streams import StreamInfo, StreamKey
from logvold.errors import StreamError
from logvold.fileio.safedir import open_stream_dir, stream_root
from logvold.fileio.usage import StreamUsage, group_segment_names, stream_usage


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """What the survey found due for one stream."""

    retention: bool
    """plan_retention has work (deletions, trims, compressions)."""
    size_due: bool
    """The live part of the active file reached maxSize."""


@dataclass(frozen=True)
class Survey:
    checks: dict[StreamKey, StreamCheck]
    usages: dict[StreamKey, StreamUsage]
    shares: dict[StreamKey, int] | None
    """Budget shares recomputed by this survey; None when budgets were not looked at."""


def budget_share_arg(share: int | None) -> int | None:
    """`extra_budget_bytes` for a share: there 0 means no cap, so a share of 0 becomes 1."""
    return None if share is None else max(share, 1)


def survey_streams(
    infos: Sequence[StreamInfo],
    *,
    now: datetime,
    shares: Mapping[StreamKey, int | None],
    volume_budgets: Mapping[str, int],
    node_budget_bytes: int,
    with_budgets: bool,
) -> Survey:
    """Usage, budget shares (when `with_budgets`) and due work of every stream in `infos`.

    A directory that cannot be listed, or that is refused (a symlinked component, more
    names than a listing takes), is skipped: its rotator step reports and counts it.
    """
    by_dir: dict[tuple[Path, Path], list[StreamInfo]] = {}
    for info in infos:
        by_dir.setdefault((info.directory, stream_root(info)), []).append(info)
    usages: dict[StreamKey, StreamUsage] = {}
    for members in by_dir.values():
        try:  # one walk and one bounded listing per directory, from its safety root
            with open_stream_dir(members[0]) as d:
                groups = group_segment_names(d.names())
                for info in members:
                    usages[info.key] = stream_usage(d, info.base, groups.get(info.base, []))
        except (OSError, StreamError):
            continue
    new_shares = (
        stream_budget_shares(infos, usages, now, volume_budgets, node_budget_bytes)
        if with_budgets
        else None
    )
    current = new_shares if new_shares is not None else shares
    checks: dict[StreamKey, StreamCheck] = {}
    for info in infos:
        usage = usages.get(info.key)
        if usage is None:
            continue
        plan = plan_retention(
            usage.segments,
            usage.active_live_bytes,
            info.policy,
            now,
            extra_budget_bytes=budget_share_arg(current.get(info.key)),
        )
        max_size = info.policy.max_size_bytes
        checks[info.key] = StreamCheck(
            retention=not plan.empty, size_due=0 < max_size <= usage.active_live_bytes
        )
    return Survey(checks, usages, new_shares)


def stream_budget_shares(
    infos: Sequence[StreamInfo],
    usages: Mapping[StreamKey, StreamUsage],
    now: datetime,
    volume_budgets: Mapping[str, int],
    node_budget_bytes: int,
) -> dict[StreamKey, int]:
    """Bytes each stream under a volume or node budget may keep (oldest data goes first
    across streams); streams under no budget are absent."""
    pieces: dict[str, list[UsagePiece[StreamKey]]] = {}
    for info in infos:
        usage = usages.get(info.key)
        if usage is None:
            continue
        mine = pieces.setdefault(info.volume, [])
        mine.extend(UsagePiece(info.key, s.name.stamp, s.size_bytes) for s in usage.segments)
        mine.append(UsagePiece(info.key, now, usage.active_live_bytes))
    volume_shares: dict[StreamKey, int] = {}
    for volume, volume_pieces in pieces.items():
        budget = volume_budgets.get(volume, 0)
        if budget > 0:
            volume_shares.update(budget_shares(volume_pieces, budget))
    if node_budget_bytes <= 0:
        return volume_shares
    every = [p for ps in pieces.values() for p in ps]
    node = budget_shares(clip_to_shares(every, volume_shares), node_budget_bytes)
    return combine_shares(volume_shares, node)
