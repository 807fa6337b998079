"""Static discovery: the config file's volumes become streams in the registry.

Each scan lists the volumes and puts/removes `StreamInfo`s so the registry
matches the config and the disk; kubernetes discovery feeds the same registry
the same way. Bad entries (unreadable volume, a directory or symlink named
`*.log`, a non-UTF-8 name, a path escaping its volume) are logged once, counted
and skipped: one bad file never stops the others.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from logvold.core.layout import parse_segment_name
from logvold.core.policy import stream_cap
from logvold.core.stream_caps import SmallestNames, choose_streams
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.fileio.safedir import MAX_NAMES, SafeDir, UnsafeFile

if TYPE_CHECKING:
    from logvold.core.policy import Config, LogPolicy, VolumeSpec
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

SOURCE = "static"
_SEGMENT_BASE_RE = re.compile(r"^(.+\.log)\.\d{8}-\d{6}")
MAX_NAME_PROBLEMS = 16
"""Bad names reported one by one per volume and scan; the rest are counted in one line."""
OVER_CAP_RESCAN_S = 5.0
"""File events list a volume over its cap at most this often (see `_listed_recently`)."""


@dataclass
class ScanReport:
    """What one scan changed and found wrong."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    problems: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Problems that are refused files (problem -> UnsafeFile kind), for the metric."""
    over_cap: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """List-less volume -> (`*.log` files refused by its cap, the cap, `*.log` files seen)."""
    crowded: dict[str, Path | None] = field(default_factory=dict)
    """List-less volume -> its directory when that holds more than MAX_NAMES entries, else
    None (every scanned list-less volume has an entry)."""


@dataclass
class _Candidates:
    """What one bounded pass over a list-less volume's directory found."""

    existing: set[str]
    """Managed streams' base names seen again."""
    new: list[str]
    """The smallest other candidate base names, sorted (at most 2 * cap + 8)."""
    active_count: int = 0
    """`*.log` names in the listing (a lower bound when `truncated`)."""
    truncated: bool = False
    """The directory holds more than MAX_NAMES entries: the pass stopped there."""


def _list_candidates(
    sd: SafeDir, existing: set[str], cap: int, volume: str, report: ScanReport
) -> _Candidates:
    """One pass over at most MAX_NAMES entries, keeping O(cap) names: the `*.log` names and
    segment bases, split into those already managed and the smallest new ones. No stat:
    100,000 planted files cost one readdir pass, not 100,000 lstats."""
    new = SmallestNames(2 * cap + 8)  # spare room for refused (symlinked) names
    found = _Candidates(existing=set(), new=[])
    non_utf8 = 0
    for listed, name in enumerate(sd.iter_names()):
        if listed >= MAX_NAMES:
            found.truncated = True
            break
        if name.endswith(".log") and len(name) > 4:
            base = name
        elif (
            ".log." in name
            and (m := _SEGMENT_BASE_RE.match(name))
            and parse_segment_name(m.group(1), name) is not None
        ):
            base = m.group(1)  # segments outlive their active file: still a stream
        else:
            continue
        if not _is_utf8(name):
            non_utf8 += 1
            if non_utf8 <= MAX_NAME_PROBLEMS:
                shown = os.fsencode(name).decode("utf-8", "backslashreplace")
                report.problems.append(
                    f"volume {volume}: skipping non-UTF-8 file name '{shown}' in {sd.path}"
                )
            continue
        if base == name:
            found.active_count += 1
        if base in existing:
            found.existing.add(base)
        else:
            new.add(base)
    if non_utf8 > MAX_NAME_PROBLEMS:
        report.problems.append(
            f"volume {volume}: {non_utf8 - MAX_NAME_PROBLEMS} more non-UTF-8 "
            f"file names in {sd.path} skipped"
        )
    found.new = new.result()
    return found


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir gave surrogate escapes for raw bytes
        return False
    return True


def open_inside(directory: Path, root: Path) -> SafeDir | None:
    """`directory` opened from `root` one component at a time without following a
    symlink (`fileio.safedir`): a subDir that is, or passes through, a symlink is
    refused (UnsafeFile), even one pointing back inside the volume, since the pod can
    re-point it between our check and our use. None while it does not exist yet."""
    try:
        return SafeDir.open_beneath(root, directory)
    except FileNotFoundError:
        return None


