"""One manager per directory: `flock` on `<stream dir>/.logvold/lock`, held for the
daemon's life (and by `serve --once`).

Two logvold processes rotating one directory (two daemons, a `--once` next to a running
one) each copy and punch the same bytes: events are lost and duplicated, NULs served.
The lock is taken through `fileio.safedir`: the directory is walked from its safety
root without following symlinks, `.logvold` must be a real directory, and the lock file
a regular, singly linked file (a planted symlink, FIFO or hard link is removed by name
and created anew, never opened). The holder's pid is written into the file so the
refusal can name it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from logvold.core.layout import STATE_DIR_NAME
from logvold.errors import DirectoryLocked as DirectoryLocked
from logvold.fileio.safedir import SafeDir, UnsafeFile

LOCK_NAME = "lock"
_ATTEMPTS = 5

DirId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class HeldLock:
    """An flock held on a directory's lock file (closing `fd` releases it)."""

    fd: int
    ident: DirId
    """(st_dev, st_ino) of the managed directory."""
    directory: Path


def lock_directory(root: Path, directory: Path) -> HeldLock:
    """Take the lock of `directory` (below its safety `root`), without waiting.

    Raises DirectoryLocked naming the holder's pid, UnsafeFile when the directory or
    `.logvold` is not a real directory inside the root, FileNotFoundError when the
    directory does not exist (yet).
    """
    with SafeDir.open_beneath(root, directory) as sd:
        st = os.fstat(sd.fd)
        ident = (st.st_dev, st.st_ino)
        with sd.subdir(STATE_DIR_NAME, create=True) as state_dir:
            fd = _locked_file(state_dir, directory)
    return HeldLock(fd, ident, directory)


def _locked_file(state_dir: SafeDir, directory: Path) -> int:
    """The fd of the lock file, flocked, still the file at its name (a file unlinked
    and recreated by a racing process between our open and our flock is not a lock)."""
    for _ in range(_ATTEMPTS):
        fd = _open_lock_file(state_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            pid = holder if holder.isdigit() else "unknown"
            raise DirectoryLocked(
                f"{directory} is managed by another logvold (pid {pid}); stop it first",
                path=str(directory),
                op="lock directory",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        now = state_dir.lstat(LOCK_NAME)
        mine = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise DirectoryLocked(
        f"{directory}: its lock file keeps being replaced; not managed",
        path=str(directory),
        op="lock directory",
    )


def _open_lock_file(state_dir: SafeDir) -> int:
    """Open the existing lock file, or create it exclusively; a planted non-regular or
    hard-linked one is unlinked (the name, never its target) and created anew."""
    for _ in range(_ATTEMPTS):
        try:
            return state_dir.open_file(LOCK_NAME, os.O_RDWR).fd
        except FileNotFoundError:
            pass
        except UnsafeFile:
            state_dir.unlink(LOCK_NAME)
        try:
            return state_dir.create_exclusive(LOCK_NAME, 0o644, flags=os.O_RDWR, replace=False)
        except FileExistsError:
            continue  # another process created it meanwhile: open theirs
    raise OSError(errno.EAGAIN, f"cannot open {state_dir.path / LOCK_NAME}")


@dataclass
class DirectoryLocks:
    """The locks one daemon holds, one per directory (by identity: two streams or two
    names of one directory share it), released when no owner needs it any more."""

    _held: dict[DirId, HeldLock] = field(default_factory=dict)
    _owners: dict[str, DirId] = field(default_factory=dict)

    def hold(self, owner: str, root: Path, directory: Path) -> None:
        """Make sure `owner` (a stream or a volume) holds its directory's lock; raises
        like `lock_directory`. A directory this daemon already locked is shared."""
        if owner in self._owners:
            return
        with SafeDir.open_beneath(root, directory) as sd:
            st = os.fstat(sd.fd)
        ident = (st.st_dev, st.st_ino)
        if ident not in self._held:
            held = lock_directory(root, directory)
            if held.ident in self._held:  # replaced between the two walks
                os.close(held.fd)
            else:
                self._held[held.ident] = held
            ident = held.ident
        self._owners[owner] = ident

    def holds(self, owner: str) -> bool:
        return owner in self._owners

    def owners(self) -> list[str]:
        return list(self._owners)

    def drop(self, owner: str) -> None:
        """`owner` no longer needs its lock; it is released when nobody else does."""
        ident = self._owners.pop(owner, None)
        if ident is None or ident in self._owners.values():
            return
        held = self._held.pop(ident, None)
        if held is not None:
            os.close(held.fd)

    def release_all(self) -> None:
        for held in self._held.values():
            os.close(held.fd)
        self._held.clear()
        self._owners.clear()

    def __len__(self) -> int:
        return len(self._held)
