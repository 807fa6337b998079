"""A loopback stand-in for kube-apiserver that speaks the real wire format of
the few endpoints logvold uses.

Why not the real server: no kube-apiserver, etcd or envtest can be installed on
these machines (ECOSYSTEM.md). The client side stays real: the `kubernetes`
Python client, a kubeconfig file, bearer-token auth, chunked HTTP/1.1 watch
streams. Implemented, as the API server does it:
- GET /api/v1/pods?fieldSelector=spec.nodeName=N: a PodList with
  metadata.resourceVersion (limit/continue ignored, as a server may);
- the same with watch=true&resourceVersion=RV: chunked JSON lines
  {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...} for every
  change after RV; an RV older than the compaction point gets an ERROR event
  carrying a 410 Expired Status (what the real server sends on a watch);
- POST /api/v1/namespaces/NS/events, TokenReview, SubjectAccessReview (201).
Test hooks: compact(), drop_watches() (abrupt disconnect), refuse_watches.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_TOKEN = "logvold-test-serviceaccount-token"
"""The token the kubeconfig carries; every other bearer token gets 401."""

Json = dict[str, Any]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Json | None = None


@dataclass
class FakeState:
    pods: dict[str, Json] = field(default_factory=dict)
    history: list[tuple[int, str, Json]] = field(default_factory=list)
    resource_version: int = 1000
    compacted_rv: int = 0
    drop_generation: int = 0
    refuse_watches: bool = False
    refused_watches: int = 0
    """Watch requests answered 503 because of refuse_watches."""
    requests: list[RecordedRequest] = field(default_factory=list)
    events: list[Json] = field(default_factory=list)
    tokens: dict[str, Json] = field(default_factory=dict)
    """bearer token -> UserInfo answered by TokenReview."""
    allow: Callable[[Json], tuple[bool, str]] = lambda spec: (False, "no rule")
    """SubjectAccessReview spec -> (allowed, reason)."""


class FakeKubeApi:
    """The server and its state; all mutators are thread-safe."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.cond = threading.Condition()
        handler = type("Handler", (_Handler,), {"api": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        # Cut watches make the handler's final flush fail; that is the point, not news.
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.drop_watches()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "logvold", "user": {"token": API_TOKEN}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "logvold"}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # --- pods -------------------------------------------------------------------------------

    def _record(self, kind: str, pod: Json) -> Json:
        with self.cond:
            self.state.resource_version += 1
            rv = self.state.resource_version
            pod = copy.deepcopy(pod)
            pod["metadata"]["resourceVersion"] = str(rv)
            uid = pod["metadata"]["uid"]
            if kind == "DELETED":
                self.state.pods.pop(uid, None)
            else:
                self.state.pods[uid] = pod
            self.state.history.append((rv, kind, pod))
            self.cond.notify_all()
            return pod

    def add_pod(self, pod: Json) -> Json:
        return self._record("ADDED", pod)

    def update_pod(self, pod: Json) -> Json:
        return self._record("MODIFIED", pod)

    def delete_pod(self, uid: str) -> Json:
        with self.cond:
            pod = self.state.pods[uid]
        return self._record("DELETED", pod)

    def compact(self) -> None:
        """Forget history: a watch from any RV before now gets 410 Gone."""
        with self.cond:
            self.state.compacted_rv = self.state.resource_version
            self.state.history.clear()

    def drop_watches(self) -> None:
        """Cut every open watch connection without the terminating chunk."""
        with self.cond:
            self.state.drop_generation += 1
            self.cond.notify_all()

    def requests(self, method: str = "", path: str = "") -> list[RecordedRequest]:
        with self.cond:
            return [
                r
                for r in self.state.requests
                if (not method or r.method == method) and (not path or r.path == path)
            ]

    def events(self) -> list[Json]:
        with self.cond:
            return list(self.state.events)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubeApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, code: int, body: Json) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send_json(
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            },
        )

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {API_TOKEN}":
            return True
        self._status(401, "Unauthorized", "Unauthorized")
        return False

    def _read_body(self) -> Json | None:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        value = json.loads(self.rfile.read(length))
        return value if isinstance(value, dict) else None

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        with self.api.cond:
            self.api.state.requests.append(RecordedRequest("GET", url.path, query))
            # Taken with the request recorded: a test that saw the request and then
            # calls drop_watches() always cuts this watch.
            generation = self.api.state.drop_generation
        if not self._authorized():
            return
        if url.path != "/api/v1/pods":
            self._status(404, "NotFound", f"the server could not find {url.path}")
            return
        selector = query.get("fieldSelector", [""])[0]
        node = selector.removeprefix("spec.nodeName=") if selector.startswith("spec.") else None
        if query.get("watch", [""])[0] == "true":
            self._watch(node, query, generation)
        else:
            with self.api.cond:
                items = [
                    p
                    for p in self.api.state.pods.values()
                    if node is None or p["spec"].get("nodeName") == node
                ]
                rv = self.api.state.resource_version
            self._send_json(
                200,
                {
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(rv)},
                    "items": items,
                },
            )

    def _chunk(self, event: Json) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, node: str | None, query: dict[str, list[str]], generation: int) -> None:
        state = self.api.state
        if state.refuse_watches:
            with self.api.cond:
                state.refused_watches += 1
            self._status(503, "ServiceUnavailable", "watches are refused by the test")
            return
        timeout_s = float(query.get("timeoutSeconds", ["300"])[0])
        since = query.get("resourceVersion", [""])[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with self.api.cond:
            if since and since != "0" and int(since) < state.compacted_rv:
                self._chunk(
                    {
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Failure",
                            "message": f"too old resource version: {since} ({state.compacted_rv})",
                            "reason": "Expired",
                            "code": 410,
                        },
                    }
                )
                self.wfile.write(b"0\r\n\r\n")
                return
            if not since or since == "0":
                pending = [("ADDED", p) for p in state.pods.values()]
                position = len(state.history)
            else:
                position = next(
                    (i for i, (rv, _, _) in enumerate(state.history) if rv > int(since)),
                    len(state.history),
                )
                pending = []
        deadline = time.monotonic() + timeout_s
        while True:
            for kind, pod in pending:
                if node is None or pod["spec"].get("nodeName") == node:
                    self._chunk({"type": kind, "object": pod})
            with self.api.cond:
                while (
                    position >= len(state.history)
                    and state.drop_generation == generation
                    and time.monotonic() < deadline
                ):
                    self.api.cond.wait(max(0.0, min(0.5, deadline - time.monotonic())))
                if state.drop_generation != generation:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if time.monotonic() >= deadline and position >= len(state.history):
                    self.wfile.write(b"0\r\n\r\n")
                    return
                pending = [(k, p) for _, k, p in state.history[position:]]
                position = len(state.history)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        with self.api.cond:
            self.api.state.requests.append(RecordedRequest("POST", url.path, {}, body))
        if not self._authorized():
            return
        if body is None:
            self._status(400, "BadRequest", "empty body")
            return
        parts = url.path.strip("/").split("/")
        if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "events":
            if body.get("metadata", {}).get("namespace") != parts[3]:
                self._status(400, "BadRequest", "the namespace of the object does not match")
                return
            event = copy.deepcopy(body)
            event["metadata"]["name"] = event["metadata"]["generateName"] + uuid.uuid4().hex[:5]
            with self.api.cond:
                self.api.state.events.append(event)
            self._send_json(201, event)
        elif url.path == "/apis/authentication.k8s.io/v1/tokenreviews":
            user = self.api.state.tokens.get(body["spec"]["token"])
            status: Json = (
                {"authenticated": True, "user": user}
                if user
                else {"authenticated": False, "error": "invalid bearer token"}
            )
            self._send_json(201, {**body, "status": status})
        elif url.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            allowed, reason = self.api.state.allow(body["spec"])
            status = {"allowed": allowed, "reason": reason}
            self._send_json(201, {**body, "status": status})
        else:
            self._status(404, "NotFound", f"the server could not find {url.path}")


