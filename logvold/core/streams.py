"""The registry of known streams: who adds them (static config, discovery) and
who reads them (rotator, HTTP API) meet here, without knowing each other."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from logvold.core.policy import LogPolicy

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """How clients name a stream: `/logs/<namespace>/<pod>/<container>`."""

    namespace: str
    pod: str
    container: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@dataclass(frozen=True, kw_only=True)
class StreamInfo:
    """Where a stream lives on disk and the policy that governs it."""

    key: StreamKey
    directory: Path
    """Directory holding the active file, its segments and `.logvold/` state."""
    base: str
    """Active file name, e.g. `app.log`; segments are `<base>.<stamp>...`."""
    policy: LogPolicy
    volume: str
    """Logging volume name (static config or the pod's emptyDir volume)."""
    source: str = "static"
    """Who registered it: `static`, `kubernetes`, `driver`."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Context metadata served with the stream (the proposal's annotations)."""
    pod_uid: str = ""
    root: Path | None = None
    """Safety root: the volume directory the stream must stay inside (the pod's own
    emptyDir for discovered streams, the configured path for static ones). Every file
    operation walks from it without following symlinks (`fileio.safedir`). None: the
    stream's own directory is its root (logvold's own writers)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The pod's labels (discovery: metadata.labels; static: the volume's `labels`), for
    kubectl's label selectors (`kubectl logs -l app=web`)."""

    @property
    def active_path(self) -> Path:
        return self.directory / self.base


Listener = Callable[[str, StreamInfo], None]
"""Called with ("added" | "removed" | "updated", info) after each change."""


class StreamRegistry:
    """Thread-safe map StreamKey -> StreamInfo with change listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[StreamKey, StreamInfo] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def put(self, info: StreamInfo) -> None:
        """Add or replace a stream; listeners hear "added" or "updated"."""
        with self._lock:
            old = self._streams.get(info.key)
            self._streams[info.key] = info
            listeners = list(self._listeners)
        if old != info:
            for listener in listeners:
                listener("updated" if old is not None else "added", info)

    def remove(self, key: StreamKey) -> StreamInfo | None:
        with self._lock:
            info = self._streams.pop(key, None)
            listeners = list(self._listeners)
        if info is not None:
            for listener in listeners:
                listener("removed", info)
        return info

    def get(self, key: StreamKey) -> StreamInfo | None:
        with self._lock:
            return self._streams.get(key)

    def find(self, namespace: str, pod: str, container: str | None = None) -> list[StreamInfo]:
        """Streams of a pod (all its containers when `container` is None), sorted."""
        with self._lock:
            found = [
                i
                for k, i in self._streams.items()
                if k.namespace == namespace
                and k.pod == pod
                and (container is None or k.container == container)
            ]
        return sorted(found, key=lambda i: i.key)

    def snapshot(self) -> list[StreamInfo]:
        with self._lock:
            return sorted(self._streams.values(), key=lambda i: i.key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)
