"""The configuration model: frozen policy values and their converters from a
plain YAML tree (dicts, lists, scalars) with line marks. Stdlib only; reading
the YAML file is `logvold.config.yaml_file`'s job.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import posixpath
import re
import signal
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from logvold.core.units import parse_duration, parse_size
from logvold.core.values import decode_delimiter
from logvold.core.values import decode_escapes as decode_escapes
from logvold.core.values import rotate_period as rotate_period
from logvold.errors import ConfigError, ConfigProblem

Rotate = str
"""`Hourly`, `Daily`, `Never`, or a fixed period as whole seconds (`"600s"`)."""
ROTATE_NAMES: Final = ("Hourly", "Daily", "Never")


def period_seconds(rotate: Rotate) -> int | None:
    """The length of a fixed rotation period (`"600s"` -> 600); None for the named ones."""
    if rotate.endswith("s") and rotate[:-1].isdigit():
        return int(rotate[:-1])
    return None


Compress = Literal["none", "gzip", "zstd"]
Format = Literal["raw", "cri", "json-file"]
Strategy = Literal["punch", "rename", "copytruncate"]
Collapse = Literal["auto", "always", "never"]
AuthMode = Literal["local", "none", "kubernetes"]
JournalMode = Literal["auto", "always", "never"]
LogFormat = Literal["logfmt", "json"]


@dataclass(frozen=True, kw_only=True)
class ReopenAction:
    """How to make a foreign writer reopen its log file after a `rename` rotation.

    YAML: `reopen: {signal: HUP, pidFile: /run/app.pid}` or `reopen: {command: [argv...]}`;
    exactly one of the two forms.
    """

    signal: str | None = None
    """Signal name without `SIG` (`HUP`, `USR1`) sent to the pid in `pid_file`."""
    pid_file: str | None = None
    """File holding the writer's pid; required with `signal`."""
    command: tuple[str, ...] = ()
    """argv run (no shell) after the rename, like kubelet's ReopenContainerLog."""


@dataclass(frozen=True, kw_only=True)
class LogPolicy:
    """How one container stream is rotated, retained, compressed and framed.

    YAML keys are the camelCase of the field names without unit suffixes:
    subDir, rotate, maxSize, maxFiles, maxAge, maxTotalSize, compress,
    delayCompress, format, delimiter, maxEventSize, strategy, collapse,
    reopen, timezone, annotations.
    """

    sub_dir: str = ""
    """Directory of the active files, relative to the volume path; "" = the volume root."""
    rotate: Rotate = "Never"
    """Time trigger: cut at each period start (in `timezone`): Hourly, Daily, or a fixed
    period written as a duration (`10m`, kept as whole seconds `"600s"`, boundaries at its
    multiples: `15m` cuts at :00, :15, :30, :45); Never = size only."""
    max_size_bytes: int = 10 * 2**20
    """Size trigger in bytes; 0 = none. 10 MiB, like kubelet's containerLogMaxSize."""
    max_files: int = 5
    """Closed segments kept; 0 = unlimited. 5, like kubelet's containerLogMaxFiles."""
    max_age_s: float = 0.0
    """Seconds a closed segment is kept after it was closed; 0 = unlimited."""
    max_total_size_bytes: int = 0
    """Bytes of segments plus the live part of the active file; 0 = unlimited."""
    compress: Compress = "none"
    """Compression of closed segments. none by default: readers then need no decoder."""
    delay_compress: bool = True
    """Keep the newest closed segment plain, so a lagging reader can finish it cheaply."""
    format: Format = "raw"
    """How events are framed: raw (delimiter), cri (P/F lines) or json-file (docker)."""
    delimiter: bytes = b"\n"
    """Event end for the raw format; YAML string with escapes (`"\\n\\n"`, `"\\x1e"`)."""
    max_event_size_bytes: int = 2**20
    """Events longer than this are cut (and counted) so memory stays bounded; 1 MiB."""
    strategy: Strategy = "punch"
    """Rotation of a foreign writer's file: punch (lossless), rename, copytruncate (lossy)."""
    collapse: Collapse = "never"
    """Shrink punched files with COLLAPSE_RANGE: auto = only when every writer uses O_APPEND.
    never by default: other readers that follow the file by offset (tail -F, Fluent Bit,
    Vector) take a shrinking file for a truncation and read it again (duplicates)."""
    reopen: ReopenAction | None = None
    """What tells the writer to reopen after a `rename` rotation; None = nothing."""
    timezone: str = "UTC"
    """IANA zone in which Hourly/Daily periods start; segment names stay in UTC."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Free-form context served with the stream (the proposal's aggregator context)."""


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """One container stream of a static volume."""

    name: str
    """Container name as served in `/logs/<ns>/<pod>/<container>`."""
    file: str = ""
    """Active file name inside `<volume>/<subDir>`; "" means `<name>.log`."""
    policy: LogPolicy
    """The effective policy: `defaults` overridden key by key by `policy.logs`."""


