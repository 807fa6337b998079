"""Compress a closed segment (gzip or zstd) so that a crash at any instant leaves it readable.

Order: write `<segment>.<ext>.tmp`, fsync it, rename it to `<segment>.<ext>`,
fsync the directory, then unlink the plain file. A crash before the rename
leaves the plain file and a `.tmp` (ignored by readers, removed by the next
attempt); after it, both names hold the same events and
`layout.segments_of` lists the plain one only, so nothing is read twice.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
from pathlib import Path
from typing import Literal

from logvold.errors import StreamError

Algorithm = Literal["gzip", "zstd"]
SUFFIXES: dict[str, str] = {"gzip": ".gz", "zstd": ".zst"}
_BLOCK = 1 << 20


def compress_segment(path: str, algorithm: Algorithm, *, level: int | None = None) -> str | None:
    """Replace the closed segment `path` by its compressed form; return the new path.

    Returns None when `path` vanished first (retention won a race: not an
    error). Keeps the segment's mode and mtime, so age checks that look at
    the file keep meaning the same thing. Raises StreamError on I/O failure,
    after removing its temporary file.
    """
    suffix = SUFFIXES.get(algorithm)
    if suffix is None:
        raise ValueError(f"unknown compression {algorithm!r}: use gzip or zstd")
    final = path + suffix
    tmp = final + ".tmp"
    seg = Path(path)
    try:
        src = seg.open("rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StreamError(
            f"cannot read segment {path}: {exc.strerror}", path=path, op="compress"
        ) from exc
    try:
        with src:
            st = os.fstat(src.fileno())
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), st.st_mode & 0o777)
                if algorithm == "gzip":
                    with gzip.GzipFile(
                        fileobj=out, mode="wb", compresslevel=level or 6, mtime=int(st.st_mtime)
                    ) as gz:
                        shutil.copyfileobj(src, gz, _BLOCK)
                else:
                    import zstandard

                    cctx = zstandard.ZstdCompressor(level=level or 3)
                    cctx.copy_stream(src, out, size=st.st_size, read_size=_BLOCK)
                out.flush()
                os.fsync(out.fileno())
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            Path(tmp).rename(final)
        _fsync_dir(seg.parent)
        seg.unlink(missing_ok=True)
        _fsync_dir(seg.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise StreamError(
            f"cannot compress segment {path} with {algorithm}: {exc.strerror or exc}; "
            "the plain segment is kept",
            path=path,
            op="compress",
        ) from exc
    return final


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
