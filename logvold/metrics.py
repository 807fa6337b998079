"""Every Prometheus metric logvold exposes; the only importer of prometheus_client.

One `Metrics` object per process owns its own CollectorRegistry, so tests can
build several without clashing, and components receive it explicitly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from logvold import __version__

_STREAM = ("namespace", "pod", "container")


class Metrics:
    """The `logvold_*` metrics of DESIGN.md, registered in one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Info("logvold_build", "Version of the running logvold.", registry=r)
        self.build_info.info({"version": __version__})
        self.bytes_written = Counter(
            "logvold_bytes_written_total",
            "Bytes of events written to streams by logvold writers.",
            _STREAM,
            registry=r,
        )
        self.events_written = Counter(
            "logvold_events_written_total",
            "Whole events written by logvold writers.",
            _STREAM,
            registry=r,
        )
        self.events_split = Counter(
            "logvold_events_split_total",
            "Events cut because they exceeded maxEventSize (0 below it).",
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

    def exposition(self) -> tuple[bytes, str]:
        """The classic text format (promtool rejects OpenMetrics) and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