@dataclass(frozen=True, kw_only=True)
class VolumeSpec:
    """A logging volume: a host directory holding the active files of one pod."""

    name: str
    """Unique name of the volume in the config."""
    path: str
    """Host path of the volume."""
    pod: str = ""
    """Pod name the streams are served under; "" means the volume name."""
    namespace: str = "default"
    """Namespace the streams are served under."""
    containers: tuple[ContainerSpec, ...] = ()
    """Streams of the volume; () = every *.log in path/<defaults.subDir>, defaults policy."""
    max_total_size_bytes: int = 0
    """Budget in bytes over all streams of the volume; 0 = unlimited."""
    max_streams: int = 0
    """Streams a volume without `containers` may hold (every `*.log` is one); 0 = the
    node's `maxStreamsPerVolume`. The pod controls how many files it creates: the rest
    are refused (logged, `logvold_streams_over_cap`), so memory and work stay bounded."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Labels of the pod the streams are served as (`kubectl get pods -l`, `logs -l`)."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The HTTP API listener."""

    listen: str = "127.0.0.1:8642"
    """host:port; loopback by default because auth defaults to none."""
    tls_cert_file: str = ""
    """PEM certificate; "" = plain HTTP. Needs `tls_key_file`."""
    tls_key_file: str = ""
    """PEM private key of `tls_cert_file`."""
    auth: AuthMode = "local"
    """local (no `auth` set): unauthenticated, but a daemon with root's file access serves
    over TCP only what any local user could open (docs/SECURITY.md "Who may read");
    none: anyone who can connect reads everything (an explicit acknowledgement);
    kubernetes: bearer tokens via TokenReview + SubjectAccessReview."""
    auth_cache_ttl_s: float = 30.0
    """Seconds a review result is cached; 30 s bounds API load and revocation delay."""
    socket_path: str = ""
    """Unix socket for local clients (`logvold logs --socket`); "" = none. Its peers are
    identified by SO_PEERCRED and read only what their uid could open."""
    socket_mode: int = 0o600
    """Permission bits of the socket file (0660 with `socket_group` opens it to a group)."""
    socket_group: str = ""
    """Group owning the socket file; "" = the daemon's group."""
    limits: ServerLimits = field(default_factory=lambda: ServerLimits())
    """Connection and request limits: each refusal is a 503/429 with a reason."""


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """Bounds on what clients can make the HTTP server hold (fds, threads, memory)."""

    header_timeout_s: float = 10.0
    """A connection must complete a request's headers within this long of connecting or
    of its previous response (slowloris); idle keep-alive connections close after it."""
    max_connections: int = 1024
    """Open client connections; more are answered 503 and closed. Clamped at start to
    half the RLIMIT_NOFILE soft limit so files always have descriptors left."""
    max_followers: int = 256
    """Concurrent follow=true requests over all streams; more get a 503."""
    max_followers_per_stream: int = 32
    """Concurrent follow=true requests of one stream; more get a 429."""
    max_heavy_reads: int = 16
    """Concurrent reads without follow (tail, pattern, since, whole stream) and node log
    queries; more get a 429."""


@dataclass(frozen=True, kw_only=True)
class KubernetesConfig:
    """Discovery of pods on this node and their annotation policies."""

    enabled: bool = False
    """Off by default so logvold runs outside a cluster without credentials."""
    node_name: str = ""
    """Node whose pods are watched; "" = $NODE_NAME, then the host name."""
    annotation_key: str = "logvold.io/logs"
    """Pod annotation holding the YAML policy (volume -> container -> policy.logs)."""
    kubelet_root: str = "/var/lib/kubelet"
    """Root under which emptyDir volumes live (pods/<uid>/volumes/kubernetes.io~empty-dir)."""
    kubeconfig: str = ""
    """Path of a kubeconfig; "" = in-cluster service account."""


@dataclass(frozen=True, kw_only=True)
class NodeLogQueryConfig:
    """The KEP-2258 node log query (`GET /logs/?query=`)."""

    enabled: bool = True
    """On by default, as in the kubelet with the NodeLogQuery feature."""
    journal: JournalMode = "auto"
    """Use journalctl: auto = when the host runs systemd, always, or never (files only)."""
    journal_directory: str = ""
    """`journalctl --directory`; "" = the system journal."""
    log_dir: str = "/var/log"
    """Only files under this directory can be queried."""
    timeout_s: float = 30.0
    """Wall-clock budget of one query in seconds, as in the kubelet."""
    max_bytes: int = 64 * 2**20
    """Response size cap in bytes, so one query cannot exhaust memory or bandwidth."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole daemon configuration, as loaded from one file."""

    server: ServerConfig = field(default_factory=ServerConfig)
    """HTTP listener, TLS and auth."""
    defaults: LogPolicy = field(default_factory=LogPolicy)
    """Policy of every stream unless a container or annotation overrides a key."""
    volumes: tuple[VolumeSpec, ...] = ()
    """Static logging volumes."""
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    """Pod discovery."""
    node_log_query: NodeLogQueryConfig = field(default_factory=NodeLogQueryConfig)
    """Node log query."""
    node_max_total_size_bytes: int = 0
    """Budget in bytes over every stream on the node; 0 = unlimited."""
    rescan_interval_s: float = 30.0
    """Seconds between full reconciles; file events are only hints, this is the truth."""
    max_streams_per_volume: int = 256
    """Streams one list-less static volume (unless it sets `maxStreams`) or one pod volume
    declared in an annotation may hold. A few hundred: far above what a pod writes, far
    below what 100,000 planted `*.log` files would cost (memory, steps, listings)."""
    log_format: LogFormat = "logfmt"
    """Format of logvold's own log lines."""
    log_level: str = "info"
    """debug, info, warning or error."""
    source: str = "<built-in defaults>"
    """Where this config came from (file path), for messages and /logs/ metadata."""


