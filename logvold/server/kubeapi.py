"""Just enough of the Kubernetes API for `kubectl --server=http://node:port logs` and
`kubectl get --raw`: discovery, a minimal Pod per registered pod (with its labels and
this node's name), pod lists with label and field selectors (one namespace or all:
`kubectl get pods -A`, `kubectl logs -l app=web`), namespaces, and pods/log.

pods/log follows the kubelet's byte semantics for `limitBytes`: the first N bytes,
even when that cuts an event (logvold's own `/logs/...` API keeps events whole).
Lists answer kubectl's Table request (`kubectl get` columns) as well as plain JSON.

`previous=true` is a 400: logvold keeps one stream per container name, not one per
container instance, so there is no "previous container" to serve.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from logvold import __version__
from logvold.core.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from logvold.core.streams import StreamInfo
from logvold.fileio.reader import ReadOptions
from logvold.server.keys import CONFIG_KEY, REGISTRY_KEY
from logvold.server.logs import (
    BadRequest,
    check_name,
    parse_read_options,
    serve_stream,
)

_POD_UID_NAMESPACE = uuid.UUID("5f0c6c1e-7d0b-4f7e-9a8e-3b5f6c0f9d21")


def status(
    code: int, reason: str, message: str, *, name: str = "", kind: str = "pods"
) -> web.Response:
    """A Kubernetes `Status` object, as the API server answers errors."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name:
        body["details"] = {"name": name, "kind": kind}
    return web.json_response(body, status=code)


async def _api(request: web.Request) -> web.Response:
    host = request.host or "127.0.0.1"
    return web.json_response(
        {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }
    )


async def _apis(request: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})


async def _api_v1(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1",
            "resources": [
                {
                    "name": "pods",
                    "singularName": "pod",
                    "namespaced": True,
                    "kind": "Pod",
                    "verbs": ["get", "list"],
                    "shortNames": ["po"],
                    "categories": ["all"],
                },
                {
                    "name": "pods/log",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "Pod",
                    "verbs": ["get"],
                },
                {
                    "name": "namespaces",
                    "singularName": "namespace",
                    "namespaced": False,
                    "kind": "Namespace",
                    "verbs": ["get", "list"],
                    "shortNames": ["ns"],
                },
            ],
        }
    )


def _namespace_object(ns: str) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": ns},
        "status": {"phase": "Active"},
    }


async def _namespace(request: web.Request) -> web.Response:
    """kubectl asks for the namespace after a pod 404, to word its error."""
    ns = request.match_info["namespace"]
    if any(i.key.namespace == ns for i in request.app[REGISTRY_KEY].snapshot()):
        return web.json_response(_namespace_object(ns))
    return status(
        404, "NotFound", f'namespaces "{ns[:253]}" not found', name=ns[:253], kind="namespaces"
    )


async def _not_found(request: web.Request) -> web.Response:
    return status(404, "NotFound", "the server could not find the requested resource")


async def _version(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "major": "1",
            "minor": "33",
            "gitVersion": f"v1.33.0-logvold-{__version__}",
            "platform": "linux/amd64",
        }
    )


def _containers(request: web.Request, namespace: str, pod: str) -> list[StreamInfo]:
    check_name("namespace", namespace)
    check_name("pod", pod)
    return request.app[REGISTRY_KEY].find(namespace, pod)


def pod_object(
    namespace: str, pod: str, streams: list[StreamInfo], node_name: str = ""
) -> dict[str, Any]:
    """A minimal Pod: what kubectl reads before asking for logs."""
    uid = next((s.pod_uid for s in streams if s.pod_uid), "") or str(
        uuid.uuid5(_POD_UID_NAMESPACE, f"{namespace}/{pod}")
    )
    names = [s.key.container for s in streams]
    labels: dict[str, str] = {}
    for s in streams:
        labels.update(s.labels)
    spec: dict[str, Any] = {"containers": [{"name": n, "image": "logvold/stream"} for n in names]}
    if node_name:
        spec["nodeName"] = node_name
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod,
            "namespace": namespace,
            "uid": uid,
            "labels": labels,
            "annotations": dict(streams[0].annotations) if streams else {},
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": n,
                    "ready": True,
                    "restartCount": 0,
                    "image": "logvold/stream",
                    "imageID": "",
                    "state": {"running": {}},
                }
                for n in names
            ],
        },
    }


async def _pod(request: web.Request) -> web.Response:
    ns, pod = request.match_info["namespace"], request.match_info["pod"]
    try:
        streams = _containers(request, ns, pod)
    except BadRequest as e:
        return status(400, "BadRequest", str(e))
    if not streams:
        return status(404, "NotFound", f'pods "{pod}" not found', name=pod)
    return web.json_response(pod_object(ns, pod, streams, node_name(request)))


def node_name(request: web.Request) -> str:
    """This node's name as discovery uses it (config, else $NODE_NAME, else the host name)."""
    configured = request.app[CONFIG_KEY].kubernetes.node_name
    return configured or os.environ.get("NODE_NAME", "") or socket.gethostname()


POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")
NAMESPACE_FIELDS = ("metadata.name", "status.phase")


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def _selectors(
    request: web.Request, fields: tuple[str, ...]
) -> tuple[LabelSelector, FieldSelector]:
    q = request.query
    for name in ("labelSelector", "fieldSelector"):
        if len(q.getall(name, [])) > 1:
            raise SelectorError(f"{name} given more than once")
    return (
        parse_label_selector(q.get("labelSelector", "")),
        parse_field_selector(q.get("fieldSelector", ""), fields),
    )


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _table(
    columns: list[tuple[str, str]],
    items: list[dict[str, Any]],
    cells: Callable[[dict[str, Any]], list[Any]],
) -> web.Response:
    """kubectl get's server-side printing: a meta.k8s.io Table with the objects' metadata."""
    return web.json_response(
        {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {},
            "columnDefinitions": [
                {
                    "name": n,
                    "type": t,
                    "format": "name" if n == "Name" else "",
                    "description": "",
                    "priority": 0,
                }
                for n, t in columns
            ],
            "rows": [
                {
                    "cells": cells(o),
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    },
                }
                for o in items
            ],
        }
    )


