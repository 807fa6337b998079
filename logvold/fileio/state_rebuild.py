"""Rebuild a lost or corrupt stream state from the files themselves, never duplicating:
the first data after the punched hole is matched against the newest segment's tail."""

from __future__ import annotations

import os
import zlib
from typing import Any

from logvold.core.layout import SegmentName
from logvold.fileio import stream_files as sf
from logvold.fileio.safedir import SafeDir
from logvold.fileio.state import StreamState

#: Bytes compared. The committed offset lies in the first block after the hole unless a crash
#: hit between commit and punch, and then it is at most one rotation further.
REBUILD_WINDOW = 4 * 2**20
_READ_CHUNK = 2**20
#: A compressed segment is decompressed (to find its tail) up to this many bytes: a planted
#: decompression bomb costs bounded CPU; a segment that big yields no match (no duplicate,
#: the partial event after the hole is skipped as without segments).
MAX_TAIL_DECOMPRESSED = 4 * 2**30


def rebuild_state(
    d: SafeDir, fd: int, st: os.stat_result, base: str, fmt: str, delimiter: bytes
) -> StreamState:
    """The committed offset of active file `fd` (in directory `d`) whose state is lost.

    Candidates are the first data byte D (SEEK_DATA, then past NUL bytes: a clean stop
    zeroes the committed part of the block the punch kept) and every event end within
    REBUILD_WINDOW after it; the answer is the largest candidate C such that the
    bytes [D, C) are the end of the newest segment, i.e. already committed. With
    no segment to compare, the partial event after a hole is skipped. Logical
    offsets restart at physical ones (collapsed_bytes 0).
    """
    try:
        first_data = os.lseek(fd, 0, os.SEEK_DATA)
    except OSError:
        first_data = st.st_size
    window = os.pread(fd, min(REBUILD_WINDOW, st.st_size - first_data), first_data)
    nuls = len(window) - len(window.lstrip(b"\0"))
    # After a hole, SEEK_DATA lands inside an event (its head punched) unless NULs lead up to
    # the data: those are a zeroed committed tail, which ends exactly at an event boundary.
    mid_event = first_data > 0 and nuls == 0
    first_data, window = first_data + nuls, window[nuls:]
    segs = sf.list_segments(d, base)
    tail = segment_tail(d, segs[-1].name, len(window)) if segs else b""
    marker = b"\n" if fmt != "raw" else delimiter
    candidates = [0]
    i = window.find(marker)
    while i >= 0:
        candidates.append(i + len(marker))
        i = window.find(marker, i + 1)
    best = None
    for c in reversed(candidates):
        if c <= len(tail) and (c == 0 or tail.endswith(window[:c])):
            best = c
            break
    if best is None or (best == 0 and mid_event and not segs):
        best = candidates[1] if mid_event and len(candidates) > 1 else 0
    return StreamState(device=st.st_dev, inode=st.st_ino, committed_offset=first_data + best)


def segment_tail(d: SafeDir, name: SegmentName, size: int) -> bytes:
    """The last `size` bytes of a segment, decompressing with bounded memory and work;
    b"" when the segment is not a regular, singly linked file or decompresses too big."""
    opened = d.open_file(name.filename)
    fd = opened.fd
    try:
        if not name.compression:
            end = opened.st.st_size
            return os.pread(fd, min(size, end), max(end - size, 0))
        if name.compression == "gz":
            dec: Any = zlib.decompressobj(wbits=47)
        else:
            import zstandard

            dec = zstandard.ZstdDecompressor().decompressobj()
        tail = b""
        total = 0
        while chunk := os.read(fd, _READ_CHUNK):
            out = dec.decompress(chunk)
            total += len(out)
            if total > MAX_TAIL_DECOMPRESSED:
                return b""
            tail = (tail + out)[-size:]
        return tail
    finally:
        os.close(fd)