@contextmanager
def running_fake_api() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi()
    try:
        yield api
    finally:
        api.close()


def make_pod(
    name: str,
    *,
    node: str,
    namespace: str = "default",
    annotation: str | None = None,
    annotation_key: str = "logvold.io/logs",
    volumes: tuple[str, ...] = ("logs",),
    containers: tuple[str, ...] = ("app",),
    uid: str | None = None,
) -> Json:
    """A Pod object as the API server returns it (the fields logvold reads, and a few more)."""
    metadata: Json = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "creationTimestamp": "2026-11-23T12:00:00Z",
    }
    if annotation is not None:
        metadata["annotations"] = {annotation_key: annotation}
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "volumes": [{"name": v, "emptyDir": {}} for v in volumes]
            + [{"name": "config", "configMap": {"name": "app"}}],
            "containers": [{"name": c, "image": "busybox"} for c in containers],
        },
        "status": {"phase": "Running"},
    }


def assert_valid_object(obj: Json, directory: Path, version: str = "1.33") -> None:
    """Check an object logvold sent against the real OpenAPI schema of `version`
    (kubernetes-validate --strict: unknown or misspelt fields fail)."""
    import subprocess
    import sys

    obj = copy.deepcopy(obj)
    obj.setdefault("metadata", {}).setdefault("name", "sent-by-logvold")  # the tool needs one
    path = directory / f"{obj['kind']}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(obj))
    tool = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(tool), "--strict", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "passed for resource" in output, output
