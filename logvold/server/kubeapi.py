"""Just enough of the Kubernetes API for `kubectl --server=http://node:port logs` and
`kubectl get --raw`: discovery, a minimal Pod per registered pod, and pods/log.

`previous=true` is a 400: logvold keeps one stream per container name, not one per
container instance, so there is no "previous container" to serve.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from logvold import __version__
from logvold.core.streams import StreamInfo
from logvold.server.app import REGISTRY_KEY
from logvold.server.logs import (
    BadRequest,
    check_name,
    parse_read_options,
    serve_stream,
)

_POD_UID_NAMESPACE = uuid.UUID("5f0c6c1e-7d0b-4f7e-9a8e-3b5f6c0f9d21")


def status(code: int, reason: str, message: str, *, name: str = "",
           kind: str = "pods") -> web.Response:
    """A Kubernetes `Status` object, as the API server answers errors."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}
    if name:
        body["details"] = {"name": name, "kind": kind}
    return web.json_response(body, status=code)


async def _api(request: web.Request) -> web.Response:
    host = request.host or "127.0.0.1"
    return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                              "serverAddressByClientCIDRs": [
                                  {"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})


async def _apis(request: web.Request) -> web.Response:
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})


async def _api_v1(request: web.Request) -> web.Response:
    return web.json_response({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
             "verbs": ["get", "list"], "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
             "verbs": ["get"]},
            {"name": "namespaces", "singularName": "namespace", "namespaced": False,
             "kind": "Namespace", "verbs": ["get"], "shortNames": ["ns"]},
        ]})


async def _namespace(request: web.Request) -> web.Response:
    """kubectl asks for the namespace after a pod 404, to word its error."""
    ns = request.match_info["namespace"]
    if any(i.key.namespace == ns for i in request.app[REGISTRY_KEY].snapshot()):
        return web.json_response({"kind": "Namespace", "apiVersion": "v1",
                                  "metadata": {"name": ns}, "status": {"phase": "Active"}})
    return status(404, "NotFound", f'namespaces "{ns[:253]}" not found', name=ns[:253],
                  kind="namespaces")


async def _not_found(request: web.Request) -> web.Response:
    return status(404, "NotFound", "the server could not find the requested resource")


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"major": "1", "minor": "33", "gitVersion": f"v1.33.0-logvold-"
                              f"{__version__}", "platform": "linux/amd64"})


def _containers(request: web.Request, namespace: str, pod: str) -> list[StreamInfo]:
    check_name("namespace", namespace)
    check_name("pod", pod)
    return request.app[REGISTRY_KEY].find(namespace, pod)


def pod_object(namespace: str, pod: str, streams: list[StreamInfo]) -> dict[str, Any]:
    """A minimal Pod: what kubectl reads before asking for logs."""
    uid = next((s.pod_uid for s in streams if s.pod_uid), "") or str(
        uuid.uuid5(_POD_UID_NAMESPACE, f"{namespace}/{pod}"))
    names = [s.key.container for s in streams]
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": pod, "namespace": namespace, "uid": uid,
                     "annotations": dict(streams[0].annotations) if streams else {}},
        "spec": {"containers": [{"name": n, "image": "logvold/stream"} for n in names]},
        "status": {"phase": "Running",
                   "containerStatuses": [{"name": n, "ready": True, "restartCount": 0,
                                          "image": "logvold/stream", "imageID": "",
                                          "state": {"running": {}}} for n in names]},
    }


async def _pod(request: web.Request) -> web.Response:
    ns, pod = request.match_info["namespace"], request.match_info["pod"]
    try:
        streams = _containers(request, ns, pod)
    except BadRequest as e:
        return status(400, "BadRequest", str(e))
    if not streams:
        return status(404, "NotFound", f'pods "{pod}" not found', name=pod)
    return web.json_response(pod_object(ns, pod, streams))


async def _pods(request: web.Request) -> web.Response:
    ns = request.match_info["namespace"]
    try:
        check_name("namespace", ns)
    except BadRequest as e:
        return status(400, "BadRequest", str(e))
    pods: dict[str, list[StreamInfo]] = {}
    for info in request.app[REGISTRY_KEY].snapshot():
        if info.key.namespace == ns:
            pods.setdefault(info.key.pod, []).append(info)
    return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                              "items": [pod_object(ns, p, s) for p, s in sorted(pods.items())]})


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
            return status(400, "BadRequest", "previous is not supported: logvold keeps one "
                          "stream per container name, across restarts", name=pod)
        names = [s.key.container for s in streams]
        if not container:
            if len(streams) > 1:
                return status(400, "BadRequest", f"a container name must be specified for pod "
                              f"{pod}, choose one of: [{' '.join(names)}]", name=pod)
            info = streams[0]
        else:
            check_name("container", container)
            found = [s for s in streams if s.key.container == container]
            if not found:
                return status(400, "BadRequest", f"container {container} is not valid for pod "
                              f"{pod}", name=pod)
            info = found[0]
        options = parse_read_options(query)
    except ValueError as e:  # BadRequest and invalid patterns
        return status(400, "BadRequest", str(e), name=pod)
    return await serve_stream(request, info, options, handler="pod_log")


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
    r.add_get("/api/v1/namespaces/{namespace}/pods/{pod}", _pod, name="kube_pod")
    r.add_get("/api/v1/namespaces/{namespace}/pods/{pod}/log", _pod_log, name="kube_pod_log",
              allow_head=False)
    r.add_get("/api/v1/namespaces/{namespace}", _namespace, name="kube_namespace")
    r.add_get("/api/{rest:.*}", _not_found, name="kube_not_found")
    r.add_get("/apis/{rest:.*}", _not_found, name="kube_apis_not_found")
