"""The one door to files inside a logging volume: a pinned directory fd, every path
component opened with O_NOFOLLOW, and only regular, singly linked files handed out.

logvold runs as root among files an untrusted pod controls. Opening by path lets a
symlink, a hard link, a FIFO or a swapped directory steer root to any file on the
node. Here a directory is reached by walking its components from a pinned root fd
(`..`, `.` and symlinks refused at each step), and a file is opened relative to that
fd, then checked with fstat: whatever the pod swaps after the walk, the fds we hold
still name what we checked. No other module opens, renames or unlinks a volume path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING

from logvold.errors import RefusalKind as RefusalKind
from logvold.errors import UnsafeFile as UnsafeFile

if TYPE_CHECKING:
    from logvold.core.streams import StreamInfo

#: Flags for every file open inside a volume: never follow a planted symlink, never
#: block on a planted FIFO, never leak the fd into a child.
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A subDir deeper than this is refused: the walk is a loop over pod-controlled names.
MAX_DEPTH = 32
#: Default cap on the names one listing returns (a pod can create millions).
MAX_NAMES = 100_000


def plain_name(name: str) -> str:
    """`name` if it names an entry directly inside a directory, else UnsafeFile."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafeFile(f"{name!r} is not a plain file name", kind="outside", path=name)
    return name


def relative_parts(root: Path, directory: Path) -> tuple[str, ...]:
    """Components of `directory` below `root`, compared lexically (no resolving: the walk
    refuses symlinks itself). Raises UnsafeFile for a directory that is not below root."""
    try:
        rel = PurePosixPath(directory).relative_to(PurePosixPath(root))
    except ValueError as e:
        raise UnsafeFile(
            f"{directory} is not inside its volume {root}; not touched",
            kind="outside",
            path=str(directory),
        ) from e
    parts = tuple(p for p in rel.parts if p != ".")
    if any(p == ".." for p in parts):
        raise UnsafeFile(
            f"{directory} leaves its volume {root} through '..'; not touched",
            kind="outside",
            path=str(directory),
        )
    if len(parts) > MAX_DEPTH:
        raise UnsafeFile(
            f"{directory} is more than {MAX_DEPTH} levels below {root}",
            kind="too-many",
            path=str(directory),
        )
    return parts


@dataclass(frozen=True, slots=True)
class OpenedFile:
    """An fd of a regular file and the fstat taken through it (the truth, not the name)."""

    fd: int
    st: os.stat_result


