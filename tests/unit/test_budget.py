"""Byte budgets across streams: the oldest pieces go first, whatever stream they are in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from logvold.core.budget import UsagePiece, budget_shares, clip_to_shares, combine_shares

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def piece(stream: str, minutes_ago: int, size: int) -> UsagePiece[str]:
    return UsagePiece(stream, T0 - timedelta(minutes=minutes_ago), size)


PIECES = [
    piece("a", 30, 100),
    piece("a", 20, 100),
    piece("a", 0, 50),  # a: 250
    piece("b", 25, 100),
    piece("b", 10, 100),
    piece("b", 0, 10),  # b: 210
]


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (0, {"a": 250, "b": 210}),  # no budget: everything stays
        (1000, {"a": 250, "b": 210}),  # fits
        (160, {"a": 50, "b": 110}),  # newest: a/0 50, b/0 10, b/10 100
        (200, {"a": 90, "b": 110}),  # then a/20 (newer than b/25) keeps 40 of its 100
        (300, {"a": 150, "b": 150}),  # a/20 whole, b/25 keeps 40; a/30 (oldest) dropped
        (10, {"a": 10, "b": 0}),  # part of the newest piece only
    ],
    ids=["none", "fits", "exact", "partial-a", "partial-b", "tiny"],
)
def test_budget_shares_keep_newest_first(budget: int, expected: dict[str, int]) -> None:
    shares = budget_shares(PIECES, budget)
    assert shares == expected
    kept = clip_to_shares(PIECES, shares)
    assert sum(p.size_bytes for p in kept) == sum(expected.values())


def test_node_budget_over_volume_shares() -> None:
    volume = budget_shares(PIECES, 160)  # a 50, b 110
    node = budget_shares(clip_to_shares(PIECES, volume), 100)
    assert node == {"a": 50, "b": 50}
    assert combine_shares(volume, node) == {"a": 50, "b": 50}
    assert combine_shares({"a": 5}, {"b": 7}) == {"a": 5, "b": 7}
