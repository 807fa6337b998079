"""The configuration model: frozen policy values (a volume's, a container's, the server's).

Stdlib only. Converting a plain YAML tree into these values, with a message naming file,
line and key for every problem, is `core.policy_reader`'s job; reading the YAML file is
`logvold.config.yaml_file`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

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
