"""On-disk names of a stream: the active file, its segments and its state file.

Segments are `<name>.log.<YYYYMMDD-HHMMSS>.<NNNN>[.gz|.zst]` in UTC. Every
new name carries its sequence number (the first rotation of a second is
`.0001`), zero-padded to four digits, so that plain lexical order (`ls`) is
time order even when some segments are compressed, and a second, third ...
rotation within one second never collides with the first. Names written by
older versions without the number (`<stamp>[.gz|.zst]`) are still read: they
are sequence 0, before any numbered segment of the same second.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Compression = Literal["", "gz", "zst"]
COMPRESSION_SUFFIXES: dict[str, Compression] = {"gz": "gz", "zst": "zst"}

#: Hidden directory beside the active files that holds per-stream state files.
STATE_DIR_NAME = ".logvold"
_STAMP_FORMAT = "%Y%m%d-%H%M%S"
_SEQ_WIDTH = 4
#: Sequence number of the first segment of a second (0 is an old name without a number).
FIRST_SEQ = 1
_SEGMENT_SUFFIX_RE = re.compile(r"^\.(\d{8}-\d{6})(?:\.(\d{4,}))?(?:\.(gz|zst))?$")


@dataclass(frozen=True, slots=True, order=True)
class SegmentName:
    """A parsed segment file name. Orders by (stamp, seq): the stream's time order."""

    stamp: datetime
    """UTC second in which the segment was closed."""
    seq: int
    """1 for the first rotation in that second, then 2, 3, ...; 0 only for a name of an
    older version without the number (read, never written)."""
    base: str
    """The active file's name, e.g. `app.log`."""
    compression: Compression = ""
    """`gz`, `zst` or "" (plain)."""

    @property
    def stem(self) -> str:
        """The name without the compression suffix: stable across compression."""
        name = f"{self.base}.{_stamp_text(self.stamp)}"
        if self.seq:
            name += f".{self.seq:0{_SEQ_WIDTH}d}"
        return name

    @property
    def filename(self) -> str:
        return f"{self.stem}.{self.compression}" if self.compression else self.stem

    def with_compression(self, compression: Compression) -> SegmentName:
        return SegmentName(stamp=self.stamp, seq=self.seq, base=self.base, compression=compression)


@functools.lru_cache(maxsize=64)
def _stamp_text(stamp: datetime) -> str:
    """`YYYYmmdd-HHMMSS`: strftime once per second, not per name (a writer cutting
    100 KiB segments names thousands in a second)."""
    return stamp.strftime(_STAMP_FORMAT)


def parse_segment_name(base: str, filename: str) -> SegmentName | None:
    """The SegmentName of `filename` if it is a segment of active file `base`, else None.

    Temporary files (`*.tmp`) and names of other streams return None, so a
    directory listing can be filtered with this alone.
    """
    if not filename.startswith(base + "."):
        return None
    m = _SEGMENT_SUFFIX_RE.match(filename[len(base) :])
    if not m:
        return None
    try:
        stamp = datetime.strptime(m.group(1), _STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    seq = int(m.group(2)) if m.group(2) else 0
    if m.group(2) and seq == 0:
        return None  # `.0000` is never written: seq 0 is an old name without a number
    compression = COMPRESSION_SUFFIXES.get(m.group(3) or "", "")
    return SegmentName(stamp=stamp, seq=seq, base=base, compression=compression)


def segments_of(base: str, filenames: Iterable[str]) -> list[SegmentName]:
    """The segments of `base` among `filenames`, oldest first.

    A segment present both plain and compressed (a crash during compression)
    is listed once, as the plain file: that one is known to be complete.
    """
    by_stem: dict[str, SegmentName] = {}
    for filename in filenames:
        seg = parse_segment_name(base, filename)
        if seg is None:
            continue
        known = by_stem.get(seg.stem)
        if known is None or seg.compression == "":
            by_stem[seg.stem] = seg
    return sorted(by_stem.values())


def next_segment_name(base: str, now: datetime, existing: Iterable[SegmentName]) -> SegmentName:
    """The name for a segment closed at `now` that sorts after every existing one.

    If the clock stepped backwards, the new segment reuses the newest existing
    second with the next sequence number, so order is still time-of-rotation order.
    """
    stamp = now.astimezone(UTC).replace(microsecond=0)
    newest: SegmentName | None = max(existing, default=None)
    if newest is not None and newest.stamp >= stamp:
        return SegmentName(stamp=newest.stamp, seq=newest.seq + 1, base=base)
    return SegmentName(stamp=stamp, seq=FIRST_SEQ, base=base)


def state_file_name(base: str) -> str:
    """Name (inside STATE_DIR_NAME) of the state file of active file `base`."""
    return f"{base}.state.json"
