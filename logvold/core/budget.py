"""Byte budgets over many streams (per volume, per node): how many bytes each
stream may keep so that, across streams, the oldest data goes first.

Pure: given per-stream usage pieces and a budget, return each stream's share,
which the rotator applies through `plan_retention(extra_budget_bytes=share)`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class UsagePiece(Generic[K]):
    """One piece of a stream's disk use: a closed segment or the live active data."""

    stream: K
    newest: datetime
    """Time of the newest event in the piece: a segment's close stamp; now for active data."""
    size_bytes: int


def budget_shares(pieces: Iterable[UsagePiece[K]], budget_bytes: int) -> dict[K, int]:
    """Bytes each stream may keep under `budget_bytes`, newest pieces first.

    Walking from the newest piece to the oldest, pieces are kept while they
    fit; the first that does not fit keeps what is left of the budget (its
    head is trimmed) and everything older is dropped. A stream absent from
    the result has no pieces; a share of 0 means it keeps nothing.
    `budget_bytes <= 0` means no budget: every stream keeps all it has.
    """
    ordered = sorted(pieces, key=lambda p: p.newest, reverse=True)
    shares: dict[K, int] = {}
    for piece in ordered:
        shares.setdefault(piece.stream, 0)
    if budget_bytes <= 0:
        for piece in ordered:
            shares[piece.stream] += piece.size_bytes
        return shares
    left = budget_bytes
    for piece in ordered:
        take = min(left, piece.size_bytes)
        shares[piece.stream] += take
        left -= take
        if left <= 0:
            break
    return shares


def combine_shares(*shares: Mapping[K, int]) -> dict[K, int]:
    """The tightest of several share maps (a stream missing from one is unconstrained by it)."""
    out: dict[K, int] = {}
    for mapping in shares:
        for key, value in mapping.items():
            out[key] = min(out.get(key, value), value)
    return out


def clip_to_shares(pieces: Iterable[UsagePiece[K]], shares: Mapping[K, int]) -> list[UsagePiece[K]]:
    """The pieces that remain once each stream keeps only its share (newest first),
    so a node budget is computed over what the volume budgets already keep."""
    left = dict(shares)
    out: list[UsagePiece[K]] = []
    for piece in sorted(pieces, key=lambda p: p.newest, reverse=True):
        room = left.get(piece.stream, piece.size_bytes)
        take = min(room, piece.size_bytes)
        if take > 0:
            out.append(UsagePiece(piece.stream, piece.newest, take))
        if piece.stream in left:
            left[piece.stream] = room - take
    return out
