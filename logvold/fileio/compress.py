"""Compress a closed segment (gzip or zstd) so that a crash at any instant leaves it readable.

Order: write `<segment>.<ext>.tmp`, fsync it, rename it to `<segment>.<ext>`,
fsync the directory, then unlink the plain file. A crash before the rename
leaves the plain file and a `.tmp` (ignored by readers, removed by the next
attempt); after it, both names hold the same events and
`layout.segments_of` lists the plain one only, so nothing is read twice.

Every name is reached through a SafeDir: the segment is opened with O_NOFOLLOW |
O_NONBLOCK and must be a regular, singly linked file (a symlink, FIFO, socket or
directory planted in its place is refused, never read or waited on), and the temp
file is created with O_EXCL (a symlink planted at `<segment>.gz.tmp` is replaced,
never written through).
"""

from __future__ import annotations

import contextlib
import errno
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from logvold.errors import CompressionInterrupted as CompressionInterrupted
from logvold.errors import StreamError
from logvold.fileio.safedir import SafeDir, plain_name

Algorithm = Literal["gzip", "zstd"]
SUFFIXES: dict[str, str] = {"gzip": ".gz", "zstd": ".zst"}
_BLOCK = 1 << 20


def compress_segment(path: str, algorithm: Algorithm, *, level: int | None = None) -> str | None:
    """`compress_in` for a segment given by path (logvold's own writers, whose directory
    is their own); returns the new path or None when the segment vanished."""
    p = Path(path)
    try:
        d = SafeDir.open_root(p.parent)
    except FileNotFoundError:
        return None
    with d:
        out = compress_in(d, p.name, algorithm, level=level)
    return None if out is None else str(p.parent / out)


def compress_in(
    d: SafeDir,
    filename: str,
    algorithm: Algorithm,
    *,
    level: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> str | None:
    """Replace the closed segment `filename` of directory `d` by its compressed form;
    return the new file name.

    Returns None when the segment vanished first (retention won a race: not an error).
    Keeps the segment's mode and mtime, so age checks that look at the file keep
    meaning the same thing. Raises UnsafeFile for a segment that is not a regular,
    singly linked file; StreamError on I/O failure, after removing its temporary file;
    CompressionInterrupted when `should_stop()` turns true between blocks.
    """
    suffix = SUFFIXES.get(algorithm)
    if suffix is None:
        raise ValueError(f"unknown compression {algorithm!r}: use gzip or zstd")
    final = plain_name(filename + suffix)
    tmp = final + ".tmp"
    where = str(d.path / filename)
    try:
        src = d.open_file(filename)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StreamError(
            f"cannot read segment {where}: {exc.strerror}", path=where, op="compress"
        ) from exc
    try:
        try:
            fd = d.create_exclusive(tmp, 0o600)
            try:
                os.fchmod(fd, src.st.st_mode & 0o777)
                with contextlib.suppress(OSError):
                    os.fchown(fd, src.st.st_uid, src.st.st_gid)
                _compress_fd(src.fd, fd, algorithm, level, src.st, should_stop, where)
                os.fsync(fd)
                os.utime(fd, ns=(src.st.st_atime_ns, src.st.st_mtime_ns))
            finally:
                os.close(fd)
            d.rename(tmp, final)
        finally:
            os.close(src.fd)
        d.fsync()
        d.unlink(filename)
        d.fsync()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            d.unlink(tmp)  # gone already once renamed
        if isinstance(exc, OSError):
            raise StreamError(
                f"cannot compress segment {where} with {algorithm}: "
                f"{exc.strerror or exc}; the plain segment is kept",
                path=where,
                op="compress",
            ) from exc
        raise
    return final


def _compress_fd(
    src: int,
    dst: int,
    algorithm: Algorithm,
    level: int | None,
    st: os.stat_result,
    should_stop: Callable[[], bool] | None,
    where: str,
) -> None:
    """Compress `src` (its first st_size bytes) into `dst` block by block: bounded memory,
    stoppable between blocks. A source that shrank meanwhile is an I/O error."""
    comp: Any
    if algorithm == "gzip":
        comp = zlib.compressobj(level or 6, zlib.DEFLATED, 31)  # 31: gzip header and trailer
    else:
        import zstandard

        comp = zstandard.ZstdCompressor(level=level or 3).compressobj(size=st.st_size)
    offset = 0  # up to the size fstat saw: bounded, and what the zstd header says
    while offset < st.st_size:
        if should_stop is not None and should_stop():
            raise CompressionInterrupted(
                f"compression of {where} abandoned: logvold is stopping; the plain segment "
                "is kept and compressed after the next start",
                path=where,
                op="compress",
            )
        chunk = os.pread(src, min(_BLOCK, st.st_size - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, f"{where} shrank while it was compressed")
        _write_all(dst, comp.compress(chunk))
        offset += len(chunk)
    _write_all(dst, comp.flush())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
