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
from logvold.daemon.state import LOGGER_NAME, DaemonState
from logvold.fileio.dirlock import DirectoryLocked
from logvold.fileio.safedir import UnsafeFile

if TYPE_CHECKING:
    from logvold.core.policy import Config

log = logging.getLogger(LOGGER_NAME)


class DirectoryLockSteps(DaemonState):
    """Taking, keeping and dropping the directory locks of volumes and streams."""

    def _lock_volumes(self, config: Config) -> None:
        """Hold the lock of every existing stream directory of the static volumes and
        drop those of volumes no longer configured. DirectoryLocked when another
        logvold manages one (start fails, a reload is rejected); missing or refused
        directories are left to the scan, which reports them."""
        wanted = _volume_lock_targets(config)
        taken: list[str] = []
        for owner, (root, directory) in wanted.items():
            if self.locks.holds(owner):
                continue
            try:
                self.locks.hold(owner, root, directory)
                taken.append(owner)
            except (UnsafeFile, FileNotFoundError):
                continue  # the scan reports it; its streams are refused or come later
            except OSError as exc:
                self._lock_problem(owner, f"cannot lock {directory}: {exc.strerror}")
            except DirectoryLocked:
                for mine in taken:  # a rejected config leaves no lock behind
                    self.locks.drop(mine)
                raise
        for owner in self.locks.owners():
            if owner.startswith("volume:") and owner not in wanted:
                self.locks.drop(owner)

    def _lock_stream(self, info: StreamInfo) -> bool:
        """Hold the lock of the stream's directory before it is managed; False (not
        managed: never rotated) when another logvold holds it or the directory is not a
        real directory inside its volume (a symlinked subDir)."""
        owner = stream_owner(info.key)
        try:
            self.locks.hold(owner, self._volume_root(info) or info.directory, info.directory)
        except DirectoryLocked as exc:
            self._lock_problem(owner, str(exc), error=True)
            return False
        except UnsafeFile as exc:
            if self._lock_problem(owner, f"{exc}; stream {info.key} not managed"):
                self.metrics.unsafe_refused.labels(exc.kind).inc()
            return False
        except FileNotFoundError:
            pass  # no directory yet: nothing to rotate; locked at a later reconcile
        except OSError as exc:
            self._lock_problem(owner, f"cannot lock {info.directory}: {exc.strerror}")
        else:
            self._lock_problems.discard(owner)
        return True

    def _lock_problem(self, owner: str, message: str, *, error: bool = False) -> bool:
        """Log a lock problem once per owner (until it is solved); True when new."""
        if owner in self._lock_problems:
            return False
        self._lock_problems.add(owner)
        (log.error if error else log.warning)(message, extra={"owner": owner})
        return True

    def _relock_streams(self) -> None:
        """Streams managed before their directory existed get its lock now."""
        assert self.workers is not None
        for key in list(self.workers):
            info = self.workers.info(key)
            if (
                info is not None
                and not self.locks.holds(stream_owner(key))
                and not self._lock_stream(info)
            ):
                self.workers.remove(key)
                self.scheduler.remove(key)


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
