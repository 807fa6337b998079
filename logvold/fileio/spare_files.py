"""Next active files for the rotating writer, made ahead on their own thread.

Creating a file can cost the inode allocator far more than writing a segment's
worth of bytes when segments are small: 0.03-0.05 ms on a quiet ext4, 0.25-2 ms
when many inodes were freed in the last 30 s (ext4 without a journal skips each of
them, one inode-table lookup apiece). Where it is that slow, a rotation should not
create its file: it takes one of a few made ahead by the `logvold-spares` thread
and gives it the active name - a link of an anonymous O_TMPFILE inode (nothing left
on disk by a crash), or a rename of a hidden `.<name>.next<k>` file where O_TMPFILE
is not supported.

The writer starts the thread only after creating the file at the cut itself proved
slow (rotating_writer._open_fresh): where creation is cheap, one open(2) at the cut
costs less CPU than a thread's wake-up, O_TMPFILE and linkat (measured: 36 against
44 us per rotation alone; `logvold run` at 100Ki, 1,309 rotations: 3 futex calls
instead of ~4,500 and 0.27 CPU s instead of 0.34-0.43, the child's included). A rotation
that finds none ready makes its own (waiting for the thread was slower when
creation is the bottleneck - two creations run in parallel), and hands the segment
it just closed to the thread to close: one wake-up per rotation.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

DEPTH = 4
"""Files kept ready: absorbs a burst of small segments while the thread catches up."""
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)


class SpareFiles:
    """Up to DEPTH empty files for `active_path`, created ahead in its directory."""

    def __init__(self, active_path: str, *, anonymous: bool = True) -> None:
        """`anonymous=False`: named spares even where O_TMPFILE works (what a file
        system without it gets)."""
        self._dir, _, self._base = active_path.rpartition("/")
        self._named_prefix = f"{self._dir}/{_spare_prefix(self._base)}"
        self._anonymous = anonymous and hasattr(os, "O_TMPFILE")
        # linkat(2) needs a directory descriptor for os.link to pass AT_SYMLINK_FOLLOW.
        self._dir_fd = -1
        if self._anonymous:
            try:
                self._dir_fd = os.open(self._dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                self._anonymous = False
        self._ready: queue.SimpleQueue[tuple[int, int, bool]] = queue.SimpleQueue()
        # (slot free again or -1, descriptor to close or -1): one wake-up per rotation.
        self._free: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        for slot in range(DEPTH):
            self._free.put((slot, -1))
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="logvold-spares", daemon=True)
        self._thread.start()

    def take(self, path: str, *, close_fd: int = -1) -> int:
        """Give a ready spare the name `path` (the active file's, which must be free
        now) and return its
        descriptor (read-write, at offset 0); -1 when there is none: create it yourself.

        `close_fd` (the segment just rotated) is closed on the thread: even a bare
        close can cost a file system a millisecond."""
        try:
            fd, slot, anonymous = self._ready.get_nowait()
        except queue.Empty:
            if close_fd >= 0:
                self._free.put((-1, close_fd))
            return -1
        try:
            if fd < 0:
                return -1
            try:
                if anonymous:
                    # linkat(AT_SYMLINK_FOLLOW) of the /proc magic link: no capability needed.
                    os.link(f"/proc/self/fd/{fd}", self._base, dst_dir_fd=self._dir_fd)
                else:
                    os.rename(self._named(slot), path)  # noqa: PTH104 - str paths, hot path
            except OSError as exc:
                os.close(fd)
                if anonymous and exc.errno != errno.EEXIST:
                    self._anonymous = False  # no /proc here: named spares from now on
                return -1
            return fd
        finally:
            self._free.put((slot, close_fd))  # the slot (a named spare's name) is free again

    def stop(self) -> None:
        """End the thread and remove every spare not taken."""
        self._stopping = True
        self._free.put((-1, -1))  # wakes the thread if it waits for a slot
        self._thread.join()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
        while not self._ready.empty():
            fd, slot, anonymous = self._ready.get()
            if fd >= 0:
                os.close(fd)
                if not anonymous:
                    _unlink(self._named(slot))

    def _named(self, slot: int) -> str:
        return f"{self._named_prefix}{slot}"

    def _run(self) -> None:
        while True:
            slot, close_fd = self._free.get()
            if close_fd >= 0:
                os.close(close_fd)
            if self._stopping:
                while not self._free.empty():  # closes queued after the stop's wake-up
                    if (fd := self._free.get()[1]) >= 0:
                        os.close(fd)
                return
            if slot < 0:
                continue
            try:
                self._ready.put((self._make(slot), slot, self._anonymous))
            except Exception:  # a bug here must not leave the writer waiting
                _log().exception("cannot make a spare file in %s", self._dir)
                self._ready.put((-1, slot, False))

    def _make(self, slot: int) -> int:
        flags = os.O_RDWR | os.O_CLOEXEC
        if self._anonymous:
            try:
                return os.open(self._dir, flags | os.O_TMPFILE, 0o644)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    _log().warning("cannot make a spare file in %s: %s", self._dir, exc)
                    return -1
                self._anonymous = False  # this file system cannot: named spares
        try:
            return os.open(self._named(slot), flags | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            _log().warning("cannot make spare file %s: %s", self._named(slot), exc)
            return -1


def remove_leftover_spares(active_path: str, names: list[str]) -> None:
    """Remove the named spares (`.<name>.next`, `.<name>.next<k>`: empty files, not
    data) that a crash of a run using them left; `names` is a listing of the directory
    the writer made anyway (no unlink is tried for a name that is not there)."""
    directory, _, base = active_path.rpartition("/")
    prefix = _spare_prefix(base)
    for name in names:
        suffix = name[len(prefix) :]
        if name.startswith(prefix) and (not suffix or (suffix.isascii() and suffix.isdigit())):
            _unlink(f"{directory}/{name}")


def _spare_prefix(base: str) -> str:
    """A named spare of active file `base` is `.<base>.next<slot>` (hidden, in its directory)."""
    return f".{base}.next"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)  # noqa: PTH108 - str paths
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log().warning("cannot remove spare file %s: %s", path, exc)


def _log() -> logging.Logger:
    """The writer's logger; `logging` is imported by the first line written (not at start-up)."""
    import logging

    return logging.getLogger("logvold.fileio.rotating_writer")