def stream_cap(config: Config, volume: VolumeSpec) -> int:
    """Streams the list-less static `volume` may hold under `config`."""
    return volume.max_streams or config.max_streams_per_volume


def default_config(logs_dir: str = "./logs") -> Config:
    """The config used without a file: one volume `local` at `logs_dir`, loopback listen."""
    return Config(volumes=(VolumeSpec(name="local", path=logs_dir),))


# --- converters from a plain YAML tree ------------------------------------------------------

KeyPath = tuple[str | int, ...]
"""Where a value sits in the document: `("volumes", 0, "containers", 1, "name")`."""
LineMap = Mapping[KeyPath, int]
"""Key path -> 1-based line of the key (or list item) in the file."""

_INVALID: Final = object()  # a value already reported as a problem
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9_])?")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_STREAM_CAP = 100_000
"""Highest `maxStreams` / `maxStreamsPerVolume` accepted: one bounded listing's worth."""


def format_key(path: KeyPath) -> str:
    """`volumes[0].containers[1].policy.logs.rotate`; odd keys quoted: `a["logvold.io/logs"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def describe_value(value: object) -> str:
    """A YAML value as a message shows it: `"weekly"`, `42`, `true`, `null`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


@functools.cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())  # scans the tz database: once per process


def _join_choices(choices: Sequence[str]) -> str:
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def _suggest(word: str, known: Iterable[str]) -> str | None:
    candidates = list(known)
    for candidate in candidates:
        if candidate.lower() == word.lower():
            return candidate
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


