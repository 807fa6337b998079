"""Checks of a valid config against the host it runs on: volume paths that exist, and
that the installed systemd unit's sandbox lets logvold write them.

A config can be right as text and still fail at run time: a volume path with a typo, or
one outside the unit's `ReadWritePaths=` (ProtectSystem=strict makes the rest of the
host read-only, and the daemon would only find out at its first rotation, with EROFS).
`logvold check-config` prints these as warnings; `logvold serve` refuses to start (or a
reload is rejected) with the same words. The unit is read from its file, without
systemctl: check-config looks where systemd does; serve only when it runs as a
`logvold*.service` itself (its cgroup says so), so a manual run on a host with the unit
installed is not judged by a sandbox it does not have.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from logvold.core.config_tree import KeyPath, format_key
from logvold.core.policy import Config
from logvold.errors import ConfigProblem

UNIT_ENV = "LOGVOLD_SYSTEMD_UNIT"
"""Path of the unit file to check against, instead of searching; "" = no unit. For tests
and for checking a unit before installing it."""
UNIT_NAME = "logvold.service"
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
"""Where systemd looks for system units, highest priority first (systemd.unit(5))."""
_MAX_UNIT_BYTES = 1 << 20
_MAX_DROP_INS = 256


@dataclass(frozen=True, kw_only=True)
class UnitSandbox:
    """The parts of a unit's [Service] section that decide which paths are writable."""

    unit_file: str
    protect_system: str = "no"
    """no | yes | full | strict (systemd.exec(5) ProtectSystem=)."""
    protect_home: str = "no"
    private_tmp: bool = False
    read_write_paths: tuple[str, ...] = ()
    """ReadWritePaths= plus the State/Logs/Cache/RuntimeDirectory= each implies."""
    read_only_paths: tuple[str, ...] = ()
    inaccessible_paths: tuple[str, ...] = ()

    def why_not_writable(self, path: str) -> str | None:
        """None if a process of this unit may write `path`, else the setting that forbids it."""
        path = os.path.normpath(path)
        if self.private_tmp and _under(path, ("/tmp", "/var/tmp")):
            return "PrivateTmp=yes gives the service its own empty /tmp and /var/tmp"
        rules = [(p, "rw") for p in self.read_write_paths]
        rules += [(p, "ReadOnlyPaths=") for p in self.read_only_paths]
        rules += [(p, "InaccessiblePaths=") for p in self.inaccessible_paths]
        if self.protect_home not in ("no", "false"):
            rules += [
                (p, f"ProtectHome={self.protect_home}") for p in ("/home", "/root", "/run/user")
            ]
        base = {
            "strict": ("/",),
            "full": ("/usr", "/boot", "/efi", "/etc"),
            "yes": ("/usr", "/boot", "/efi"),
            "true": ("/usr", "/boot", "/efi"),
        }
        rules += [
            (p, f"ProtectSystem={self.protect_system}") for p in base.get(self.protect_system, ())
        ]
        # The most specific path wins, as systemd applies nested mounts last.
        matching = [(len(p), verdict) for p, verdict in rules if _under(path, (p,))]
        if not matching:
            return None
        verdict = max(matching)[1]
        return None if verdict == "rw" else f"{verdict} makes it read-only"


def _under(path: str, roots: Sequence[str]) -> bool:
    for root in roots:
        root = os.path.normpath(root)
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return True
    return False


def find_unit(environ: Mapping[str, str], *, running: bool) -> Path | None:
    """The logvold unit file to check against, or None.

    `running`: serve's view, the unit this process runs as (None outside systemd or when
    the unit is not logvold's); otherwise check-config's view, the installed unit.
    """
    if UNIT_ENV in environ:
        given = environ[UNIT_ENV]
        return Path(given) if given and Path(given).is_file() else None
    name = UNIT_NAME
    if running:
        own = _own_unit_name()
        if own is None or not own.startswith("logvold"):
            return None
        name = own
    for directory in UNIT_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file():
            return candidate
    return None


