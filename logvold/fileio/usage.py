"""How much disk a stream uses, from one directory listing: its segments and the
live part of its active file. Feeds budget shares and retention pre-checks.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from logvold.core.layout import segments_of
from logvold.core.retention import SegmentFile
from logvold.errors import LogvoldError
from logvold.fileio.safedir import SafeDir
from logvold.fileio.state import load_state_in

_SEGMENT_RE = re.compile(r"^(.+)\.\d{8}-\d{6}(?:\.\d{4,})?(?:\.(?:gz|zst))?$")


def group_segment_names(names: Iterable[str]) -> dict[str, list[str]]:
    """Segment-looking names of one directory listing by the active file they belong to,
    so N streams in one directory cost one pass over the listing, not N."""
    groups: dict[str, list[str]] = {}
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            groups.setdefault(m.group(1), []).append(name)
    return groups


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """A stream's closed segments (oldest first) and its active file's live bytes."""

    segments: tuple[SegmentFile, ...]
    active_live_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(s.size_bytes for s in self.segments) + self.active_live_bytes


def stream_usage(d: SafeDir, base: str, names: list[str] | None = None) -> StreamUsage:
    """Usage of stream `base` in stream directory `d`; `names`: the directory listing (or
    just the stream's names from `group_segment_names`) to reuse.

    Vanished files count as 0 (a race with retention, not an error); a symlink
    or directory in place of the active file or a segment counts as no data.
    """
    if names is None:
        names = d.names()
    segments: list[SegmentFile] = []
    for seg in segments_of(base, names):
        st = d.lstat(seg.filename)
        if st is not None and stat.S_ISREG(st.st_mode):
            segments.append(SegmentFile(seg, st.st_size))
    live = 0
    active = d.lstat(base)
    if active is not None and stat.S_ISREG(active.st_mode):
        st = active
        live = st.st_size
        try:
            state = load_state_in(d, base)
        except LogvoldError:  # corrupt, refused, or `.logvold` not a directory
            state = None
        if state is not None and (state.device, state.inode) == (st.st_dev, st.st_ino):
            live = max(0, st.st_size - state.physical_committed)
    return StreamUsage(tuple(segments), live)