class _Reader:
    """Walks a YAML tree, converting values and collecting every problem found."""

    def __init__(self, file: str, lines: LineMap) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[ConfigProblem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(
            ConfigProblem(
                file=self.file, line=self._line(path), key=format_key(path), message=message
            )
        )

    def _line(self, path: KeyPath) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def raise_if_problems(self) -> None:
        if self.problems:
            ordered = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0))
            raise ConfigError(ordered)

    # --- shapes ---------------------------------------------------------------------------

    def mapping(
        self, value: object, path: KeyPath, known: Iterable[str]
    ) -> dict[str, object] | None:
        """The entries of a mapping with known keys; an absent (null) block is empty."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping, got {describe_value(value)}")
            return None
        known = tuple(known)
        entries: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.problem(path, f"keys must be strings, got {describe_value(key)}")
            elif key not in known:
                hint = _suggest(key, known)
                self.problem(
                    (*path, key),
                    f"unknown key; did you mean {hint}?"
                    if hint
                    else f"unknown key; expected one of {', '.join(known)}",
                )
            else:
                entries[key] = item
        return entries

    def items(self, value: object, path: KeyPath) -> list[object] | None:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            self.problem(path, f"expected a list, got {describe_value(value)}")
            return None
        return list(value)

    # --- scalars --------------------------------------------------------------------------

    def string(self, value: object, path: KeyPath, *, required: bool = False) -> object:
        if not isinstance(value, str):
            self.problem(path, f"expected a string, got {describe_value(value)}")
            return _INVALID
        if required and not value.strip():
            self.problem(path, "must not be empty")
            return _INVALID
        return value

    def name(self, value: object, path: KeyPath) -> object:
        """A name served in `/logs/<namespace>/<pod>/<container>`."""
        text = self.string(value, path, required=True)
        if isinstance(text, str) and not _NAME.fullmatch(text):
            self.problem(
                path,
                f"expected a name of letters, digits, '.', '_' or '-' (it is part of a URL),"
                f" got {describe_value(text)}",
            )
            return _INVALID
        return text

    def boolean(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {describe_value(value)}")
            return _INVALID
        return value

    def choice(self, value: object, path: KeyPath, choices: Sequence[str]) -> object:
        if isinstance(value, str) and value in choices:
            return value
        message = f"expected {_join_choices(choices)}, got {describe_value(value)}"
        if isinstance(value, str) and (hint := _suggest(value, choices)):
            message += f"; did you mean {hint}?"
        elif isinstance(value, bool):
            message += " (YAML reads unquoted yes/no/on/off as booleans; quote the value)"
        self.problem(path, message)
        return _INVALID

    def rotate(self, value: object, path: KeyPath) -> object:
        """Hourly, Daily, Never, or a period as a duration of whole seconds (>= 1s)."""
        if isinstance(value, str) and value in ROTATE_NAMES:
            return value
        expected = "expected Hourly, Daily, Never or a period such as 15m"
        if isinstance(value, str) and (hint := _suggest(value, ROTATE_NAMES)):
            self.problem(path, f"{expected}, got {describe_value(value)}; did you mean {hint}?")
            return _INVALID
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.problem(path, f"{expected}, got {describe_value(value)}")
            return _INVALID
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.problem(path, f"{expected}, got {describe_value(value)}")
            return _INVALID
        try:
            return rotate_period(seconds)
        except ValueError as exc:
            self.problem(path, f"{exc}, got {describe_value(value)}")
            return _INVALID

    def count(self, value: object, path: KeyPath) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"expected a whole number, got {describe_value(value)}")
            return _INVALID
        if value < 0:
            self.problem(path, f"must not be negative, got {value}")
            return _INVALID
        return value

    def stream_cap(self, value: object, path: KeyPath, *, lowest: int = 1) -> object:
        count = self.count(value, path)
        if isinstance(count, int) and not lowest <= count <= MAX_STREAM_CAP:
            self.problem(path, f"expected {lowest} to {MAX_STREAM_CAP} streams, got {count}")
            return _INVALID
        return count

    def size(self, value: object, path: KeyPath, *, positive: bool = False) -> object:
        if isinstance(value, float) and value.is_integer() and value >= 0:
            value = int(value)
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.problem(
                path, f"expected a size such as 10Mi, 512Ki or 1G, got {describe_value(value)}"
            )
            return _INVALID
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return _INVALID
        if positive and size == 0:
            self.problem(path, "must be greater than 0")
            return _INVALID
        return size

    def duration(self, value: object, path: KeyPath, *, positive: bool = False) -> object:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.problem(
                path, f"expected a duration such as 90s, 6h or 7d, got {describe_value(value)}"
            )
            return _INVALID
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return _INVALID
        if positive and seconds == 0:
            self.problem(path, "must be greater than 0")
            return _INVALID
        return seconds

    def relative_dir(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path)
        if not isinstance(text, str):
            return _INVALID
        if not text:
            return ""
        normal = posixpath.normpath(text)
        if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
            self.problem(path, f"must be a directory inside the volume, got {describe_value(text)}")
            return _INVALID
        return "" if normal == "." else normal

    def delimiter(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path)
        if not isinstance(text, str):
            return _INVALID
        try:
            return decode_delimiter(text)  # the same bytes as from `logvold run` and the driver
        except ValueError as exc:
            self.problem(path, str(exc))
            return _INVALID

    def timezone(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path, required=True)
        if not isinstance(text, str):
            return _INVALID
        try:
            zoneinfo.ZoneInfo(text)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            hint = _suggest(text, _known_timezones())
            self.problem(
                path,
                f"unknown time zone {describe_value(text)}"
                + (
                    f"; did you mean {hint}?"
                    if hint
                    else "; use an IANA name such as Europe/Berlin"
                ),
            )
            return _INVALID
        return text

    def string_map(self, value: object, path: KeyPath) -> object:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping of strings, got {describe_value(value)}")
            return _INVALID
        result: dict[str, str] = {}
        ok = True
        for key, item in value.items():
            if not isinstance(key, str):
                self.problem(path, f"keys must be strings, got {describe_value(key)}")
                ok = False
            elif not isinstance(item, str):
                self.problem(
                    (*path, key), f"expected a string, got {describe_value(item)} (quote it)"
                )
                ok = False
            else:
                result[key] = item
        return result if ok else _INVALID

    def reopen(self, value: object, path: KeyPath) -> object:
        if value is None:
            return None
        entries = self.mapping(value, path, ("signal", "pidFile", "command"))
        if entries is None:
            return _INVALID
        before = len(self.problems)
        signal_name: str | None = None
        if "signal" in entries:
            signal_name = self._signal(entries["signal"], (*path, "signal"))
        pid_file = entries.get("pidFile")
        if "pidFile" in entries and not isinstance(
            self.string(pid_file, (*path, "pidFile"), required=True), str
        ):
            pid_file = None
        command: tuple[str, ...] = ()
        if "command" in entries:
            argv = entries["command"]
            if (
                not isinstance(argv, list | tuple)
                or not argv
                or not all(isinstance(a, str) and a for a in argv)
            ):
                self.problem(
                    (*path, "command"),
                    f"expected a non-empty list of arguments such as [nginx, -s, reopen]"
                    f" (no shell), got {describe_value(argv)}",
                )
            else:
                command = tuple(str(a) for a in argv)
        if "signal" in entries and "command" in entries:
            self.problem(path, "set either signal (with pidFile) or command, not both")
        elif "signal" in entries and "pidFile" not in entries:
            self.problem(path, "signal needs pidFile: the file holding the writer's pid")
        elif "pidFile" in entries and "signal" not in entries:
            self.problem(path, "pidFile needs signal, e.g. signal: HUP")
        elif "signal" not in entries and "command" not in entries:
            self.problem(path, "set signal and pidFile, or command")
        if len(self.problems) > before:
            return _INVALID
        return ReopenAction(
            signal=signal_name,
            pid_file=pid_file if isinstance(pid_file, str) else None,
            command=command,
        )

    def _signal(self, value: object, path: KeyPath) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return signal.Signals(value).name.removeprefix("SIG")
            except ValueError:
                pass
        elif isinstance(value, str):
            name = value.strip().upper().removeprefix("SIG")
            if "SIG" + name in signal.Signals.__members__:
                return name
        self.problem(
            path, f"expected a signal name such as HUP or USR1, got {describe_value(value)}"
        )
        return None

    # --- sections -------------------------------------------------------------------------

    def policy(self, value: object, path: KeyPath, base: LogPolicy) -> LogPolicy:
        entries = self.mapping(value, path, _POLICY_FIELDS)
        if entries is None:
            return base
        changes: dict[str, Any] = {}
        for key, item in entries.items():
            field_name, convert = _POLICY_FIELDS[key]
            converted = convert(self, item, (*path, key))
            if converted is not _INVALID:
                changes[field_name] = converted
        policy = replace(base, **changes)
        if (
            policy.format != "raw"
            and policy.delimiter != b"\n"
            and ("delimiter" in changes or "format" in changes)
        ):
            where = "delimiter" if "delimiter" in entries else "format"
            self.problem(
                (*path, where),
                f"delimiter applies only to format raw; {policy.format} frames events itself",
            )
        if len(policy.delimiter) > policy.max_event_size_bytes and (
            "delimiter" in changes or "max_event_size_bytes" in changes
        ):
            where = "maxEventSize" if "maxEventSize" in entries else "delimiter"
            self.problem((*path, where), "maxEventSize must be at least the delimiter's length")
        return policy

    def server(self, value: object, path: KeyPath) -> ServerConfig:
        entries = self.mapping(value, path, ("listen", "tls", "auth", "socket", "limits"))
        changes: dict[str, Any] = {}
        if not entries:
            return ServerConfig()
        if "listen" in entries:
            listen = self.listen(entries["listen"], (*path, "listen"))
            if listen is not _INVALID:
                changes["listen"] = listen
        if "tls" in entries:
            tls_path = (*path, "tls")
            tls = self.mapping(entries["tls"], tls_path, ("certFile", "keyFile")) or {}
            files = {"certFile": "", "keyFile": ""}
            for key in files:
                if key in tls and isinstance(text := self.string(tls[key], (*tls_path, key)), str):
                    files[key] = text.strip()
            changes["tls_cert_file"], changes["tls_key_file"] = files["certFile"], files["keyFile"]
            if bool(files["certFile"]) != bool(files["keyFile"]):
                missing = "keyFile" if files["certFile"] else "certFile"
                self.problem(tls_path, f"set both certFile and keyFile; {missing} is missing")
        if "auth" in entries:
            auth_path = (*path, "auth")
            auth = self.mapping(entries["auth"], auth_path, ("mode", "cacheTTL")) or {}
            if "mode" in auth:
                mode = self.choice(
                    auth["mode"], (*auth_path, "mode"), ("local", "none", "kubernetes")
                )
                if mode is not _INVALID:
                    changes["auth"] = mode
            if "cacheTTL" in auth:
                ttl = self.duration(auth["cacheTTL"], (*auth_path, "cacheTTL"))
                if ttl is not _INVALID:
                    changes["auth_cache_ttl_s"] = ttl
        if "socket" in entries:
            changes.update(self.server_socket(entries["socket"], (*path, "socket")))
        if "limits" in entries:
            changes["limits"] = self.server_limits(entries["limits"], (*path, "limits"))
        return ServerConfig(**changes)

    def server_socket(self, value: object, path: KeyPath) -> dict[str, Any]:
        entries = self.mapping(value, path, ("path", "mode", "group")) or {}
        changes: dict[str, Any] = {}
        if "path" in entries:
            text = self.string(entries["path"], (*path, "path"))
            if isinstance(text, str):
                if text and not posixpath.isabs(text):
                    self.problem(
                        (*path, "path"), f"must be an absolute path, got {describe_value(text)}"
                    )
                else:
                    changes["socket_path"] = text
        if "mode" in entries:
            mode = entries["mode"]
            text = mode if isinstance(mode, str) else None
            if text is None or not re.fullmatch(r"0?[0-7]{3}", text):
                self.problem(
                    (*path, "mode"),
                    "expected octal permission bits as a quoted string"
                    f' such as "0660", got {describe_value(mode)}',
                )
            elif int(text, 8) & ~0o660:
                self.problem(
                    (*path, "mode"),
                    f"only read/write bits for owner and group (at most 0660), got {text}",
                )
            else:
                changes["socket_mode"] = int(text, 8)
        if "group" in entries:
            group = self.string(entries["group"], (*path, "group"))
            if isinstance(group, str):
                changes["socket_group"] = group
        return changes

    def server_limits(self, value: object, path: KeyPath) -> ServerLimits:
        keys = {
            "headerTimeout": "header_timeout_s",
            "maxConnections": "max_connections",
            "maxFollowers": "max_followers",
            "maxFollowersPerStream": "max_followers_per_stream",
            "maxHeavyReads": "max_heavy_reads",
        }
        entries = self.mapping(value, path, tuple(keys)) or {}
        changes: dict[str, Any] = {}
        for key, item in entries.items():
            where = (*path, key)
            if key == "headerTimeout":
                converted = self.duration(item, where, positive=True)
            else:
                converted = self.count(item, where)
                if converted == 0:
                    self.problem(where, "must be at least 1")
                    converted = _INVALID
            if converted is not _INVALID:
                changes[keys[key]] = converted
        return ServerLimits(**changes)

    def listen(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path, required=True)
        if not isinstance(text, str):
            return _INVALID
        host, sep, port = text.rpartition(":")
        ok = bool(sep) and port.isdigit() and int(port) <= 65535
        if ok and host.startswith("["):
            try:
                ok = host.endswith("]") and ipaddress.IPv6Address(host[1:-1]) is not None
            except ValueError:
                ok = False
        elif ok:
            ok = bool(_HOSTNAME.fullmatch(host))
        if not ok:
            self.problem(
                path,
                f"expected host:port such as 127.0.0.1:8642, 0.0.0.0:8642 or [::1]:8642,"
                f" got {describe_value(text)}",
            )
            return _INVALID
        return text

    def unique_name(
        self, item: object, path: KeyPath, first_by_name: dict[str, int], what: str
    ) -> None:
        """Report a list item whose `name` an earlier item already has."""
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            return
        if name in first_by_name:
            self.problem(
                (*path, "name"),
                f"duplicate {what} name {describe_value(name)};"
                f" first used by {what}s[{first_by_name[name]}]",
            )
        else:
            first_by_name[name] = int(path[-1])

    def volumes(self, value: object, path: KeyPath, defaults: LogPolicy) -> tuple[VolumeSpec, ...]:
        items = self.items(value, path)
        if items is None:
            return ()
        volumes: list[VolumeSpec] = []
        first_by_name: dict[str, int] = {}
        first_by_path: dict[str, int] = {}
        served: dict[tuple[str, str, str], int] = {}
        for index, item in enumerate(items):
            self.unique_name(item, (*path, index), first_by_name, "volume")
            volume = self.volume(item, (*path, index), defaults)
            if volume is None:
                continue
            normal_path = posixpath.normpath(volume.path)
            if normal_path in first_by_path:
                self.problem(
                    (*path, index, "path"),
                    f"same path as volumes[{first_by_path[normal_path]}];"
                    " two volumes would rotate the same files",
                )
            first_by_path.setdefault(normal_path, index)
            for c_index, container in enumerate(volume.containers):
                url = (volume.namespace, volume.pod or volume.name, container.name)
                if url in served:
                    self.problem(
                        (*path, index, "containers", c_index, "name"),
                        f"{'/'.join(url)} is also served by volumes[{served[url]}]",
                    )
                served.setdefault(url, index)
            volumes.append(volume)
        return tuple(volumes)

    def volume(self, value: object, path: KeyPath, defaults: LogPolicy) -> VolumeSpec | None:
        entries = self.mapping(
            value,
            path,
            (
                "name",
                "path",
                "pod",
                "namespace",
                "maxTotalSize",
                "maxStreams",
                "containers",
                "labels",
            ),
        )
        if entries is None:
            return None
        if value is None:
            self.problem(path, "expected a volume mapping with name and path")
            return None
        before = len(self.problems)
        fields: dict[str, Any] = {}
        for key in ("name", "path"):
            if key not in entries:
                self.problem(path, f"{key} is required")
        if "name" in entries:
            fields["name"] = self.name(entries["name"], (*path, "name"))
        if "path" in entries:
            fields["path"] = self.string(entries["path"], (*path, "path"), required=True)
        if "pod" in entries:
            fields["pod"] = self.name(entries["pod"], (*path, "pod"))
        if "namespace" in entries:
            fields["namespace"] = self.name(entries["namespace"], (*path, "namespace"))
        if "maxTotalSize" in entries:
            fields["max_total_size_bytes"] = self.size(
                entries["maxTotalSize"], (*path, "maxTotalSize")
            )
        if "maxStreams" in entries:
            fields["max_streams"] = self.stream_cap(
                entries["maxStreams"], (*path, "maxStreams"), lowest=0
            )
        if "containers" in entries:
            fields["containers"] = self.containers(
                entries["containers"], (*path, "containers"), defaults
            )
        if "labels" in entries:
            labels = self.string_map(entries["labels"], (*path, "labels"))
            if isinstance(labels, dict):
                fields["labels"] = labels
        if len(self.problems) > before:
            return None
        return VolumeSpec(**fields)

    def containers(
        self, value: object, path: KeyPath, defaults: LogPolicy
    ) -> tuple[ContainerSpec, ...]:
        items = self.items(value, path) or []
        containers: list[ContainerSpec] = []
        first_by_name: dict[str, int] = {}
        first_by_file: dict[str, int] = {}
        for index, item in enumerate(items):
            self.unique_name(item, (*path, index), first_by_name, "container")
            container = self.container(item, (*path, index), defaults)
            if container is None:
                continue
            active = posixpath.join(container.policy.sub_dir, container.file)
            if active in first_by_file:
                self.problem(
                    (*path, index),
                    f"active file {describe_value(active)} is also used by"
                    f" containers[{first_by_file[active]}]",
                )
            first_by_file.setdefault(active, index)
            containers.append(container)
        return tuple(containers)

    def container(self, value: object, path: KeyPath, defaults: LogPolicy) -> ContainerSpec | None:
        entries = self.mapping(value, path, ("name", "file", "policy"))
        if entries is None:
            return None
        before = len(self.problems)
        name = self.name(entries["name"], (*path, "name")) if "name" in entries else _INVALID
        if "name" not in entries:
            self.problem(path, "name is required")
        file = ""
        if "file" in entries:
            text = self.string(entries["file"], (*path, "file"), required=True)
            if isinstance(text, str):
                if "/" in text or text in (".", ".."):
                    self.problem(
                        (*path, "file"),
                        "expected a file name without '/'; put directories in policy.logs.subDir",
                    )
                file = text
        policy = defaults
        if "policy" in entries:
            policy_path = (*path, "policy")
            block = self.mapping(entries["policy"], policy_path, ("logs",)) or {}
            if "logs" in block:
                policy = self.policy(block["logs"], (*policy_path, "logs"), defaults)
        if len(self.problems) > before or not isinstance(name, str):
            return None
        return ContainerSpec(name=name, file=file or f"{name}.log", policy=policy)

    def kubernetes(self, value: object, path: KeyPath) -> KubernetesConfig:
        entries = (
            self.mapping(
                value, path, ("enabled", "nodeName", "annotationKey", "kubeletRoot", "kubeconfig")
            )
            or {}
        )
        changes: dict[str, Any] = {}
        if "enabled" in entries:
            changes["enabled"] = self.boolean(entries["enabled"], (*path, "enabled"))
        if "nodeName" in entries:
            changes["node_name"] = self.string(entries["nodeName"], (*path, "nodeName"))
        if "annotationKey" in entries:
            changes["annotation_key"] = self.annotation_key(
                entries["annotationKey"], (*path, "annotationKey")
            )
        if "kubeletRoot" in entries:
            root = self.string(entries["kubeletRoot"], (*path, "kubeletRoot"), required=True)
            if isinstance(root, str) and not posixpath.isabs(root):
                self.problem(
                    (*path, "kubeletRoot"), f"must be an absolute path, got {describe_value(root)}"
                )
                root = _INVALID
            changes["kubelet_root"] = root
        if "kubeconfig" in entries:
            changes["kubeconfig"] = self.string(entries["kubeconfig"], (*path, "kubeconfig"))
        return KubernetesConfig(**{k: v for k, v in changes.items() if v is not _INVALID})

    def annotation_key(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path, required=True)
        if not isinstance(text, str):
            return _INVALID
        prefix, _, name = text.rpartition("/")
        ok = bool(_ANNOTATION_NAME.fullmatch(name)) and len(name) <= 63
        if prefix:
            ok = ok and len(prefix) <= 253 and bool(_HOSTNAME.fullmatch(prefix))
        if not ok:
            self.problem(
                path,
                f"expected an annotation key such as logvold.io/logs, got {describe_value(text)}",
            )
            return _INVALID
        return text

    def node_log_query(self, value: object, path: KeyPath) -> NodeLogQueryConfig:
        entries = (
            self.mapping(
                value,
                path,
                ("enabled", "journal", "journalDirectory", "logDir", "timeout", "maxBytes"),
            )
            or {}
        )
        changes: dict[str, Any] = {}
        if "enabled" in entries:
            changes["enabled"] = self.boolean(entries["enabled"], (*path, "enabled"))
        if "journal" in entries:
            changes["journal"] = self.choice(
                entries["journal"], (*path, "journal"), ("auto", "always", "never")
            )
        if "journalDirectory" in entries:
            changes["journal_directory"] = self.string(
                entries["journalDirectory"], (*path, "journalDirectory")
            )
        if "logDir" in entries:
            changes["log_dir"] = self.string(entries["logDir"], (*path, "logDir"), required=True)
        if "timeout" in entries:
            changes["timeout_s"] = self.duration(
                entries["timeout"], (*path, "timeout"), positive=True
            )
        if "maxBytes" in entries:
            changes["max_bytes"] = self.size(
                entries["maxBytes"], (*path, "maxBytes"), positive=True
            )
        return NodeLogQueryConfig(**{k: v for k, v in changes.items() if v is not _INVALID})

    def config(self, value: object) -> Config:
        root: KeyPath = ()
        if value is None:
            return Config(source=self.file)
        if isinstance(value, Mapping):
            # `x-` keys hold YAML anchors for reuse, as in docker compose files.
            value = {
                k: v for k, v in value.items() if not (isinstance(k, str) and k.startswith("x-"))
            }
        entries = self.mapping(value, root, _TOP_LEVEL_KEYS)
        if entries is None:
            return Config(source=self.file)
        defaults = self.policy(entries.get("defaults"), ("defaults",), LogPolicy())
        fields: dict[str, Any] = {
            "source": self.file,
            "defaults": defaults,
            "server": self.server(entries.get("server"), ("server",)),
            "volumes": self.volumes(entries.get("volumes"), ("volumes",), defaults),
            "kubernetes": self.kubernetes(entries.get("kubernetes"), ("kubernetes",)),
            "node_log_query": self.node_log_query(entries.get("nodeLogQuery"), ("nodeLogQuery",)),
        }
        if "nodeMaxTotalSize" in entries:
            fields["node_max_total_size_bytes"] = self.size(
                entries["nodeMaxTotalSize"], ("nodeMaxTotalSize",)
            )
        if "rescanInterval" in entries:
            fields["rescan_interval_s"] = self.duration(
                entries["rescanInterval"], ("rescanInterval",), positive=True
            )
        if "maxStreamsPerVolume" in entries:
            fields["max_streams_per_volume"] = self.stream_cap(
                entries["maxStreamsPerVolume"], ("maxStreamsPerVolume",)
            )
        if "logFormat" in entries:
            fields["log_format"] = self.choice(
                entries["logFormat"], ("logFormat",), ("logfmt", "json")
            )
        if "logLevel" in entries:
            level = entries["logLevel"]
            fields["log_level"] = self.choice(
                level.lower() if isinstance(level, str) else level, ("logLevel",), _LOG_LEVELS
            )
        return Config(**{k: v for k, v in fields.items() if v is not _INVALID})


_PolicyConverter = Callable[[_Reader, object, KeyPath], object]
_POLICY_FIELDS: dict[str, tuple[str, _PolicyConverter]] = {
    "subDir": ("sub_dir", _Reader.relative_dir),
    "rotate": ("rotate", _Reader.rotate),
    "maxSize": ("max_size_bytes", _Reader.size),
    "maxFiles": ("max_files", _Reader.count),
    "maxAge": ("max_age_s", _Reader.duration),
    "maxTotalSize": ("max_total_size_bytes", _Reader.size),
    "compress": ("compress", lambda r, v, p: r.choice(v, p, ("none", "gzip", "zstd"))),
    "delayCompress": ("delay_compress", _Reader.boolean),
    "format": ("format", lambda r, v, p: r.choice(v, p, ("raw", "cri", "json-file"))),
    "delimiter": ("delimiter", _Reader.delimiter),
    "maxEventSize": ("max_event_size_bytes", lambda r, v, p: r.size(v, p, positive=True)),
    "strategy": ("strategy", lambda r, v, p: r.choice(v, p, ("punch", "rename", "copytruncate"))),
    "collapse": ("collapse", lambda r, v, p: r.choice(v, p, ("auto", "always", "never"))),
    "reopen": ("reopen", _Reader.reopen),
    "timezone": ("timezone", _Reader.timezone),
    "annotations": ("annotations", _Reader.string_map),
}
"""YAML key of a policy -> (LogPolicy field, converter)."""

POLICY_KEYS: Final = tuple(_POLICY_FIELDS)
"""The YAML keys of a `policy.logs` block, in documentation order."""

_TOP_LEVEL_KEYS = (
    "server",
    "defaults",
    "volumes",
    "kubernetes",
    "nodeLogQuery",
    "nodeMaxTotalSize",
    "rescanInterval",
    "maxStreamsPerVolume",
    "logFormat",
    "logLevel",
)


def policy_from_mapping(
    tree: object,
    *,
    file: str,
    lines: LineMap,
    key_prefix: KeyPath,
    base: LogPolicy,
) -> LogPolicy:
    """`base` overridden key by key by the `policy.logs` mapping `tree`.

    `key_prefix` is where `tree` sits in the document (keys of `lines` are full
    paths); pod annotations pass their own. Raises ConfigError with every problem.
    """
    reader = _Reader(file, lines)
    policy = reader.policy(tree, key_prefix, base)
    reader.raise_if_problems()
    return policy


def config_from_tree(tree: object, *, file: str, lines: LineMap) -> Config:
    """The Config of a whole YAML document; raises ConfigError with every problem."""
    reader = _Reader(file, lines)
    config = reader.config(tree)
    reader.raise_if_problems()
    return config
