"""The Kubernetes API as logvold uses it: credentials (kubeconfig or in-cluster),
the few raw JSON calls (list, watch, create), and Events on pods. The only
importer of the `kubernetes` client; objects stay plain dicts in wire format.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import kubernetes.client
import kubernetes.config

from logvold.core.pod_policy import PodRef
from logvold.errors import ApiStatusError, LogvoldError

if TYPE_CHECKING:
    from logvold.core.policy import KubernetesConfig

_EVENT_MESSAGE_MAX = 1024  # events.k8s.io limit; core/v1 accepts more but kubectl truncates
_REQUEST_TIMEOUT_S = 15.0


def resolve_node_name(configured: str) -> str:
    """The node whose pods are watched: the config value, else $NODE_NAME, else the host name."""
    return configured or os.environ.get("NODE_NAME", "") or socket.gethostname()


def make_api_client(config: KubernetesConfig) -> Any:
    """A `kubernetes.client.ApiClient` from `config.kubeconfig`, else the in-cluster
    service account; LogvoldError saying which is missing."""
    configuration = kubernetes.client.Configuration()
    try:
        if config.kubeconfig:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=config.kubeconfig,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except Exception as exc:  # ConfigException, OSError, yaml errors of a broken file
        where = config.kubeconfig or "the in-cluster service account"
        raise LogvoldError(
            f"cannot load Kubernetes credentials from {where}: {exc};"
            " set kubernetes.kubeconfig or run inside a pod",
            path=config.kubeconfig or None,
            op="load kubeconfig",
        ) from exc
    return kubernetes.client.ApiClient(configuration)


class KubernetesApi:
    """The few raw JSON calls logvold makes, over the client's REST layer (auth,
    TLS, proxies from the kubeconfig). Objects stay plain dicts in wire format:
    no model classes, so unknown fields and new API versions pass through."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        timeout: float | tuple[float, float] = _REQUEST_TIMEOUT_S,
    ) -> Any:
        """The open urllib3 response of a request; ApiStatusError unless 2xx."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        method, url, headers, body_out, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(
            method, url, header_params=headers, body=body_out, _request_timeout=timeout
        ).response
        if not 200 <= response.status <= 299:
            data = response.data
            response.release_conn()
            raise _status_error(response.status, data)
        return response

    def close(self) -> None:
        """Close pooled connections (the client's own thread pool included)."""
        self.api_client.close()

    def get_json(self, path: str, query: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        return _json_body(self.request("GET", path, query=query))

    def post_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST an object and return the server's answer (TokenReview, SAR, Event)."""
        return _json_body(self.request("POST", path, body=body))


def _json_body(response: Any) -> dict[str, Any]:
    try:
        value = json.loads(response.data)
    except ValueError as exc:
        raise ApiStatusError(response.status, f"not JSON: {exc}") from exc
    finally:
        response.release_conn()
    if not isinstance(value, dict):
        raise ApiStatusError(response.status, "expected a JSON object")
    return value


def _status_error(status: int, data: bytes) -> ApiStatusError:
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return ApiStatusError(status, str(body.get("message") or body.get("reason") or ""), body)
    return ApiStatusError(status, data[:200].decode("utf-8", "replace"))


class EventRecorder(Protocol):
    """Where PodDiscovery reports a rejected annotation (a fake in unit tests)."""

    def record(self, pod: PodRef, *, reason: str, message: str, type: str = "Warning") -> None: ...


class KubernetesEventRecorder:
    """Posts core/v1 Events about pods, as `kubectl describe pod` shows them."""

    def __init__(self, api: KubernetesApi, *, node_name: str, component: str = "logvold") -> None:
        self.api = api
        self.node_name = node_name
        self.component = component

    def record(self, pod: PodRef, *, reason: str, message: str, type: str = "Warning") -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": pod.namespace,
                "name": pod.name,
                "uid": pod.uid,
            },
            "reason": reason,
            "message": message[:_EVENT_MESSAGE_MAX],
            "type": type,
            "source": {"component": self.component, "host": self.node_name},
            "reportingComponent": self.component,
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.api.post_json(f"/api/v1/namespaces/{quote(pod.namespace, safe='')}/events", body)


def response_lines(response: Any) -> Iterator[bytes]:
    """Complete lines of a chunked watch stream (a JSON object per line)."""
    pending = b""
    for chunk in response.stream(65536, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if pending.strip():
        yield pending
