"""What a rotation step and a retention pass did: the values the rotator returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class _Run:
    """What one rotation step cut (mutable, private to the step)."""

    started: float
    cuts: list[RotationResult] = field(default_factory=list)
    copied: int = 0
    holes: int = 0
    more: bool = False
    failed: bool = False

    def result(
        self, reason: str, strategy: str, *, collapsed: int = 0, lost: int = 0
    ) -> RotationResult:
        first = self.cuts[0] if self.cuts else None
        last = self.cuts[-1] if self.cuts else None
        return RotationResult(
            reason=reason,
            strategy=strategy,
            segment=last.segment if last else "",
            logical_start=first.logical_start if first else 0,
            logical_end=last.logical_end if last else 0,
            bytes_freed=sum(c.bytes_freed for c in self.cuts),
            collapsed_bytes=collapsed,
            lost_bytes=lost,
            last_write_ns=last.last_write_ns if last else 0,
            cuts=tuple(self.cuts),
            more_work=self.more,
            hole_bytes=self.holes,
        )


@dataclass(frozen=True, kw_only=True)
class RotationResult:
    """One committed rotation."""

    reason: str
    strategy: str
    """The strategy actually applied (punch may fall back to rename)."""
    segment: str
    """File name of the new segment, inside the stream directory."""
    logical_start: int
    logical_end: int
    """Logical bytes [start, end) of the active file now in `segment` (rename: size at rename)."""
    bytes_freed: int = 0
    """Bytes punched out of the active file (block-aligned part of the cut)."""
    collapsed_bytes: int = 0
    """Bytes removed from the active file's head by COLLAPSE_RANGE in this rotation."""
    lost_bytes: int = 0
    """copytruncate only: bytes written after the copy, gone with the truncate."""
    last_write_ns: int = 0
    """The active file's mtime at the cut (0: the segment keeps its own, rename)."""
    cuts: tuple[RotationResult, ...] = ()
    """The pieces of this step, one segment each, oldest first (core/pieces.py); empty for
    rename and for a step that only skipped a hole. `segment`, `logical_start/end` and
    `bytes_freed` above then describe all of them together (the last segment's name)."""
    more_work: bool = False
    """The step stopped at its limits (pieces, bytes, seconds, stop) with backlog left:
    the caller should queue another step."""
    hole_bytes: int = 0
    """Bytes of holes (SEEK_HOLE) skipped at the committed offset: never copied."""


@dataclass(frozen=True, kw_only=True)
class RetentionResult:
    """What enforce_retention did."""

    deleted: tuple[str, ...] = ()
    """Segment file names removed, oldest first."""
    reasons: Mapping[str, str] = field(default_factory=dict)
    """Segment stem -> maxAge | maxFiles | maxTotalSize | budget."""
    dropped_active_bytes: int = 0
    """Bytes of whole events dropped from the active file's head (no segment written)."""
    trimmed_segment: str | None = None
    bytes_freed: int = 0
    compress_pending: tuple[str, ...] = ()
    """Plain segments the plan wants compressed: call compress_pending() from a worker."""