async def _pods(request: web.Request) -> web.Response:
    """Pods of one namespace, or of all (`/api/v1/pods`, `kubectl get pods -A`)."""
    ns = request.match_info.get("namespace")
    try:
        if ns is not None:
            check_name("namespace", ns)
        labels, fields = _selectors(request, POD_FIELDS)
    except BadRequest as e:
        return status(400, "BadRequest", str(e))
    pods: dict[tuple[str, str], list[StreamInfo]] = {}
    for info in request.app[REGISTRY_KEY].snapshot():
        if ns is None or info.key.namespace == ns:
            pods.setdefault((info.key.namespace, info.key.pod), []).append(info)
    node = node_name(request)
    items = []
    for (n, p), s in sorted(pods.items()):
        obj = pod_object(n, p, s, node)
        if labels.matches(obj["metadata"]["labels"]) and fields.matches(
            functools.partial(_field, obj)
        ):
            items.append(obj)
    if _wants_table(request):
        return _table(
            [
                ("Name", "string"),
                ("Ready", "string"),
                ("Status", "string"),
                ("Restarts", "string"),
                ("Age", "string"),
            ],
            items,
            lambda o: [
                o["metadata"]["name"],
                f"{len(o['spec']['containers'])}/{len(o['spec']['containers'])}",
                "Running",
                "0",
                "<unknown>",
            ],
        )
    return web.json_response(
        {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
    )


async def _namespaces(request: web.Request) -> web.Response:
    """Namespaces that hold a registered stream (`kubectl get ns`)."""
    try:
        labels, fields = _selectors(request, NAMESPACE_FIELDS)
    except BadRequest as e:
        return status(400, "BadRequest", str(e))
    names = sorted({i.key.namespace for i in request.app[REGISTRY_KEY].snapshot()})
    items = []
    for n in names:
        obj = _namespace_object(n)
        if labels.matches({}) and fields.matches(functools.partial(_field, obj)):
            items.append(obj)
    if _wants_table(request):
        return _table(
            [("Name", "string"), ("Status", "string"), ("Age", "string")],
            items,
            lambda o: [o["metadata"]["name"], "Active", "<unknown>"],
        )
    return web.json_response(
        {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {}, "items": items}
    )


async def _pod_log(request: web.Request) -> web.StreamResponse:
    ns, pod = request.match_info["namespace"], request.match_info["pod"]
    query = request.query
    try:
        streams = _containers(request, ns, pod)
        if not streams:
            return status(404, "NotFound", f'pods "{pod}" not found', name=pod)
        container = query.get("container", "")
        if len(query.getall("container", [])) > 1:
            raise BadRequest("container given more than once")
        if query.get("previous", "false").lower() in ("true", "1", "t"):
            return status(
                400,
                "BadRequest",
                "previous is not supported: logvold keeps one "
                "stream per container name, across restarts",
                name=pod,
            )
        names = [s.key.container for s in streams]
        if not container:
            if len(streams) > 1:
                return status(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod "
                    f"{pod}, choose one of: [{' '.join(names)}]",
                    name=pod,
                )
            info = streams[0]
        else:
            check_name("container", container)
            found = [s for s in streams if s.key.container == container]
            if not found:
                return status(
                    400, "BadRequest", f"container {container} is not valid for pod {pod}", name=pod
                )
            info = found[0]
        options = parse_read_options(query)
    except BadRequest as e:  # bad parameters, names and patterns
        return status(400, "BadRequest", str(e), name=pod)
    return await serve_kubelet_style(request, info, options, handler="pod_log")


async def serve_kubelet_style(
    request: web.Request, info: StreamInfo, options: ReadOptions, *, handler: str
) -> web.StreamResponse:
    """A stream with the kubelet's `limitBytes`: the first N bytes, an event may be cut."""
    limit = options.limit_bytes
    return await serve_stream(
        request,
        info,
        dataclasses.replace(options, limit_bytes=None),
        handler=handler,
        byte_limit=limit,
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api", _api, name="kube_api")
    r.add_get("/api/", _api, name="kube_api_slash")
    r.add_get("/apis", _apis, name="kube_apis")
    r.add_get("/apis/", _apis, name="kube_apis_slash")
    r.add_get("/api/v1", _api_v1, name="kube_api_v1")
    r.add_get("/api/v1/", _api_v1, name="kube_api_v1_slash")
    r.add_get("/version", _version, name="kube_version")
    r.add_get("/api/v1/namespaces/{namespace}/pods", _pods, name="kube_pods")
    r.add_get("/api/v1/pods", _pods, name="kube_pods_all")
    r.add_get("/api/v1/namespaces", _namespaces, name="kube_namespaces")
    r.add_get("/api/v1/namespaces/{namespace}/pods/{pod}", _pod, name="kube_pod")
    r.add_get(
        "/api/v1/namespaces/{namespace}/pods/{pod}/log",
        _pod_log,
        name="kube_pod_log",
        allow_head=False,
    )
    r.add_get("/api/v1/namespaces/{namespace}", _namespace, name="kube_namespace")
    r.add_get("/api/{rest:.*}", _not_found, name="kube_not_found")
    r.add_get("/apis/{rest:.*}", _not_found, name="kube_apis_not_found")
