"""File primitives of one stream directory for the rotator: segment listing (through
the SafeDir of `fileio.safedir`, the only door to volume files), in-kernel copies,
PUNCH_HOLE and COLLAPSE_RANGE via libc, and the scan of /proc for the active file's writers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from logvold.core.layout import SegmentName, parse_segment_name, segments_of
from logvold.fileio.safedir import RefusalKind, SafeDir, UnsafeFile

#: linux/falloc.h; Python's os.posix_fallocate cannot pass modes.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
_COPY_CHUNK = 8 * 2**20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode; raises OSError with the errno on failure."""
    while _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free [offset, offset+length) in place; the size and every other offset stay."""
    if length > 0:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def collapse_range(fd: int, offset: int, length: int) -> None:
    """Remove [offset, offset+length) and shift the rest down (block-aligned, before EOF)."""
    if length > 0:
        fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, offset, length)


def align_down(value: int, block: int) -> int:
    return value - value % block


def allocated_bytes(st: os.stat_result) -> int:
    """Bytes the file really occupies on disk (holes excluded)."""
    return st.st_blocks * 512


@dataclass(frozen=True, slots=True)
class SegmentEntry:
    """A segment file of a stream as found on disk."""

    name: SegmentName
    size_bytes: int
    allocated_bytes: int


def list_segments(
    d: SafeDir, base: str, *, on_refused: Callable[[UnsafeFile], None] | None = None
) -> list[SegmentEntry]:
    """Regular-file segments of `base`, oldest first. A symlink, FIFO, socket or directory
    under a segment name is left out (and reported to `on_refused`) before plain and
    compressed names are paired, so a symlink planted at a compressed segment's plain
    name neither hides the segment nor is read. The listing is bounded (`SafeDir.names`)."""
    stats: dict[str, os.stat_result] = {}
    for filename in d.names():
        if parse_segment_name(base, filename) is None:
            continue
        st = d.lstat(filename)
        if st is None:
            continue
        if stat.S_ISREG(st.st_mode):
            stats[filename] = st
        elif on_refused is not None:
            kind: RefusalKind = "symlink" if stat.S_ISLNK(st.st_mode) else "not-regular"
            on_refused(
                UnsafeFile(
                    f"{d.path / filename} is not a regular file "
                    f"({stat.filemode(st.st_mode)}); not a segment",
                    kind=kind,
                    path=str(d.path / filename),
                )
            )
    return [
        SegmentEntry(name, stats[name.filename].st_size, allocated_bytes(stats[name.filename]))
        for name in segments_of(base, stats)
    ]


def copy_range(
    src_fd: int,
    dst_fd: int,
    offset: int,
    length: int,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Copy [offset, offset+length) of src to the current end of dst, in the kernel.

    Memory stays bounded; falls back to pread/write where copy_file_range is refused.
    `should_stop` is polled between chunks: True raises OSError(EINTR) (the caller
    removes its temp file, nothing was committed).
    """
    done = 0
    use_cfr = True
    while done < length:
        if should_stop is not None and should_stop():
            raise OSError(errno.EINTR, "copy abandoned: logvold is stopping")
        want = min(_COPY_CHUNK, length - done)
        if use_cfr:
            try:
                n = os.copy_file_range(src_fd, dst_fd, want, offset + done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
                continue
        else:
            data = os.pread(src_fd, min(want, 2**20), offset + done)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst_fd, view) :]
        if n == 0:
            raise OSError(errno.EIO, f"source ended early: {length - done} bytes missing")
        done += n


@dataclass(frozen=True, slots=True)
class WriterFd:
    """An open file descriptor of another process that can write the active file."""

    pid: int
    fd: int
    append: bool


def open_writers(device: int, inode: int, *, proc: Path = Path("/proc")) -> list[WriterFd]:
    """Every fd (of other processes) open for writing on (device, inode), with O_APPEND or not.

    Processes we cannot inspect (another user without CAP_SYS_PTRACE, vanished)
    are skipped; callers treat "no writer found" as "unknown".
    """
    me = str(os.getpid())
    found = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or pid_dir.name == me:
            continue
        try:
            links = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for link in links:
            try:
                if not str(link.readlink()).startswith("/"):
                    continue  # socket:, pipe:, anon_inode:
                st = link.stat()  # the magic link reaches the file in any mount namespace
                if (st.st_dev, st.st_ino) != (device, inode):
                    continue
                flags = _fdinfo_flags(pid_dir / "fdinfo" / link.name)
            except OSError:
                continue
            if flags is not None and flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                found.append(WriterFd(int(pid_dir.name), int(link.name), bool(flags & os.O_APPEND)))
    return found


def _fdinfo_flags(path: Path) -> int | None:
    for line in path.read_text(encoding="ascii").splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    return None


def punch_supported(d: SafeDir) -> bool:
    """Whether PUNCH_HOLE works on the filesystem of directory `d` (tried on a temp file).

    Raises OSError when the probe itself cannot run (ENOSPC, EROFS, EACCES): that says
    nothing about the filesystem, so the caller retries later instead of deciding.
    """
    fd = d.anonymous_file()
    try:
        block = max(os.fstat(fd).st_blksize, 4096)
        os.write(fd, b"x" * 2 * block)
        try:
            punch_hole(fd, 0, block)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise
        return os.pread(fd, 1, 0) == b"\0" and os.fstat(fd).st_size == 2 * block
    finally:
        os.close(fd)
