"""Where the data of a sparse active file is: holes (SEEK_DATA/SEEK_HOLE) are never read."""

from __future__ import annotations

import errno
import os


def _punched_head(fd: int, st: os.stat_result) -> bool:
    """Whether the file's head was punched (a leading hole) or zeroed (a clean stop)."""
    if st.st_size == 0:
        return False
    try:
        if os.lseek(fd, 0, os.SEEK_DATA) > 0:
            return True
    except OSError as e:
        if e.errno == errno.ENXIO:
            return True  # all hole
        raise
    return os.pread(fd, 1, 0) == b"\0"


def _data_extent(fd: int, pos: int, size: int) -> tuple[int, int]:
    """(first data offset >= pos, first hole offset after it), both capped at `size`, from
    SEEK_DATA/SEEK_HOLE: a sparse file's holes are skipped, never read as zeroes. Where
    the filesystem cannot tell, everything is data."""
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return size, size  # only a hole up to the end
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return pos, size
        raise
    if data >= size:
        return size, size
    try:
        hole = os.lseek(fd, data, os.SEEK_HOLE)
    except OSError as e:
        if e.errno not in (errno.ENXIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        hole = size
    return data, min(hole, size)


def _past_zeros(fd: int, data: int, end: int, block: int) -> int:
    """The first non-NUL byte in [data, data + block) (SEEK_DATA answers in blocks: the
    block after a hole starts with the zeroes up to the writer's first byte)."""
    head = os.pread(fd, min(block, end - data), data)
    return data + len(head) - len(head.lstrip(b"\0"))


def _before_zeros(fd: int, start: int, hole: int, block: int) -> int:
    """The end of the last non-NUL byte in [hole - block, hole): the partial block before
    a hole (a `truncate` past the end) holds zeroes after the last written byte."""
    lo = max(start, hole - block)
    tail = os.pread(fd, hole - lo, lo)
    return lo + len(tail.rstrip(b"\0"))


def _live_extent(fd: int, p: int, size: int, block: int) -> tuple[int, int]:
    """`_data_extent` with the zeroes of the partial blocks around a hole counted as hole:
    (data, hole) with data > p when [p, data) is to be skipped, else [p, hole) is data and
    a hole (hole < size) or the end of the file follows."""
    data, hole = _data_extent(fd, p, size)
    if data == p and hole < size:
        end = _before_zeros(fd, p, hole, block)
        if end > p:
            return p, end
        data, hole = _data_extent(fd, hole, size)  # only zeroes up to the hole
    if data > p:
        data = _past_zeros(fd, data, hole, block)
    return data, hole
