"""What a rotation cut, for a foreign writer's stream: how many bytes and whole events
the new segment holds (and how many events maxEventSize split), and its time bounds.

logvold does not see a foreign writer's writes; it sees their bytes when it cuts them
into a segment, so `logvold_bytes_written_total`, `logvold_events_written_total` and
`logvold_events_split_total` move at each rotation, by what the segment holds. The
count re-reads the just-written segment (hot in the page cache) through the same framer
the cut used, in bounded chunks, on the rotator's worker thread.

The segment's mtime is set to the active file's mtime at the cut (its last write), so
the file itself carries that bound through compression (which keeps mtimes) and after
its state record is gone: `sinceTime` on raw streams skips segments by it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from logvold.core.framing import make_framer
from logvold.core.policy import LogPolicy
from logvold.fileio.safedir import SafeDir, UnsafeFile

_CHUNK = 2**20


@dataclass(frozen=True)
class SegmentCount:
    """Bytes, whole events and maxEventSize splits in one segment."""

    nbytes: int
    events: int
    split: int


def count_segment(d: SafeDir, filename: str, nbytes: int, policy: LogPolicy) -> SegmentCount:
    """Frame the first `nbytes` of `filename` (a plain segment in directory `dfd`).

    The segment starts at an event boundary (a cut always does); a trailing incomplete
    event (rename takes everything) is not counted. A vanished file counts nothing.
    """
    framer = make_framer(policy.format, policy.delimiter, policy.max_event_size_bytes)
    events = 0
    try:
        fd = d.open_file(filename).fd
    except (OSError, UnsafeFile):
        return SegmentCount(nbytes, 0, 0)
    try:
        pos = 0
        while pos < nbytes:
            chunk = os.pread(fd, min(_CHUNK, nbytes - pos), pos)
            if not chunk:
                break
            events += len(framer.feed(chunk))
            pos += len(chunk)
    finally:
        os.close(fd)
    return SegmentCount(nbytes, events, framer.split_count)


def stamp_last_write(d: SafeDir, filename: str, last_write_ns: int) -> None:
    """Give a copied segment the active file's mtime at the cut (best effort), through an
    fd of the checked file (never a name a pod could have swapped for a symlink)."""
    if last_write_ns <= 0:
        return
    with contextlib.suppress(OSError, UnsafeFile):
        fd = d.open_file(filename).fd
        try:
            os.utime(fd, ns=(last_write_ns, last_write_ns))
        finally:
            os.close(fd)