class SafeDir:
    """An open directory fd inside a volume; all operations are relative to it.

    `path` is for messages only: it is never used to open anything.
    """

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    # -- opening directories -------------------------------------------------------------

    @classmethod
    def open_root(cls, root: Path) -> SafeDir:
        """Pin a volume root given by the operator (config, kubelet layout). Symlinks in
        the operator's own path are theirs to choose, so this one open follows them."""
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError as e:
            raise UnsafeFile(
                f"volume {root} is not a directory", kind="not-directory", path=str(root)
            ) from e
        return cls(fd, Path(root))

    @classmethod
    def open_beneath(cls, root: Path, directory: Path, *, create: bool = False) -> SafeDir:
        """Open `directory`, which must lie lexically below `root`, one component at a
        time with O_NOFOLLOW: a symlinked subDir (or any component swapped for one) is
        refused instead of followed out of the volume. `create` makes missing components."""
        parts = relative_parts(root, directory)
        current = cls.open_root(root)
        try:
            for part in parts:
                nxt = current.subdir(part, create=create)
                current.close()
                current = nxt
        except BaseException:
            current.close()
            raise
        current.path = Path(directory)
        return current

    def subdir(self, name: str, *, create: bool = False, mode: int = 0o755) -> SafeDir:
        """The directory `name` inside this one (created first when `create`), never
        through a symlink."""
        plain_name(name)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=self.fd)
        where = self.path / name
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = self.lstat(name)  # O_DIRECTORY | O_NOFOLLOW says ENOTDIR for a symlink too
            if e.errno == errno.ELOOP or (st is not None and stat.S_ISLNK(st.st_mode)):
                raise UnsafeFile(
                    f"{where} is a symlink; not followed", kind="symlink", path=str(where)
                ) from e
            raise UnsafeFile(
                f"{where} is not a directory; not touched", kind="not-directory", path=str(where)
            ) from e
        return SafeDir(fd, where)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- looking ---------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        """lstat of `name` here, None if it is missing."""
        try:
            return os.stat(plain_name(name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self, limit: int = MAX_NAMES) -> list[str]:
        """Entry names (no `.`/`..`), at most `limit`: UnsafeFile(too-many) beyond it, so a
        pod that creates a million files costs one bounded listing, not a million stats."""
        out: list[str] = []
        with os.scandir(self.fd) as entries:
            for entry in entries:
                if len(out) >= limit:
                    raise UnsafeFile(
                        f"{self.path} holds more than {limit} entries; not listed",
                        kind="too-many",
                        path=str(self.path),
                    )
                out.append(entry.name)
        return out

    def iter_names(self) -> Iterator[str]:
        """Entry names, lazily (callers bound the loop themselves)."""
        with os.scandir(self.fd) as entries:
            for entry in entries:
                yield entry.name

    # -- opening files ---------------------------------------------------------------------

    def open_file(
        self, name: str, flags: int = os.O_RDONLY, *, allow_links: bool = False
    ) -> OpenedFile:
        """Open an existing regular file with O_NOFOLLOW | O_NONBLOCK and check it.

        Refused (UnsafeFile): a symlink, anything not a regular file (checked with lstat
        before the open, so a FIFO or device is never opened for writing, and with fstat
        after it, so a swap in between is caught), and a file with more than one link
        (a hard link to a file outside the volume would be punched, served or trimmed
        there too) unless `allow_links`. FileNotFoundError passes through: a vanished
        file is a race, not an attack.
        """
        where = self.path / plain_name(name)
        st = self.lstat(name)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(where))
        _check_regular(st, where, allow_links)
        try:
            fd = os.open(name, flags | FILE_FLAGS, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeFile(
                    f"{where} is a symlink; not followed", kind="symlink", path=str(where)
                ) from e
            if e.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV):
                raise UnsafeFile(
                    f"{where} is not a regular file; not touched",
                    kind="not-regular",
                    path=str(where),
                ) from e
            raise
        try:
            fst = os.fstat(fd)
            _check_regular(fst, where, allow_links)
        except BaseException:
            os.close(fd)
            raise
        return OpenedFile(fd, fst)

    def create_exclusive(
        self, name: str, mode: int = 0o600, *, flags: int = os.O_WRONLY, replace: bool = True
    ) -> int:
        """Create `name` anew (O_CREAT | O_EXCL | O_NOFOLLOW): never opens what is there.

        A leftover of that name (a crashed step's temp file, or a symlink a pod planted to
        make root write through it) is unlinked (unlink removes a symlink itself, never its
        target) and the create tried once more; with `replace=False` FileExistsError is
        raised instead (the active file a writer recreated first must be kept).
        """
        plain_name(name)
        for attempt in (1, 2):
            try:
                return os.open(
                    name, flags | os.O_CREAT | os.O_EXCL | FILE_FLAGS, mode, dir_fd=self.fd
                )
            except FileExistsError:
                if attempt == 2 or not replace:
                    raise
                try:
                    self.unlink(name)
                except IsADirectoryError as e:
                    raise UnsafeFile(
                        f"{self.path / name} is a directory; cannot create a file there",
                        kind="not-regular",
                        path=str(self.path / name),
                    ) from e
        raise AssertionError("unreachable")

    def anonymous_file(self, mode: int = 0o600) -> int:
        """An O_RDWR fd of a new file in this directory that has no name (O_TMPFILE), so a
        kill -9 leaves nothing behind; without O_TMPFILE, an exclusively created name
        removed at once (a planted symlink there is replaced, never written through)."""
        try:
            return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
        name = f".logvold-probe.{os.getpid()}.tmp"
        fd = self.create_exclusive(name, mode, flags=os.O_RDWR)
        self.unlink(name)
        return fd

    def read_capped(self, name: str, cap_bytes: int) -> bytes:
        """The whole content of a small regular file (state files): more than `cap_bytes`
        is UnsafeFile(too-big), checked from fstat before anything is read, so a sparse
        3 GiB state file costs nothing."""
        opened = self.open_file(name)
        try:
            if opened.st.st_size > cap_bytes:
                raise UnsafeFile(
                    f"{self.path / name} is {opened.st.st_size} bytes, more than "
                    f"the {cap_bytes} a valid one can hold",
                    kind="too-big",
                    path=str(self.path / name),
                )
            data = os.pread(opened.fd, cap_bytes + 1, 0)
        finally:
            os.close(opened.fd)
        if len(data) > cap_bytes:
            raise UnsafeFile(
                f"{self.path / name} grew past {cap_bytes} bytes while read",
                kind="too-big",
                path=str(self.path / name),
            )
        return data

    def write_atomically(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Replace `name` by `data`: exclusive temp file, fsync, rename, directory fsync;
        a crash at any instant leaves the old or the new content, never a torn one."""
        tmp = f"{plain_name(name)}.tmp"
        fd = self.create_exclusive(tmp, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.unlink(tmp)
            raise
        os.close(fd)
        try:
            self.rename(tmp, name)
        except BaseException:
            self.unlink(tmp)
            raise
        self.fsync()

    # -- changing entries ------------------------------------------------------------------

    def rename(self, src: str, dst: str) -> None:
        """rename(2) within this directory (names only: a planted symlink at `dst` is
        replaced, never written through)."""
        os.rename(plain_name(src), plain_name(dst), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> bool:
        """Remove `name` (a symlink itself, never its target); False if it was gone."""
        try:
            os.unlink(plain_name(name), dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def fsync(self) -> None:
        """Make renames and unlinks in this directory durable."""
        os.fsync(self.fd)


def _check_regular(st: os.stat_result, where: Path, allow_links: bool) -> None:
    """Refuse what a pod could use to steer us outside its volume.

    0 links is a file renamed over or removed while we looked it up or after our open (the
    rotator replaces its state file by an atomic rename while readers open it): its bytes
    are what the name held a moment ago, and a file with no name links nowhere. Only more
    than one link is an attack."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFile(f"{where} is a symlink; not followed", kind="symlink", path=str(where))
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(
            f"{where} is not a regular file (mode {stat.filemode(st.st_mode)}); not touched",
            kind="not-regular",
            path=str(where),
        )
    if not allow_links and st.st_nlink > 1:
        raise UnsafeFile(
            f"{where} has {st.st_nlink} hard links; not touched (a link to a "
            "file elsewhere would be changed or served too)",
            kind="hardlink",
            path=str(where),
        )


def stream_root(info: StreamInfo) -> Path:
    """The safety root of a stream: its volume directory (the pod's own emptyDir for
    discovered streams, the configured path for static ones), else its own directory."""
    return info.root if info.root is not None else info.directory


def open_stream_dir(info: StreamInfo, *, create: bool = False) -> SafeDir:
    """The stream's directory, reached from its volume root without following symlinks.

    `create` makes missing components (the writer's own directory, e.g. for `driver`).
    FileNotFoundError when a component is missing and not created.
    """
    return SafeDir.open_beneath(stream_root(info), info.directory, create=create)