class StaticSource:
    """Keeps the registry's `static` streams equal to the config's volumes on disk."""

    def __init__(self, registry: StreamRegistry, metrics: Metrics | None = None) -> None:
        self._registry = registry
        self._metrics = metrics
        self._config: Config | None = None
        self._owned: dict[StreamKey, StreamInfo] = {}
        self._volume_of: dict[StreamKey, str] = {}
        self._known_problems: set[str] = set()
        self._over_cap: dict[str, int] = {}
        """List-less volumes over their stream cap -> `*.log` files refused (one episode)."""
        self._listed_at: dict[str, float] = {}
        """Monotonic time of each volume's last listing (rate limit of hint rescans)."""
        self._capped_volumes: set[str] = set()
        """Volumes with a `logvold_streams_over_cap` series."""
        self._crowded: dict[str, Path] = {}
        """List-less volumes whose directory holds more entries than a listing takes."""
        self._crowded_dirs: frozenset[Path] = frozenset()
        """Their directories, replaced whole (read from the loop thread during a scan)."""

    @property
    def config(self) -> Config | None:
        return self._config

    def set_config(self, config: Config) -> None:
        self._config = config
        capped = {v.name for v in config.volumes if not v.containers}
        if self._metrics is not None:
            for name in sorted(capped - self._capped_volumes):
                self._metrics.streams_over_cap.labels(name).set(0)  # exists before an episode
            for name in sorted(self._capped_volumes - capped):
                self._metrics.streams_over_cap.remove(name)
        self._capped_volumes = capped
        for name in set(self._over_cap) - capped:
            del self._over_cap[name]
        for name in set(self._crowded) - capped:
            del self._crowded[name]
        self._crowded_dirs = frozenset(self._crowded.values())

    def crowded_directories(self) -> set[Path]:
        """Directories holding more entries than one listing takes (MAX_NAMES): every step
        of their streams would be refused at its listing, so none is started (the daemon
        tells the workers) and one line per episode says why, not one per stream."""
        return set(self._crowded_dirs)

    def over_cap(self) -> dict[str, int]:
        """List-less volumes now over their stream cap -> `*.log` files refused."""
        return dict(self._over_cap)

    def directories(self) -> list[Path]:
        """Every directory that holds active files of a configured volume (to watch)."""
        if self._config is None:
            return []
        dirs: set[Path] = set()
        for volume in self._config.volumes:
            for policy in self._policies(volume):
                root = Path(volume.path)
                dirs.add(root / policy.sub_dir if policy.sub_dir else root)
        return sorted(dirs)

    def volume_of(self, key: StreamKey) -> str | None:
        return self._volume_of.get(key)

    def scan(self, volumes: Iterable[str] | None = None) -> ScanReport:
        """List the volumes (all, or those named) and update the registry to match."""
        config = self._config
        report = ScanReport()
        if config is None:
            return report
        only = set(volumes) if volumes is not None else None
        found: dict[StreamKey, StreamInfo] = {}
        keep_as_is: set[StreamKey] = set()
        scanned: set[str] = set()
        for volume in config.volumes:
            if only is not None and (volume.name not in only or self._listed_recently(volume)):
                keep_as_is.update(k for k, v in self._volume_of.items() if v == volume.name)
                continue
            scanned.add(volume.name)
            self._listed_at[volume.name] = time.monotonic()
            ok = self._scan_volume(config, volume, found, report)
            if not ok:  # unreadable now: keep what we had rather than flap
                keep_as_is.update(k for k, v in self._volume_of.items() if v == volume.name)
        configured = {v.name for v in config.volumes}
        self._report_crowded(report)
        for key, info in sorted(found.items()):
            old = self._owned.get(key)
            self._owned[key] = info
            self._volume_of[key] = info.volume
            if old is None:
                report.added += 1
            elif old != info:
                report.updated += 1
            self._registry.put(info)
        for key in sorted(set(self._owned) - set(found)):
            if key in keep_as_is and self._volume_of.get(key) in configured:
                continue
            del self._owned[key]
            self._volume_of.pop(key, None)
            self._registry.remove(key)
            report.removed += 1
        self._report_problems(report, scanned)
        self._report_caps(report)
        return report

    def _report_crowded(self, report: ScanReport) -> None:
        """Before the registry hears of the scan's streams, so no step starts in a crowded
        directory; one log line per episode and volume."""
        for name, directory in sorted(report.crowded.items()):
            if directory is not None and name not in self._crowded:
                log.warning(
                    "volume directory holds more than %d entries: its streams are not "
                    "rotated (each listing would be refused) until it holds fewer",
                    MAX_NAMES,
                    extra={"volume": name, "path": str(directory), "source": SOURCE},
                )
                if self._metrics is not None:
                    self._metrics.unsafe_refused.labels("too-many").inc()
                self._crowded[name] = directory
            elif directory is None and name in self._crowded:
                log.info(
                    "volume directory listable again; its streams are rotated",
                    extra={"volume": name, "source": SOURCE},
                )
                del self._crowded[name]
        self._crowded_dirs = frozenset(self._crowded.values())

    def _listed_recently(self, volume: VolumeSpec) -> bool:
        """A volume over its cap is listed again for file events at most every
        OVER_CAP_RESCAN_S: a pod churning 100,000 names must not buy a listing per event
        (the periodic full scan still lists it)."""
        return volume.name in self._over_cap and (
            time.monotonic() - self._listed_at.get(volume.name, -math.inf) < OVER_CAP_RESCAN_S
        )

    def _report_caps(self, report: ScanReport) -> None:
        """One log line when a volume goes over its cap and one when it is back under
        (not one per file or per scan); the gauge follows every scan."""
        for name, (over, cap, seen) in sorted(report.over_cap.items()):
            if self._metrics is not None:
                self._metrics.streams_over_cap.labels(name).set(over)
            if over > 0 and name not in self._over_cap:
                log.warning(
                    "volume holds more *.log files than its stream cap; managing the "
                    "first %d (managed ones keep their place, new ones in name order), "
                    "refusing %d until it is back under the cap (maxStreams)",
                    cap,
                    over,
                    extra={
                        "volume": name,
                        "max_streams": cap,
                        "log_files": seen,
                        "refused": over,
                        "source": SOURCE,
                    },
                )
            elif over == 0 and name in self._over_cap:
                log.info(
                    "volume back under its stream cap",
                    extra={"volume": name, "max_streams": cap, "log_files": seen, "source": SOURCE},
                )
            if over > 0:
                self._over_cap[name] = over
            else:
                self._over_cap.pop(name, None)

    def _policies(self, volume: VolumeSpec) -> list[LogPolicy]:
        assert self._config is not None
        if volume.containers:
            return [c.policy for c in volume.containers]
        return [self._config.defaults]

    def _scan_volume(
        self,
        config: Config,
        volume: VolumeSpec,
        found: dict[StreamKey, StreamInfo],
        report: ScanReport,
    ) -> bool:
        root = Path(volume.path)
        pod = volume.pod or volume.name
        try:
            with SafeDir.open_root(root) as probe:  # the operator's path: symlinks followed
                next(probe.iter_names(), None)  # readable
        except (OSError, UnsafeFile) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "Not a directory"
            report.problems.append(f"volume {volume.name}: cannot read {root}: {reason or exc}")
            return False

        def add(info: StreamInfo) -> None:
            if info.key in found:
                report.problems.append(
                    f"volume {volume.name}: stream {info.key} is already "
                    f"defined by volume {found[info.key].volume}; ignored"
                )
                return
            found[info.key] = info

        if volume.containers:
            for container in volume.containers:
                base = container.file or f"{container.name}.log"
                directory = self._stream_dir(volume, root, container.policy, report)
                if directory is None:
                    continue
                if "/" in base or base in (".", "..") or not _is_utf8(base):
                    report.problems.append(
                        f"volume {volume.name}: container {container.name}: "
                        f"file {base!r} must be a plain file name"
                    )
                    continue
                add(
                    self._info(volume, pod, container.name, directory, base, container.policy, root)
                )
            return True

        policy = config.defaults
        directory = self._stream_dir(volume, root, policy, report)
        if directory is None:
            return True
        cap = stream_cap(config, volume)
        existing = {i.base for k, i in self._owned.items() if self._volume_of.get(k) == volume.name}
        try:
            with SafeDir.open_beneath(root, directory) as sd:
                listing = _list_candidates(sd, existing, cap, volume.name, report)
                # Managed ones first, then new names in name order; refused ones leave
                # their place to the next, so at most 3 * cap + 8 lstats per scan.
                ordered = choose_streams(
                    listing.existing, listing.new, len(listing.existing) + len(listing.new)
                )
                accepted: list[str] = []
                refused_unsafe = with_active = 0
                for base in ordered:
                    if len(accepted) >= cap:
                        break
                    st = sd.lstat(base)
                    if st is not None and not stat.S_ISREG(st.st_mode):
                        link = stat.S_ISLNK(st.st_mode)
                        kind = "symlink" if link else "directory or special file"
                        self._refused(
                            report,
                            f"volume {volume.name}: {directory / base} is a "
                            f"{kind}, not a regular file; not managed",
                            "symlink" if link else "not-regular",
                        )
                        refused_unsafe += 1
                        continue
                    # None: only segments (or a file that just vanished: gone next scan).
                    with_active += st is not None
                    accepted.append(base)
                if listing.truncated:  # not all was seen: managed ones still there stay
                    for base in sorted(existing - set(accepted)):
                        if len(accepted) >= cap:
                            break
                        st = sd.lstat(base)
                        if st is not None and stat.S_ISREG(st.st_mode):
                            accepted.append(base)
                            with_active += 1
        except UnsafeFile as exc:
            self._refused(report, f"volume {volume.name}: {exc}; not managed", exc.kind)
            return True
        except OSError as exc:
            report.problems.append(
                f"volume {volume.name}: cannot read {directory}: {exc.strerror or exc}"
            )
            return False
        over = max(0, listing.active_count - with_active - refused_unsafe)
        report.over_cap[volume.name] = (over, cap, listing.active_count)
        report.crowded[volume.name] = directory if listing.truncated else None
        for base in sorted(accepted):
            add(self._info(volume, pod, base[:-4], directory, base, policy, root))
        return True

    def _stream_dir(
        self, volume: VolumeSpec, root: Path, policy: LogPolicy, report: ScanReport
    ) -> Path | None:
        directory = root / policy.sub_dir if policy.sub_dir else root
        if not policy.sub_dir:
            return directory
        try:
            if Path(policy.sub_dir).is_absolute():
                raise UnsafeFile("absolute", kind="outside")
            sd = open_inside(directory, root)
        except UnsafeFile as exc:
            self._refused(
                report,
                f"volume {volume.name}: subDir {policy.sub_dir!r} leaves the "
                f"volume ({exc.kind}); not managed",
                exc.kind,
            )
            return None
        except OSError:
            return directory  # unreadable: the listing reports it
        if sd is not None:
            sd.close()
        return directory

    @staticmethod
    def _refused(report: ScanReport, problem: str, kind: str) -> None:
        report.problems.append(problem)
        report.refused[problem] = kind

    @staticmethod
    def _info(
        volume: VolumeSpec,
        pod: str,
        container: str,
        directory: Path,
        base: str,
        policy: LogPolicy,
        root: Path,
    ) -> StreamInfo:
        return StreamInfo(
            key=StreamKey(volume.namespace, pod, container),
            directory=directory,
            base=base,
            policy=policy,
            volume=volume.name,
            source=SOURCE,
            annotations=dict(policy.annotations),
            root=root,
            labels=dict(volume.labels),
        )

    def _report_problems(self, report: ScanReport, scanned: set[str]) -> None:
        problems = report.problems
        current = set(problems)
        for problem in problems:
            if problem not in self._known_problems:
                log.warning("static volume problem: %s", problem, extra={"source": SOURCE})
                if self._metrics is not None:
                    self._metrics.watch_errors.labels(SOURCE).inc()
                    if problem in report.refused:
                        self._metrics.unsafe_refused.labels(report.refused[problem]).inc()
        # Forget problems that went away, so they are logged again if they come back.
        self._known_problems = {
            p
            for p in self._known_problems
            if p in current or not any(p.startswith(f"volume {v}:") for v in scanned)
        } | current