def _own_unit_name() -> str | None:
    try:
        text = Path("/proc/self/cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines()[:64]:
        for part in reversed(line.rpartition(":")[2].split("/")):
            if part.endswith(".service"):
                return part
    return None


def read_unit_sandbox(unit: Path, *, search_drop_ins: bool = True) -> UnitSandbox:
    """Parse `unit` and its drop-ins (`<name>.d/*.conf` beside it and, when
    `search_drop_ins`, in every unit directory), later assignments winning as in systemd."""
    files = [unit, *_drop_ins(unit, search_drop_ins)]
    settings: dict[str, list[str]] = {}
    for path in files:
        try:
            with path.open("rb") as f:
                text = f.read(_MAX_UNIT_BYTES).decode("utf-8", errors="replace")
        except OSError:
            continue
        for key, value in _service_assignments(text):
            if key in ("ProtectSystem", "ProtectHome", "PrivateTmp"):
                settings[key] = [value]
            elif value.strip():
                settings.setdefault(key, []).extend(_words(value))
            else:
                settings[key] = []  # an empty assignment resets a list
    rw = list(settings.get("ReadWritePaths", []))
    for key, root in (
        ("StateDirectory", "/var/lib"),
        ("LogsDirectory", "/var/log"),
        ("CacheDirectory", "/var/cache"),
        ("RuntimeDirectory", "/run"),
    ):
        rw += [f"{root}/{name.partition(':')[0]}" for name in settings.get(key, [])]
    protect = (settings.get("ProtectSystem") or ["no"])[0].strip().lower()
    return UnitSandbox(
        unit_file=str(unit),
        protect_system=protect,
        protect_home=(settings.get("ProtectHome") or ["no"])[0].strip().lower(),
        private_tmp=(settings.get("PrivateTmp") or ["no"])[0].strip().lower()
        in ("yes", "true", "1", "on"),
        read_write_paths=tuple(rw),
        read_only_paths=tuple(settings.get("ReadOnlyPaths", [])),
        inaccessible_paths=tuple(settings.get("InaccessiblePaths", [])),
    )


def _drop_ins(unit: Path, search: bool) -> list[Path]:
    dirs = [Path(f"{unit}.d")]
    if search:
        dirs += [Path(d) / f"{unit.name}.d" for d in UNIT_DIRS]
    chosen: dict[str, Path] = {}
    for directory in dirs:
        try:
            names = sorted(entry.name for entry in directory.iterdir())[:_MAX_DROP_INS]
        except OSError:
            continue
        for name in names:
            if name.endswith(".conf"):
                chosen.setdefault(name, directory / name)  # the first directory wins
    return [chosen[name] for name in sorted(chosen)]


def _service_assignments(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        if sep and section == "Service":
            out.append((key.strip(), value.strip()))
    return out


def _words(value: str) -> list[str]:
    try:
        words = shlex.split(value)
    except ValueError:
        words = value.split()
    # "-" = ignore if missing, "+" = relative to RootDirectory=: the path is what follows.
    return [w.lstrip("-+") for w in words if w.lstrip("-+").startswith("/")]


def host_problems(
    config: Config,
    *,
    lines: Mapping[KeyPath, int] | None = None,
    unit: UnitSandbox | None = None,
    created: Sequence[str] = (),
    previous: Config | None = None,
) -> list[ConfigProblem]:
    """What would stop `config` from working on this host; [] if nothing.

    `created`: volume names the daemon creates itself (the built-in `local` volume).
    `previous`: the config running now (a reload): what it already had unchanged is not
    judged again, so a volume directory that vanished at run time (logged, counted and
    survived by the scan) does not block an unrelated change.
    """
    problems: list[ConfigProblem] = []
    marks = lines or {}
    running = {(v.name, v.path) for v in previous.volumes} if previous is not None else set()

    def add(path: KeyPath, message: str) -> None:
        problems.append(ConfigProblem(config.source, marks.get(path), format_key(path), message))

    for index, volume in enumerate(config.volumes):
        key: KeyPath = ("volumes", index, "path")
        path = volume.path
        if (volume.name, path) in running:
            continue
        if volume.name not in created:
            if not os.path.lexists(path):
                add(key, f"{path} does not exist; create it (mkdir -p {path}) or correct the path")
            elif not Path(path).is_dir():
                add(
                    key,
                    f"{path} is not a directory; a volume is the directory that holds "
                    "the log files",
                )
        if unit is not None:
            _unit_problem(unit, os.path.realpath(path), key, add)
    k8s_unchanged = (
        previous is not None
        and previous.kubernetes.enabled
        and (previous.kubernetes.kubelet_root == config.kubernetes.kubelet_root)
    )
    if unit is not None and config.kubernetes.enabled and not k8s_unchanged:
        pods = str(Path(config.kubernetes.kubelet_root) / "pods")
        _unit_problem(unit, os.path.realpath(pods), ("kubernetes", "kubeletRoot"), add)
    return problems


def _unit_problem(
    unit: UnitSandbox, path: str, key: KeyPath, add: Callable[[KeyPath, str], None]
) -> None:
    why = unit.why_not_writable(path)
    if why is None:
        return
    if why.startswith("PrivateTmp"):
        fix = "move the volume out of /tmp and /var/tmp"
    else:
        fix = (
            f"allow it with a drop-in: `systemctl edit {Path(unit.unit_file).name}`, "
            f"then under [Service] add ReadWritePaths={path}"
        )
    add(key, f"{path} is not writable under the systemd unit {unit.unit_file} ({why}); {fix}")
