"""The configuration model: frozen policy values and their converters from a
plain YAML tree (dicts, lists, scalars) with line marks. Stdlib only; reading
the YAML file is `logvold.config_file`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Rotate = Literal["Hourly", "Daily", "Never"]
Compress = Literal["none", "gzip", "zstd"]
Format = Literal["raw", "cri", "json-file"]
Strategy = Literal["punch", "rename", "copytruncate"]
Collapse = Literal["auto", "always", "never"]
AuthMode = Literal["none", "kubernetes"]
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
    """Time trigger: cut at each Hourly/Daily period start (in `timezone`); Never = size only."""
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
    collapse: Collapse = "auto"
    """Shrink punched files with COLLAPSE_RANGE: auto = only when every writer uses O_APPEND."""
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


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The HTTP API listener."""

    listen: str = "127.0.0.1:8642"
    """host:port; loopback by default because auth defaults to none."""
    tls_cert_file: str = ""
    """PEM certificate; "" = plain HTTP. Needs `tls_key_file`."""
    tls_key_file: str = ""
    """PEM private key of `tls_cert_file`."""
    auth: AuthMode = "none"
    """none, or kubernetes: bearer tokens via TokenReview + SubjectAccessReview."""
    auth_cache_ttl_s: float = 30.0
    """Seconds a review result is cached; 30 s bounds API load and revocation delay."""


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
    log_format: LogFormat = "logfmt"
    """Format of logvold's own log lines."""
    log_level: str = "info"
    """debug, info, warning or error."""
    source: str = "<built-in defaults>"
    """Where this config came from (file path), for messages and /logs/ metadata."""


def default_config(logs_dir: str = "./logs") -> Config:
    """The config used without a file: one volume `local` at `logs_dir`, loopback listen."""
    return Config(volumes=(VolumeSpec(name="local", path=logs_dir),))


def policy_from_mapping(
    tree: object,
    *,
    file: str,
    lines: Mapping[tuple[str | int, ...], int],
    key_prefix: tuple[str | int, ...],
    base: LogPolicy,
) -> LogPolicy:
    """`base` overridden key by key by the policy mapping `tree` (a `policy.logs` block)."""
    raise NotImplementedError  # converter lands in the next commit


def config_from_tree(
    tree: object, *, file: str, lines: Mapping[tuple[str | int, ...], int]
) -> Config:
    """The Config of a YAML tree; raises ConfigError listing every problem."""
    raise NotImplementedError  # converter lands in the next commit
