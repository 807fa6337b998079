"""Pod discovery on this node: list + watch the pods with spec.nodeName=<node>
and keep the registry's `source="kubernetes"` streams equal to what their
`logvold.io/logs` annotations declare.

Threading: PodDiscovery runs one daemon thread (the client is synchronous);
start() returns at once, stop() closes the open watch and joins. Registry
listeners are called from that thread.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logvold.core.pod_policy import PodRef, PodStreams
from logvold.core.streams import StreamInfo, StreamKey
from logvold.errors import ApiStatusError
from logvold.sources.annotation import pod_streams
from logvold.sources.kube_api import (
    EventRecorder,
    KubernetesApi,
    KubernetesEventRecorder,
    make_api_client,
    resolve_node_name,
    response_lines,
)

if TYPE_CHECKING:
    from logvold.core.policy import KubernetesConfig, LogPolicy
    from logvold.core.streams import StreamRegistry
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

INVALID_POLICY_REASON = "InvalidLogPolicy"
"""Reason of the Warning Event posted on a pod whose annotation is rejected."""
TOO_MANY_STREAMS_REASON = "TooManyLogStreams"
"""Reason of the Warning Event posted on a pod whose annotation declares more streams in
one volume than `maxStreamsPerVolume`."""
_LIST_PAGE_SIZE = 500

__all__ = [
    "INVALID_POLICY_REASON",
    "TOO_MANY_STREAMS_REASON",
    "Backoff",
    "EventRecorder",
    "KubernetesApi",
    "KubernetesEventRecorder",
    "PodDiscovery",
    "make_api_client",
    "resolve_node_name",
]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: the next delay is in [d/2, d]."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def delay_s(self, failures: int) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0 ** max(0, failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def cap_pod_streams(
    streams: Sequence[StreamInfo], cap: int
) -> tuple[list[StreamInfo], dict[str, list[str]]]:
    """The streams kept under `cap` per pod volume (first by container name, so the choice
    is stable), and volume -> refused container names."""
    kept: list[StreamInfo] = []
    per_volume: dict[str, int] = {}
    over: dict[str, list[str]] = {}
    for info in sorted(streams, key=lambda i: i.key.container):
        n = per_volume.get(info.volume, 0)
        if n >= cap:
            over.setdefault(info.volume, []).append(info.key.container)
            continue
        per_volume[info.volume] = n + 1
        kept.append(info)
    return kept, over


class _Gone(Exception):
    """The resourceVersion we hold is too old (410): relist."""


@dataclass
class _PodRecord:
    ref: PodRef
    keys: frozenset[StreamKey]
    rejected_annotation: str | None = None
    """The annotation text last reported as invalid (report each bad text once)."""
    capped_annotation: str | None = None
    """The annotation text last reported as over the stream cap (reported once)."""
    capped_volumes: frozenset[str] = frozenset()
    """`logvold_streams_over_cap` series of this pod (`<namespace>/<pod>/<volume>`)."""


class PodDiscovery:
    """Keeps the registry's Kubernetes streams in step with the pods on this node.

    A pod whose annotation becomes invalid keeps its previous streams (like a bad
    config reload keeps the previous config); a new pod with a bad annotation
    gets none. Either way a Warning Event `InvalidLogPolicy` is posted once per
    annotation text and `logvold_watch_errors_total{source="annotation"}` counts it.
    Deleted pods leave the registry; the daemon's "removed" listener finalises.
    """

    def __init__(
        self,
        config: KubernetesConfig,
        registry: StreamRegistry,
        metrics: Metrics | None,
        defaults: LogPolicy,
        event_recorder: EventRecorder | None = None,
        *,
        api: KubernetesApi | None = None,
        backoff: Backoff | None = None,
        watch_timeout_s: int = 300,
        max_streams_per_volume: int = 256,
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.defaults = defaults
        self.node_name = resolve_node_name(config.node_name)
        self._api = api
        self._owns_api = api is None
        self._event_recorder = event_recorder
        self._backoff = backoff or Backoff()
        self._watch_timeout_s = watch_timeout_s
        self.max_streams_per_volume = max_streams_per_volume
        """Streams one pod volume may declare; the rest are refused with an Event."""
        self._pods: dict[str, _PodRecord] = {}
        self._resource_version: str | None = None
        self._stopping = threading.Event()
        self._relist_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self._response_lock = threading.Lock()
        self.synced = threading.Event()
        """Set once the first list has been applied to the registry."""
        self.relists = 0
        """Lists done so far (the first one plus one per 410 Gone)."""

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def api(self) -> KubernetesApi:
        if self._api is None:
            self._api = KubernetesApi(make_api_client(self.config))
        return self._api

    def start(self) -> None:
        """Load credentials (LogvoldError if there are none) and start the watch thread.

        One-shot: after stop(), build a new PodDiscovery (e.g. for a changed
        `kubernetes` config section)."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("PodDiscovery is one-shot: already started or stopped")
        api = self.api
        if self._event_recorder is None:
            self._event_recorder = KubernetesEventRecorder(api, node_name=self.node_name)
        self._thread = threading.Thread(target=self._run, name="logvold-pod-discovery", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching; streams stay in the registry (the daemon is shutting down)."""
        self._stopping.set()
        self._abort_response()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("pod discovery thread did not stop within %.1fs", timeout_s)
            self._thread = None
        if self._owns_api and self._api is not None:
            self._api.close()
            self._api = None

    def wait_synced(self, timeout_s: float) -> bool:
        return self.synced.wait(timeout_s)

    def update_defaults(
        self, defaults: LogPolicy, max_streams_per_volume: int | None = None
    ) -> None:
        """New node defaults or stream cap (a config reload): every pod's policy is
        recomputed from a fresh list; streams whose policy changes are "updated"."""
        self.defaults = defaults
        if max_streams_per_volume is not None:
            self.max_streams_per_volume = max_streams_per_volume
        self._relist_requested.set()
        self._abort_response()

    # --- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if self._relist_requested.is_set():
                self._relist_requested.clear()
                self._resource_version = None
            try:
                if self._resource_version is None:
                    self._relist()
                    failures = 0
                if self._watch():
                    failures = 0
            except _Gone:
                log.info("pod watch: resourceVersion %s expired, relisting", self._resource_version)
                self._resource_version = None
            except Exception as exc:
                if self._stopping.is_set():
                    break
                if self._relist_requested.is_set():
                    continue  # update_defaults() cut the watch on purpose
                failures += 1
                delay = self._backoff.delay_s(failures)
                self._count_error("kubernetes")
                log.warning(
                    "pod watch on node %s failed (%s: %s); retrying in %.1fs",
                    self.node_name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._stopping.wait(delay)

    def _selector(self) -> tuple[str, str]:
        return ("fieldSelector", f"spec.nodeName={self.node_name}")

    def _relist(self) -> None:
        pods: list[Mapping[str, Any]] = []
        token = ""
        while True:
            query = [self._selector(), ("limit", str(_LIST_PAGE_SIZE))]
            if token:
                query.append(("continue", token))
            try:
                page = self.api.get_json("/api/v1/pods", query)
            except ApiStatusError as exc:
                if exc.status == 410:
                    raise _Gone from exc
                raise
            pods.extend(p for p in page.get("items") or [] if isinstance(p, Mapping))
            meta = page.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                break
        seen = {str((p.get("metadata") or {}).get("uid") or "") for p in pods}
        for uid in [u for u in self._pods if u not in seen]:
            self._forget_pod(uid)
        for pod in pods:
            self._apply_pod(pod)
        self._resource_version = str(meta.get("resourceVersion") or "")
        self.relists += 1
        log.info(
            "listed %d pods on node %s at resourceVersion %s",
            len(pods),
            self.node_name,
            self._resource_version,
        )
        self.synced.set()

    def _watch(self) -> bool:
        """Apply watch events until the server ends the stream; True if it ended cleanly."""
        query = [
            self._selector(),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            # Randomised like client-go's (5-10 min) so nodes do not all reconnect at once.
            ("timeoutSeconds", str(round(self._watch_timeout_s * random.uniform(1.0, 2.0)))),
        ]
        if self._resource_version:
            query.append(("resourceVersion", self._resource_version))
        try:
            response = self.api.request(
                "GET", "/api/v1/pods", query=query, timeout=(10.0, 2 * self._watch_timeout_s + 30.0)
            )
        except ApiStatusError as exc:
            if exc.status == 410:
                raise _Gone from exc
            raise
        with self._response_lock:
            self._response = response
        if self._stopping.is_set() or self._relist_requested.is_set():
            self._abort_response()  # stop()/update_defaults() ran before it could see this one
        try:
            for line in response_lines(response):
                self._on_watch_event(json.loads(line))
        finally:
            with self._response_lock:
                self._response = None
            response.release_conn()
        return True

    def _on_watch_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone
            raise ApiStatusError(int(code or 500), str(obj.get("message") or obj), obj)
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._apply_pod(obj)
        elif kind == "DELETED":
            self._forget_pod(str((obj.get("metadata") or {}).get("uid") or ""))
        elif kind != "BOOKMARK":
            log.debug("ignoring pod watch event of type %r", kind)
        if version:
            self._resource_version = str(version)

    def _abort_response(self) -> None:
        with self._response_lock:
            response = self._response
        if response is None:
            return
        try:
            response.shutdown()
        except (ValueError, RuntimeError, OSError, AttributeError):
            response.close()

    # --- pods -> registry -------------------------------------------------------------------

    def _apply_pod(self, pod: Mapping[str, Any]) -> None:
        result = pod_streams(
            pod,
            annotation_key=self.config.annotation_key,
            kubelet_root=self.config.kubelet_root,
            defaults=self.defaults,
        )
        uid = result.pod.uid
        record = self._pods.get(uid)
        if result.problems:
            self._reject(result, record)
            return
        streams, over = cap_pod_streams(result.streams, self.max_streams_per_volume)
        new_keys: set[StreamKey] = set()
        for info in streams:
            existing = self.registry.get(info.key)
            if existing is not None and existing.source != "kubernetes":
                log.warning(
                    "pod %s declares stream %s, already served from %s config; skipping it",
                    result.pod,
                    info.key,
                    existing.source,
                )
                self._count_error("annotation")
                continue
            self.registry.put(info)
            new_keys.add(info.key)
        old_keys = record.keys if record else frozenset()
        for key in old_keys - new_keys:
            self._remove_stream(key, uid)
        capped = self._report_cap(result, record, over)
        if new_keys or capped[0] is not None:
            self._pods[uid] = _PodRecord(
                ref=result.pod,
                keys=frozenset(new_keys),
                capped_annotation=capped[0],
                capped_volumes=capped[1],
            )
        else:
            self._pods.pop(uid, None)
        if record and record.rejected_annotation is not None:
            log.info("pod %s: annotation %s accepted again", result.pod, self.config.annotation_key)

    def _report_cap(
        self, result: PodStreams, record: _PodRecord | None, over: Mapping[str, list[str]]
    ) -> tuple[str | None, frozenset[str]]:
        """Log, count and post a Warning Event once per annotation text that declares more
        streams in a volume than the cap; (that text or None, the gauge series set)."""
        pod = result.pod
        series = frozenset(f"{pod.namespace}/{pod.name}/{v}" for v in over)
        if self.metrics is not None:
            for gone in (record.capped_volumes if record else frozenset()) - series:
                self.metrics.streams_over_cap.remove(gone)
            for volume, refused in over.items():
                self.metrics.streams_over_cap.labels(f"{pod.namespace}/{pod.name}/{volume}").set(
                    len(refused)
                )
        if not over:
            return None, series
        if record is not None and record.capped_annotation == result.annotation:
            return result.annotation, series
        cap = self.max_streams_per_volume
        details = "; ".join(
            f"volume {v}: {len(r)} refused ({', '.join(r[:5])}{', ...' if len(r) > 5 else ''})"
            for v, r in sorted(over.items())
        )
        message = (
            f"{self.config.annotation_key} declares more than {cap} streams in a volume "
            f"(maxStreamsPerVolume); the first {cap} by container name are managed: "
            f"{details}"
        )
        log.warning("pod %s: %s", pod, message)
        if self._event_recorder is not None:
            try:
                self._event_recorder.record(pod, reason=TOO_MANY_STREAMS_REASON, message=message)
            except Exception as exc:  # an Event is best effort; the watch goes on
                log.warning("cannot post an Event on pod %s: %s", pod, exc)
        return result.annotation, series

    def _reject(self, result: PodStreams, record: _PodRecord | None) -> None:
        if record is not None and record.rejected_annotation == result.annotation:
            return  # already reported this exact text (MODIFIED events repeat it)
        if record is None:
            record = _PodRecord(ref=result.pod, keys=frozenset())
        record.rejected_annotation = result.annotation
        self._pods[result.pod.uid] = record
        details = "; ".join(
            f"line {p.line}: {p.key}: {p.message}"
            if p.line is not None and p.key
            else (f"{p.key}: {p.message}" if p.key else p.message)
            for p in result.problems
        )
        kept = f", keeping its {len(record.keys)} stream(s) as they were" if record.keys else ""
        message = f"invalid {self.config.annotation_key} annotation{kept}: {details}"
        log.warning("pod %s: %s", result.pod, message)
        self._count_error("annotation")
        if self._event_recorder is not None:
            try:
                self._event_recorder.record(
                    result.pod, reason=INVALID_POLICY_REASON, message=message
                )
            except Exception as exc:  # an Event is best effort; the watch goes on
                log.warning("cannot post an Event on pod %s: %s", result.pod, exc)

    def _forget_pod(self, uid: str) -> None:
        record = self._pods.pop(uid, None)
        if record is None:
            return
        if self.metrics is not None:
            for series in record.capped_volumes:
                self.metrics.streams_over_cap.remove(series)
        for key in record.keys:
            self._remove_stream(key, uid)

    def _remove_stream(self, key: StreamKey, uid: str) -> None:
        # A pod recreated under the same name (StatefulSet) may already own the key.
        existing = self.registry.get(key)
        if existing is not None and existing.source == "kubernetes" and existing.pod_uid == uid:
            self.registry.remove(key)

    def _count_error(self, source: str) -> None:
        if self.metrics is not None:
            self.metrics.watch_errors.labels(source=source).inc()
