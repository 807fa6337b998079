"""Retention decisions: age, count, byte budget (largest suffix that fits),
compression with delayCompress, and period boundaries across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logvold.core.layout import Compression, SegmentName
from logvold.core.policy import LogPolicy
from logvold.core.retention import (
    SegmentFile,
    crossed_period,
    next_period_boundary,
    period_start,
    plan_retention,
)

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def seg(minutes_ago: int, size: int, compression: Compression = "") -> SegmentFile:
    name = SegmentName(
        stamp=NOW - timedelta(minutes=minutes_ago), seq=0, base="app.log", compression=compression
    )
    return SegmentFile(name=name, size_bytes=size)


def test_nothing_to_do_when_within_policy() -> None:
    plan = plan_retention([seg(3, 100), seg(2, 100)], 50, LogPolicy(max_files=5), NOW)
    assert plan.empty
    assert plan.delete == ()


@pytest.mark.parametrize(
    ("max_files", "expected_deleted"),
    [(1, [5, 4, 3]), (2, [5, 4]), (4, []), (0, [])],
    ids=["keep-1", "keep-2", "keep-all", "unlimited"],
)
def test_max_files_deletes_oldest(max_files: int, expected_deleted: list[int]) -> None:
    segments = [seg(m, 10) for m in (2, 5, 3, 4)]
    plan = plan_retention(segments, 0, LogPolicy(max_files=max_files), NOW)
    assert [round((NOW - n.stamp).total_seconds() / 60) for n in plan.delete] == expected_deleted
    assert all(plan.reasons[n.stem] == "maxFiles" for n in plan.delete)


def test_max_age_uses_close_time() -> None:
    plan = plan_retention(
        [seg(120, 10), seg(59, 10), seg(61, 10)], 0, LogPolicy(max_files=0, max_age_s=3600), NOW
    )
    assert sorted(plan.reasons.values()) == ["maxAge", "maxAge"]
    assert {round((NOW - n.stamp).total_seconds() / 60) for n in plan.delete} == {120, 61}


def test_total_size_drops_whole_segments_then_trims_the_oldest_kept() -> None:
    # 3 segments of 100 + 50 live bytes = 350; budget 180 -> drop the two
    # oldest (150 left), no trim needed as 150 <= 180... use 120 to force a trim.
    segments = [seg(3, 100), seg(2, 100), seg(1, 100)]
    plan = plan_retention(segments, 50, LogPolicy(max_files=0, max_total_size_bytes=120), NOW)
    assert [round((NOW - n.stamp).total_seconds() / 60) for n in plan.delete] == [3, 2]
    assert plan.trim_segment is not None and plan.trim_segment.stamp == NOW - timedelta(minutes=1)
    assert plan.trim_segment_bytes == 30  # 100 + 50 - 120
    assert plan.active_bytes_to_drop == 0
    assert plan.budget_reason == "maxTotalSize"


def test_total_size_reaches_into_the_active_file() -> None:
    plan = plan_retention([seg(1, 100)], 500, LogPolicy(max_files=0, max_total_size_bytes=300), NOW)
    assert len(plan.delete) == 1
    assert plan.active_bytes_to_drop == 200
    assert plan.trim_segment is None


def test_tighter_of_policy_and_external_budget_applies() -> None:
    plan = plan_retention(
        [seg(2, 100), seg(1, 100)],
        0,
        LogPolicy(max_files=0, max_total_size_bytes=1000),
        NOW,
        extra_budget_bytes=150,
    )
    # 200 bytes, budget 150: keep 50 bytes of the oldest segment, not delete it.
    assert plan.delete == ()
    assert plan.trim_segment_bytes == 50
    assert plan.budget_reason == "budget"


@given(
    sizes=st.lists(st.integers(1, 10_000), max_size=12),
    active=st.integers(0, 20_000),
    budget=st.integers(1, 50_000),
)
def test_budget_keeps_the_largest_fitting_suffix(
    sizes: list[int], active: int, budget: int
) -> None:
    segments = [seg(len(sizes) - i, s) for i, s in enumerate(sizes)]
    plan = plan_retention(
        segments, active, LogPolicy(max_files=0, max_total_size_bytes=budget), NOW
    )
    deleted = set(plan.delete)
    kept = [s for s in segments if s.name not in deleted]
    # Deleted segments are a prefix (oldest first): never a hole in the middle.
    assert kept == segments[len(segments) - len(kept) :]
    kept_bytes = (
        sum(s.size_bytes for s in kept)
        + active
        - plan.trim_segment_bytes
        - plan.active_bytes_to_drop
    )
    total = sum(sizes) + active
    # Exactly min(total, budget) bytes stay (before the cut moves to a boundary).
    assert kept_bytes == min(total, budget)
    # A segment is only deleted whole if keeping it would not fit anyway.
    if plan.trim_segment is not None:
        assert plan.trim_segment == kept[0].name
        assert 0 < plan.trim_segment_bytes < kept[0].size_bytes
    if plan.active_bytes_to_drop:
        assert not kept


@pytest.mark.parametrize(
    ("compression", "delay", "expected"),
    [("gzip", True, [3, 2]), ("gzip", False, [3, 2, 1]), ("none", True, [])],
    ids=["delay", "no-delay", "off"],
)
def test_compress_plain_segments(compression: str, delay: bool, expected: list[int]) -> None:
    segments = [seg(4, 10, "gz"), seg(3, 10), seg(2, 10), seg(1, 10)]
    policy = LogPolicy(max_files=0, compress=compression, delay_compress=delay)  # type: ignore[arg-type]
    plan = plan_retention(segments, 0, policy, NOW)
    assert [round((NOW - n.stamp).total_seconds() / 60) for n in plan.compress] == expected


def test_deleted_segments_are_not_compressed() -> None:
    plan = plan_retention(
        [seg(3, 10), seg(2, 10), seg(1, 10)],
        0,
        LogPolicy(max_files=1, compress="zstd", delay_compress=False),
        NOW,
    )
    assert len(plan.delete) == 2
    assert [n.stamp for n in plan.compress] == [NOW - timedelta(minutes=1)]


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("now", "rotate", "tz", "expected_utc"),
    [
        (
            datetime(2026, 11, 23, 12, 59, 59, tzinfo=UTC),
            "Hourly",
            UTC,
            datetime(2026, 11, 23, 13, tzinfo=UTC),
        ),
        (
            datetime(2026, 11, 23, 13, 0, 0, tzinfo=UTC),
            "Hourly",
            UTC,
            datetime(2026, 11, 23, 14, tzinfo=UTC),
        ),
        (
            datetime(2026, 11, 23, 23, 0, 0, tzinfo=UTC),
            "Daily",
            UTC,
            datetime(2026, 11, 24, tzinfo=UTC),
        ),
        (
            datetime(2026, 11, 23, 23, 30, tzinfo=UTC),
            "Daily",
            BERLIN,
            datetime(2026, 11, 24, 23, tzinfo=UTC),
        ),
        # DST ends in Berlin on 2026-10-25: hours keep ticking every 60 minutes...
        (
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
            "Hourly",
            BERLIN,
            datetime(2026, 10, 25, 1, tzinfo=UTC),
        ),
        (
            datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
            "Hourly",
            BERLIN,
            datetime(2026, 10, 25, 2, tzinfo=UTC),
        ),
        # ...and that day is 25 hours long.
        (
            datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
            "Daily",
            BERLIN,
            datetime(2026, 10, 25, 23, tzinfo=UTC),
        ),
        # DST starts on 2026-03-29: a 23-hour day.
        (
            datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
            "Daily",
            BERLIN,
            datetime(2026, 3, 29, 22, tzinfo=UTC),
        ),
        (
            datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
            "Hourly",
            BERLIN,
            datetime(2026, 3, 29, 1, tzinfo=UTC),
        ),
    ],
    ids=[
        "hour-edge",
        "on-boundary",
        "day-utc",
        "day-berlin",
        "dst-end-1",
        "dst-end-2",
        "dst-end-day",
        "dst-start-day",
        "dst-start-hour",
    ],
)
def test_next_period_boundary(
    now: datetime, rotate: str, tz: ZoneInfo, expected_utc: datetime
) -> None:
    boundary = next_period_boundary(now, rotate, tz)
    assert boundary is not None
    assert boundary.astimezone(UTC) == expected_utc
    assert boundary > now


def test_never_has_no_period() -> None:
    assert period_start(NOW, "Never", UTC) is None
    assert next_period_boundary(NOW, "Never", UTC) is None
    assert not crossed_period(NOW - timedelta(days=9), NOW, "Never", UTC)


def test_crossed_period() -> None:
    last = datetime(2026, 11, 23, 11, 59, 58, tzinfo=UTC)
    assert not crossed_period(last, datetime(2026, 11, 23, 11, 59, 59, tzinfo=UTC), "Hourly", UTC)
    assert crossed_period(last, datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC), "Hourly", UTC)
    assert not crossed_period(last, datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC), "Daily", UTC)


KATHMANDU = ZoneInfo("Asia/Kathmandu")  # UTC+5:45: local quarter hours are not UTC's


@pytest.mark.parametrize(
    ("now", "rotate", "tz", "start_utc", "next_utc"),
    [
        (
            datetime(2026, 11, 23, 12, 7, 3, tzinfo=UTC),
            "900s",
            UTC,
            datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
            datetime(2026, 11, 23, 12, 15, tzinfo=UTC),
        ),
        (
            datetime(2026, 11, 23, 12, 15, tzinfo=UTC),
            "900s",
            UTC,  # on a boundary
            datetime(2026, 11, 23, 12, 15, tzinfo=UTC),
            datetime(2026, 11, 23, 12, 30, tzinfo=UTC),
        ),
        (
            datetime(2026, 11, 23, 12, 0, 4, 500000, tzinfo=UTC),
            "5s",
            UTC,
            datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC),
            datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC),
        ),
        # 12:07 UTC is 17:52 in Kathmandu: the local quarter started at 17:45 = 12:00 UTC,
        # and an hourly-length period starts at 17:00 local = 11:15 UTC.
        (
            datetime(2026, 11, 23, 12, 7, tzinfo=UTC),
            "900s",
            KATHMANDU,
            datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
            datetime(2026, 11, 23, 12, 15, tzinfo=UTC),
        ),
        (
            datetime(2026, 11, 23, 12, 7, tzinfo=UTC),
            "3600s",
            KATHMANDU,
            datetime(2026, 11, 23, 11, 15, tzinfo=UTC),
            datetime(2026, 11, 23, 12, 15, tzinfo=UTC),
        ),
        # A whole day as a period: local midnight, as Daily.
        (
            datetime(2026, 11, 23, 12, 7, tzinfo=UTC),
            "86400s",
            BERLIN,
            datetime(2026, 11, 22, 23, 0, tzinfo=UTC),
            datetime(2026, 11, 23, 23, 0, tzinfo=UTC),
        ),
        # DST ends in Berlin at 01:00 UTC on 2026-10-25: 30-minute periods go on every 30
        # minutes of real time across it.
        (
            datetime(2026, 10, 25, 0, 50, tzinfo=UTC),
            "1800s",
            BERLIN,
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
            datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
        ),
        (
            datetime(2026, 10, 25, 1, 10, tzinfo=UTC),
            "1800s",
            BERLIN,
            datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
            datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        ),
    ],
    ids=[
        "15m",
        "15m-on-boundary",
        "5s",
        "15m-kathmandu",
        "1h-kathmandu",
        "1d-berlin",
        "30m-dst-before",
        "30m-dst-after",
    ],
)
def test_fixed_period(
    now: datetime, rotate: str, tz: ZoneInfo, start_utc: datetime, next_utc: datetime
) -> None:
    start = period_start(now, rotate, tz)
    boundary = next_period_boundary(now, rotate, tz)
    assert start is not None and boundary is not None
    assert start.astimezone(UTC) == start_utc and boundary.astimezone(UTC) == next_utc
    assert start <= now < boundary
    assert crossed_period(now, boundary, rotate, tz)
    assert not crossed_period(now, boundary - timedelta(microseconds=1), rotate, tz)


def test_fixed_periods_follow_each_other_for_a_day() -> None:
    """Walking boundary to boundary over a DST change: every step is the period long."""
    for tz in (UTC, BERLIN, KATHMANDU):
        now = datetime(2026, 10, 24, 20, 0, 1, tzinfo=UTC)
        steps = set()
        for _ in range(24 * 4):
            boundary = next_period_boundary(now, "900s", tz)
            assert boundary is not None
            steps.add(boundary.astimezone(UTC) - now.astimezone(UTC))
            now = boundary
        assert steps <= {timedelta(minutes=15), timedelta(minutes=15, seconds=-1)}, (tz, steps)
