"""The stream reader's view of one stream directory, through `fileio.safedir` only.

A reader serves bytes to clients, so whatever it opens must be the pod's own file:
the directory is walked from the stream's safety root without following symlinks
(a subDir swapped for `-> /var/log` or another pod's emptyDir is refused), pinned as
an fd, and every file is opened relative to it, refusing symlinks, FIFOs, hard links
and directories. The state file is read with a size cap through the pinned
`.logvold` directory, so a planted 3 GiB state file costs one fstat.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from logvold.core.layout import STATE_DIR_NAME, state_file_name
from logvold.errors import StateError
from logvold.fileio.safedir import SafeDir, UnsafeFile, open_stream_dir
from logvold.fileio.state import StreamState, _from_json

if TYPE_CHECKING:
    from logvold.core.streams import StreamInfo

log = logging.getLogger(__name__)

STATE_MAX_BYTES = 64 * 1024
"""A valid state file (at most 64 segment records) is a few KiB; more is not one."""
SEGMENT_SUFFIXES = ("", ".gz", ".zst")

Refused = Callable[[UnsafeFile], None]


def log_refusal(exc: UnsafeFile) -> None:
    """Default report of a refused file: one warning (callers count the metric)."""
    log.warning("refused to read %s: %s", exc.path, exc)


class StreamDir:
    """A pinned fd of a stream's directory (and of its `.logvold`), re-walked from the
    safety root only when asked (the active file went missing: the directory may have
    been replaced). Every refusal goes to `on_refused` once per name and kind."""

    def __init__(self, info: StreamInfo, on_refused: Refused = log_refusal) -> None:
        self.info = info
        self.base = info.base
        self._on_refused = on_refused
        self._reported: set[tuple[str, str]] = set()
        self._dir: SafeDir | None = None
        self._state_dir: SafeDir | None = None
        self._state_dir_id: tuple[int, int] = (0, 0)
        self._tried = False

    # -- the directory --------------------------------------------------------------------

    def refused(self, exc: UnsafeFile) -> None:
        key = (str(exc.path), exc.kind)
        if key in self._reported or len(self._reported) > 1000:
            return
        self._reported.add(key)
        self._on_refused(exc)

    def directory(self) -> SafeDir | None:
        """The pinned stream directory; None while it is missing or refused."""
        if self._dir is None and not self._tried:
            self._tried = True
            try:
                self._dir = open_stream_dir(self.info)
            except FileNotFoundError:
                pass
            except UnsafeFile as e:
                self.refused(e)
            except OSError as e:
                log.warning("cannot open %s: %s", self.info.directory, e.strerror)
        return self._dir

    def rewalk(self) -> None:
        """Drop the pinned fds: the next use walks from the safety root again."""
        self.close()
        self._tried = False

    def close(self) -> None:
        for sd in (self._dir, self._state_dir):
            if sd is not None:
                sd.close()
        self._dir = self._state_dir = None

    # -- files ----------------------------------------------------------------------------

    def open_file(self, name: str) -> int | None:
        """An fd of the regular, singly linked file `name`; None if missing or refused."""
        sd = self.directory()
        if sd is None:
            return None
        try:
            return sd.open_file(name).fd
        except UnsafeFile as e:
            self.refused(e)
        except OSError:
            pass  # vanished (retention, rotation): a race, not an attack
        return None

    def open_active(self) -> int | None:
        return self.open_file(self.base)

    def open_segment(self, stem: str) -> tuple[int, str] | None:
        """An fd of a segment by stem, whatever it is compressed to by now, and its
        compression ("" for plain). None when it is gone."""
        for suffix in SEGMENT_SUFFIXES:
            fd = self.open_file(stem + suffix)
            if fd is not None:
                return fd, suffix[1:]
        return None

    def names(self) -> list[str]:
        """Entry names of the directory (bounded); [] when it cannot be listed."""
        sd = self.directory()
        if sd is None:
            return []
        try:
            return sd.names()
        except UnsafeFile as e:
            self.refused(e)
        except OSError as e:
            log.warning("cannot list %s: %s", self.info.directory, e.strerror)
        return []

    def active_id(self) -> tuple[int, int] | None:
        """(st_ino, st_dev) of the name `base` now (lstat: a symlink is not followed)."""
        sd = self.directory()
        st = _lstat(sd, self.base) if sd is not None else None
        return None if st is None else (st.st_ino, st.st_dev)

    # -- the state file -------------------------------------------------------------------

    def _state_directory(self) -> SafeDir | None:
        """The pinned `.logvold`, re-opened when the name now is another directory."""
        sd = self.directory()
        st = _lstat(sd, STATE_DIR_NAME) if sd is not None else None
        if sd is None or st is None:
            return None
        if self._state_dir is not None and (st.st_dev, st.st_ino) == self._state_dir_id:
            return self._state_dir
        if self._state_dir is not None:
            self._state_dir.close()
            self._state_dir = None
        try:
            self._state_dir = sd.subdir(STATE_DIR_NAME)
        except UnsafeFile as e:
            self.refused(e)
            return None
        except OSError:
            return None
        fst = os.fstat(self._state_dir.fd)
        self._state_dir_id = (fst.st_dev, fst.st_ino)
        return self._state_dir

    def state_key(self) -> tuple[int, ...] | None:
        """(inode, mtime, ctime, size) of the state file; None when there is none."""
        sd = self._state_directory()
        if sd is None:
            return None
        try:
            st = _lstat(sd, state_file_name(self.base), missing_ok=False)
        except FileNotFoundError:
            return None
        if st is None:
            return ()
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def load_state(self) -> StreamState | None:
        """The saved state, read with a size cap by dir fd; StateError when it is not a
        valid one (oversized, a symlink or FIFO planted in its place, bad JSON)."""
        sd = self._state_directory()
        if sd is None:
            return None
        name = state_file_name(self.base)
        where = f"{self.info.directory}/{STATE_DIR_NAME}/{name}"
        try:
            raw = sd.read_capped(name, STATE_MAX_BYTES)
        except FileNotFoundError:
            return None
        except UnsafeFile as e:
            self.refused(e)
            raise StateError(str(e), path=where, op="load state") from e
        except OSError as e:
            raise StateError(
                f"cannot read state file {where}: {e.strerror}", path=where, op="load state"
            ) from e
        try:
            return _from_json(json.loads(raw), self.base)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as e:
            raise StateError(
                f"state file {where} is not a valid state ({e})", path=where, op="load state"
            ) from e


def _lstat(sd: SafeDir, name: str, *, missing_ok: bool = True) -> os.stat_result | None:
    """lstat of `name` in the pinned directory; None when missing (FileNotFoundError
    unless `missing_ok`) or when it cannot be looked at."""
    try:
        st = sd.lstat(name)
    except OSError:
        return None
    if st is None and not missing_ok:
        raise FileNotFoundError(name)
    return st
