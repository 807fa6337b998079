"""Every Prometheus metric logvold exposes; the only importer of prometheus_client.

One `Metrics` object per process owns its own CollectorRegistry, so tests can
build several without clashing, and components receive it explicitly.

Label values that alerts count with `increase()` exist at 0 before the first
event (a series born at 1 shows no increase, so the first failure would never
alert): the closed sets below at start, and each stream's series when the
stream is added (`add_stream`); `remove_stream` deletes a stream's series so a
node's series count follows its pods. `_created` series are off (they double
every counter and no rule reads them); process and platform collectors are on.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from logvold import __version__

_STREAM = ("namespace", "pod", "container")

#: `error` values of logvold_rotation_failures_total (workers map anything else to "internal").
ROTATION_ERRORS = ("io", "not-regular", "reopen", "unsafe", "internal")
#: `reason` values of logvold_truncations_total.
TRUNCATION_REASONS = ("maxAge", "maxFiles", "maxTotalSize", "budget", "writer", "retention", "hole")
#: `reason` values of logvold_bytes_freed_total.
FREED_REASONS = ("rotate", "delete", "trim", "truncate")
#: `result` values of logvold_config_reloads_total.
RELOAD_RESULTS = ("success", "error")
#: `source` values of logvold_watch_errors_total.
WATCH_SOURCES = ("inotify", "static", "kubernetes", "annotation")
#: `algorithm` values of logvold_compressions_total.
COMPRESSION_ALGORITHMS = ("gzip", "zstd")
#: `handler` values of logvold_bytes_served_total / logvold_events_served_total.
SERVING_HANDLERS = ("logs", "pod_log", "container_logs", "nodelog")
#: `kind` values of logvold_unsafe_files_refused_total (fileio.safedir.RefusalKind).
REFUSAL_KINDS = (
    "symlink",
    "not-regular",
    "not-directory",
    "hardlink",
    "outside",
    "too-big",
    "too-many",
)
#: `reason` values of logvold_http_refused_total (server.limits).
HTTP_REFUSAL_REASONS = (
    "connections",
    "idle_evicted",
    "followers",
    "stream_followers",
    "heavy_reads",
    "accept_error",
)
#: HTTP code recorded when the client hung up before the response ended (nginx's 499).
CLIENT_CLOSED_REQUEST = 499

disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The `logvold_*` metrics of DESIGN.md, registered in one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # process_* (memory, fds, CPU: the DaemonSet sets limits) and python_info.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("logvold_build", "Version of the running logvold.", registry=r)
        self.build_info.info({"version": __version__})
        self.bytes_written = Counter(
            "logvold_bytes_written_total",
            "Bytes written to streams; a foreign writer's are counted at each rotation, by "
            "what the new segment holds.",
            _STREAM,
            registry=r,
        )
        self.events_written = Counter(
            "logvold_events_written_total",
            "Events written to streams (counted like the bytes: at each rotation).",
            _STREAM,
            registry=r,
        )
        self.events_split = Counter(
            "logvold_events_split_total",
            "Cuts of events longer than maxEventSize (counted at each rotation).",
            _STREAM,
            registry=r,
        )
        self.rotations = Counter(
            "logvold_rotations_total",
            "Rotations by trigger.",
            (*_STREAM, "reason", "strategy"),
            registry=r,
        )
        self.rotation_failures = Counter(
            "logvold_rotation_failures_total",
            "Rotations that failed and will be retried.",
            (*_STREAM, "error"),
            registry=r,
        )
        self.rotation_seconds = Histogram(
            "logvold_rotation_duration_seconds",
            "Time from trigger to committed rotation.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.truncations = Counter(
            "logvold_truncations_total",
            "Retention truncations by reason.",
            (*_STREAM, "reason"),
            registry=r,
        )
        self.bytes_freed = Counter(
            "logvold_bytes_freed_total",
            "Bytes freed by punching, deleting or truncating.",
            (*_STREAM, "reason"),
            registry=r,
        )
        self.lost_bytes = Counter(
            "logvold_copytruncate_lost_bytes_total",
            "Bytes at risk of loss under copytruncate (written between copy and truncate).",
            _STREAM,
            registry=r,
        )
        self.segments = Gauge(
            "logvold_stream_segments", "Closed segments per stream.", _STREAM, registry=r
        )
        self.disk_usage = Gauge(
            "logvold_stream_disk_usage_bytes",
            "Allocated bytes of a stream (segments and active file).",
            _STREAM,
            registry=r,
        )
        self.streams = Gauge("logvold_streams", "Streams currently managed.", registry=r)
        self.streams_over_cap = Gauge(
            "logvold_streams_over_cap",
            "*.log files (or containers of a pod volume) not managed because the volume "
            "holds more than its maxStreams; 0 while under the cap.",
            ("volume",),
            registry=r,
        )
        self.compressions = Counter(
            "logvold_compressions_total", "Segments compressed.", ("algorithm",), registry=r
        )
        self.reloads = Counter(
            "logvold_config_reloads_total", "Config reloads by result.", ("result",), registry=r
        )
        self.watch_errors = Counter(
            "logvold_watch_errors_total", "File or pod watch errors.", ("source",), registry=r
        )
        self.io_errors = Counter(
            "logvold_io_errors_total",
            "I/O errors by operation and errno name.",
            ("op", "errno"),
            registry=r,
        )
        self.bytes_served = Counter(
            "logvold_bytes_served_total", "Bytes sent to HTTP clients.", ("handler",), registry=r
        )
        self.events_served = Counter(
            "logvold_events_served_total", "Events sent to HTTP clients.", ("handler",), registry=r
        )
        self.http_requests = Counter(
            "logvold_http_requests_total",
            "HTTP requests by handler and code.",
            ("handler", "code"),
            registry=r,
        )
        self.http_seconds = Histogram(
            "logvold_http_request_duration_seconds",
            "HTTP request latency until the response started.",
            ("handler",),
            registry=r,
        )
        self.followers = Gauge("logvold_followers", "Open follow=true connections.", registry=r)
        self.unsafe_refused = Counter(
            "logvold_unsafe_files_refused_total",
            "Files or directories in a volume that logvold refused to touch (symlink, "
            "not-regular, not-directory, hardlink, outside, too-big, too-many).",
            ("kind",),
            registry=r,
        )
        # Server limits (server.limits): connections, followers, stream_followers,
        # heavy_reads, accept_error.
        self.http_refused = Counter(
            "logvold_http_refused_total",
            "Connections or requests refused by a server limit, by reason.",
            ("reason",),
            registry=r,
        )

        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        for source in WATCH_SOURCES:
            self.watch_errors.labels(source)
        for algorithm in COMPRESSION_ALGORITHMS:
            self.compressions.labels(algorithm)
        for handler in SERVING_HANDLERS:
            self.bytes_served.labels(handler)
            self.events_served.labels(handler)
        for kind in REFUSAL_KINDS:
            self.unsafe_refused.labels(kind)
        for reason in HTTP_REFUSAL_REASONS:
            self.http_refused.labels(reason)

    def _per_stream(self) -> tuple[tuple[Counter | Gauge, tuple[str, ...]], ...]:
        """Every metric labelled by stream, with its label names in declaration order."""
        return (
            (self.bytes_written, _STREAM),
            (self.events_written, _STREAM),
            (self.events_split, _STREAM),
            (self.lost_bytes, _STREAM),
            (self.segments, _STREAM),
            (self.disk_usage, _STREAM),
            (self.rotations, (*_STREAM, "reason", "strategy")),
            (self.rotation_failures, (*_STREAM, "error")),
            (self.truncations, (*_STREAM, "reason")),
            (self.bytes_freed, (*_STREAM, "reason")),
        )

    def add_stream(self, namespace: str, pod: str, container: str) -> None:
        """Create a new stream's counted series at 0 (idempotent: existing values stay)."""
        key = (namespace, pod, container)
        for metric in (
            self.bytes_written,
            self.events_written,
            self.events_split,
            self.lost_bytes,
            self.segments,
            self.disk_usage,
        ):
            metric.labels(*key)
        for error in ROTATION_ERRORS:
            self.rotation_failures.labels(*key, error)
        for reason in TRUNCATION_REASONS:
            self.truncations.labels(*key, reason)

    def remove_stream(self, namespace: str, pod: str, container: str) -> None:
        """Delete every series of a stream that went away (any extra label values)."""
        key = (namespace, pod, container)
        for metric, names in self._per_stream():
            for values in _label_sets(metric, names):
                if values[:3] == key:
                    metric.remove(*values)

    def observe_written(
        self, namespace: str, pod: str, container: str, *, nbytes: int, events: int, split: int
    ) -> None:
        """Bytes and whole events a writer put into a stream (a foreign writer's are seen
        when a rotation cuts them), and events cut at maxEventSize."""
        key = (namespace, pod, container)
        self.bytes_written.labels(*key).inc(max(nbytes, 0))
        self.events_written.labels(*key).inc(max(events, 0))
        self.events_split.labels(*key).inc(max(split, 0))

    def stream_totals(self) -> dict[tuple[str, str, str], dict[str, float]]:
        """Per stream: `rotations` and `failures` so far (for the status page)."""
        out: dict[tuple[str, str, str], dict[str, float]] = {}
        for name, metric in (("rotations", self.rotations), ("failures", self.rotation_failures)):
            for family in metric.collect():
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    key = (
                        sample.labels.get("namespace", ""),
                        sample.labels.get("pod", ""),
                        sample.labels.get("container", ""),
                    )
                    totals = out.setdefault(key, {"rotations": 0.0, "failures": 0.0})
                    totals[name] += sample.value
        return out

    def exposition(self) -> tuple[bytes, str]:
        """The classic text format (promtool rejects OpenMetrics) and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _label_sets(metric: Counter | Gauge, names: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
    """The label value tuples a labelled metric has children for (public collect() API)."""
    seen: set[tuple[str, ...]] = set()
    for family in metric.collect():
        for sample in family.samples:
            seen.add(tuple(sample.labels.get(n, "") for n in names))
    return seen
