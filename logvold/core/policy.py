"""The configuration model: frozen policy values (a volume's, a container's, the server's).

Stdlib only. Converting a plain YAML tree into these values, with a message naming file,
line and key for every problem, is `core.policy_reader`'s job; reading the YAML file is
`logvold.config.yaml_file`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from logvold.core.log_policy import (  # re-exported: the model's values, one import away
    ROTATE_NAMES as ROTATE_NAMES,
)
from logvold.core.log_policy import Collapse as Collapse
from logvold.core.log_policy import Compress as Compress
from logvold.core.log_policy import Format as Format
from logvold.core.log_policy import LogPolicy as LogPolicy
from logvold.core.log_policy import ReopenAction as ReopenAction
from logvold.core.log_policy import Rotate as Rotate
from logvold.core.log_policy import Strategy as Strategy
from logvold.core.log_policy import period_seconds as period_seconds

AuthMode = Literal["local", "none", "kubernetes"]
JournalMode = Literal["auto", "always", "never"]
LogFormat = Literal["logfmt", "json"]


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
