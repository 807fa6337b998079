"""One manager per directory: the daemon holds the `.logvold/lock` of every directory it manages.

A static volume's directories are locked before any of its streams is managed (a start
or reload meeting another logvold's lock fails as a whole); a stream's directory is
locked before it is managed, and one whose directory appears later gets its lock at a
full reconcile. A directory another logvold holds, or a symlinked subDir, is never
rotated; each such problem is logged once until it is solved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from logvold.core.streams import StreamInfo, StreamKey
from logvold.daemon.logger import LOGGER_NAME
from logvold.fileio.dirlock import DirectoryLocked, DirectoryLocks
from logvold.fileio.safedir import UnsafeFile

if TYPE_CHECKING:
    from logvold.core.policy import Config
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger(LOGGER_NAME)


class StreamDirectoryLocks:
    """The `.logvold/lock` of every directory the daemon manages, and the problems met.

    Owners name what a lock is held for: `volume:NAME:DIR` for a static volume's
    directories, `stream:KEY` for one stream's directory."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._locks = DirectoryLocks()
        self._problems: set[str] = set()

    def lock_volumes(self, config: Config) -> None:
        """Hold the lock of every existing stream directory of the static volumes and
        drop those of volumes no longer configured. DirectoryLocked when another
        logvold manages one (start fails, a reload is rejected); missing or refused
        directories are left to the scan, which reports them."""
        wanted = _volume_lock_targets(config)
        taken: list[str] = []
        for owner, (root, directory) in wanted.items():
            if self._locks.holds(owner):
                continue
            try:
                self._locks.hold(owner, root, directory)
                taken.append(owner)
            except (UnsafeFile, FileNotFoundError):
                continue  # the scan reports it; its streams are refused or come later
            except OSError as exc:
                self._problem(owner, f"cannot lock {directory}: {exc.strerror}")
            except DirectoryLocked:
                for mine in taken:  # a rejected config leaves no lock behind
                    self._locks.drop(mine)
                raise
        for owner in self._locks.owners():
            if owner.startswith("volume:") and owner not in wanted:
                self._locks.drop(owner)

    def lock_stream(self, info: StreamInfo, root: Path | None) -> bool:
        """Hold the lock of the stream's directory (inside its safety `root`) before it
        is managed; False (not managed: never rotated) when another logvold holds it or
        the directory is not a real directory inside its volume (a symlinked subDir)."""
        owner = stream_owner(info.key)
        try:
            self._locks.hold(owner, root or info.directory, info.directory)
        except DirectoryLocked as exc:
            self._problem(owner, str(exc), error=True)
            return False
        except UnsafeFile as exc:
            if self._problem(owner, f"{exc}; stream {info.key} not managed"):
                self._metrics.unsafe_refused.labels(exc.kind).inc()
            return False
        except FileNotFoundError:
            pass  # no directory yet: nothing to rotate; locked at a later reconcile
        except OSError as exc:
            self._problem(owner, f"cannot lock {info.directory}: {exc.strerror}")
        else:
            self._problems.discard(owner)
        return True

    def holds_stream(self, key: StreamKey) -> bool:
        return self._locks.holds(stream_owner(key))

    def drop_stream(self, key: StreamKey) -> None:
        self._locks.drop(stream_owner(key))

    def owners(self) -> list[str]:
        return list(self._locks.owners())

    def release_all(self) -> None:
        self._locks.release_all()

    def _problem(self, owner: str, message: str, *, error: bool = False) -> bool:
        """Log a lock problem once per owner (until it is solved); True when new."""
        if owner in self._problems:
            return False
        self._problems.add(owner)
        (log.error if error else log.warning)(message, extra={"owner": owner})
        return True


def volume_root(config: Config, info: StreamInfo) -> Path | None:
    """The stream's safety root: its own volume directory (for a discovered stream the
    pod's emptyDir, never the whole kubelet directory, so a subDir symlinked to another
    pod's volume is refused)."""
    if info.root is not None:
        return info.root
    if info.source != "static":
        return None
    for volume in config.volumes:
        if volume.name == info.volume:
            return Path(volume.path)
    return None


def stream_owner(key: StreamKey) -> str:
    return f"stream:{key}"


def _volume_lock_targets(config: Config) -> dict[str, tuple[Path, Path]]:
    """owner -> (safety root, directory) of every stream directory of the static volumes."""
    targets: dict[str, tuple[Path, Path]] = {}
    for volume in config.volumes:
        root = Path(volume.path)
        policies = [c.policy for c in volume.containers] or [config.defaults]
        for policy in policies:
            directory = root / policy.sub_dir if policy.sub_dir else root
            targets[f"volume:{volume.name}:{directory}"] = (root, directory)
    return targets
