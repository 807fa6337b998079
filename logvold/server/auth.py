"""Who may read what, like the kubelet: bearer tokens checked with TokenReview,
requests authorised with SubjectAccessReview (`pods/log` for a container's
log, `nodes/proxy` for node-wide endpoints, `nodes/metrics` for /metrics);
plus the TLS context of the listener.

The Kubernetes calls go through a `ReviewClient` (discovery.kubernetes.KubernetesApi
in production) so this module does not import the kubernetes client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from logvold.core.policy import ServerConfig
from logvold.errors import LogvoldError
from logvold.errors import ReviewUnavailable as ReviewUnavailable
from logvold.server.access import is_socket_peer

log = logging.getLogger(__name__)

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 (a URL path)
ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
ANONYMOUS_PATHS = frozenset({"/healthz", "/readyz", "/livez"})
"""Probes answer without a token: the kubelet's probes carry none."""
DISCOVERY_PATHS = frozenset({"/api", "/api/", "/apis", "/apis/", "/api/v1", "/api/v1/", "/version"})
"""API discovery kubectl needs before `kubectl logs`: any authenticated user."""
_CACHE_MAX_ENTRIES = 4096
_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReviewClient(Protocol):
    """POSTs an object to the API server and returns its answer (blocking)."""

    def post_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ResourceAttributes:
    """What a request touches, as a SubjectAccessReview's resourceAttributes."""

    verb: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    def as_review(self) -> dict[str, str]:
        attrs = {"verb": self.verb, "group": "", "resource": self.resource}
        for key in ("subresource", "namespace", "name"):
            if value := getattr(self, key):
                attrs[key] = value
        return attrs

    def __str__(self) -> str:
        parts = [f"verb={self.verb}", f"resource={self.resource}"]
        parts += [
            f"{k}={v}" for k in ("subresource", "namespace", "name") if (v := getattr(self, k))
        ]
        return ", ".join(parts)


AUTHENTICATED_ONLY = ResourceAttributes(verb="", resource="")
"""Marker: any authenticated user may make the request (API discovery)."""


def request_attributes(method: str, path: str, node_name: str) -> ResourceAttributes | None:
    """What to authorise for a request; None = anonymous access (health probes).

    Anything not recognised needs `nodes/proxy`, the kubelet's rule for its
    catch-all, so a new route is never more open than the node itself.
    """
    if path in ANONYMOUS_PATHS:
        return None
    if path in DISCOVERY_PATHS:
        return AUTHENTICATED_ONLY
    verb = _VERBS.get(method.upper(), "get")
    if path == "/metrics":
        return ResourceAttributes(verb, "nodes", "metrics", name=node_name)
    parts = path.split("/")[1:]
    if all(parts) and parts[0] == "logs" and len(parts) in (3, 4):
        namespace, pod = (parts[1], parts[2]) if len(parts) == 4 else ("default", parts[1])
        return ResourceAttributes(verb, "pods", "log", namespace=namespace, name=pod)
    if all(parts) and parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5:
        if parts[4] == "pods" and len(parts) == 7 and parts[6] == "log":
            return ResourceAttributes(verb, "pods", "log", namespace=parts[3], name=parts[5])
        if parts[4] == "pods" and len(parts) == 6:
            return ResourceAttributes(verb, "pods", namespace=parts[3], name=parts[5])
        if parts[4] == "pods" and len(parts) == 5:
            return ResourceAttributes("list", "pods", namespace=parts[3])
    return ResourceAttributes(verb, "nodes", "proxy", name=node_name)


@dataclass(frozen=True)
class UserInfo:
    """The authenticated user a TokenReview returns."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def cache_key(self) -> str:
        return json.dumps(
            [self.username, self.uid, self.groups, sorted(self.extra.items())], sort_keys=True
        )


class KubernetesAuthorizer:
    """TokenReview + SubjectAccessReview with a small TTL cache of both answers.

    Blocking API calls run in the default thread pool; concurrent first
    requests with one token may each ask the API server (harmless, rare).
    """

    def __init__(
        self,
        client_factory: Callable[[], ReviewClient],
        *,
        cache_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_factory = client_factory
        self._client: ReviewClient | None = None
        self._ttl_s = cache_ttl_s
        self._clock = clock
        self._tokens: dict[str, tuple[float, UserInfo | None, str]] = {}
        self._decisions: dict[tuple[str, ResourceAttributes], tuple[float, bool, str]] = {}

    def _review(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            if self._client is None:
                self._client = self._client_factory()
            return self._client.post_json(path, body)
        except Exception as exc:
            raise ReviewUnavailable(f"{type(exc).__name__}: {exc}", op=path) from exc

    async def authenticate(self, token: str) -> tuple[UserInfo | None, str]:
        """The user of a bearer token, or None and why not."""
        key = hashlib.sha256(token.encode()).hexdigest()  # no raw tokens kept in memory
        now = self._clock()
        cached = self._tokens.get(key)
        if cached and cached[0] > now:
            return cached[1], cached[2]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        answer = await asyncio.to_thread(self._review, TOKEN_REVIEW_PATH, body)
        status = answer.get("status") or {}
        user: UserInfo | None = None
        why = str(status.get("error") or "token not authenticated")
        if status.get("authenticated") is True:
            raw = status.get("user") or {}
            user = UserInfo(
                username=str(raw.get("username") or ""),
                uid=str(raw.get("uid") or ""),
                groups=tuple(str(g) for g in raw.get("groups") or ()),
                extra={
                    str(k): tuple(str(x) for x in v) for k, v in (raw.get("extra") or {}).items()
                },
            )
            why = ""
        _store(self._tokens, key, (now + self._ttl_s, user, why))
        return user, why

    async def authorize(self, user: UserInfo, attrs: ResourceAttributes) -> tuple[bool, str]:
        """Whether `user` may do `attrs`, and the authoriser's reason."""
        key = (user.cache_key(), attrs)
        now = self._clock()
        cached = self._decisions.get(key)
        if cached and cached[0] > now:
            return cached[1], cached[2]
        spec: dict[str, Any] = {"resourceAttributes": attrs.as_review(), "user": user.username}
        if user.uid:
            spec["uid"] = user.uid
        if user.groups:
            spec["groups"] = list(user.groups)
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra.items()}
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        answer = await asyncio.to_thread(self._review, ACCESS_REVIEW_PATH, body)
        status = answer.get("status") or {}
        allowed = status.get("allowed") is True and status.get("denied") is not True
        reason = str(status.get("reason") or status.get("evaluationError") or "")
        _store(self._decisions, key, (now + self._ttl_s, allowed, reason))
        return allowed, reason


def _store(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX_ENTRIES:
        for old in list(cache)[: _CACHE_MAX_ENTRIES // 4]:  # oldest inserted first
            del cache[old]
    cache[key] = value


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def make_auth_middleware(
    server_config: ServerConfig,
    api_client_factory: Callable[[], ReviewClient],
    *,
    node_name: str,
    clock: Callable[[], float] = time.monotonic,
) -> Middleware:
    """The aiohttp middleware for `server_config.auth`: a pass-through for "none".

    `api_client_factory` is called once, at the first request that needs a
    review, so building the app needs no cluster credentials.
    """
    if server_config.auth != "kubernetes":

        @web.middleware
        async def no_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await handler(request)

        return no_auth

    authorizer = KubernetesAuthorizer(
        api_client_factory, cache_ttl_s=server_config.auth_cache_ttl_s, clock=clock
    )

    @web.middleware
    async def kubernetes_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        attrs = request_attributes(request.method, request.path, node_name)
        if attrs is None or is_socket_peer(request):
            # A unix socket client carries no token: SO_PEERCRED and file permissions
            # decide what it reads (server/access.py).
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            return _unauthorized("no bearer token; send Authorization: Bearer <token>")
        try:
            user, why = await authorizer.authenticate(token)
            if user is None:
                return _unauthorized(f"invalid bearer token: {why}")
            if attrs is AUTHENTICATED_ONLY:
                return await handler(request)
            allowed, reason = await authorizer.authorize(user, attrs)
        except ReviewUnavailable as exc:
            log.warning(
                "cannot review %s %s with the API server: %s", request.method, request.path, exc
            )
            return web.Response(
                status=503,
                text=f"cannot check access with the Kubernetes API server: {exc}\n",
                headers={"Retry-After": "5"},
            )
        if not allowed:
            log.info("denied %s %s to %s (%s)", request.method, request.path, user.username, attrs)
            detail = f": {reason}" if reason else ""
            return web.Response(
                status=403, text=f"Forbidden (user={user.username}, {attrs}){detail}\n"
            )
        return await handler(request)

    return kubernetes_auth


def _unauthorized(reason: str) -> web.Response:
    return web.Response(
        status=401,
        text=f"Unauthorized: {reason}\n",
        headers={"WWW-Authenticate": 'Bearer realm="logvold"'},
    )


def make_ssl_context(server_config: ServerConfig) -> ssl.SSLContext | None:
    """The listener's TLS context from the PEM cert and key files; None for plain HTTP.

    LogvoldError (naming the file) when only one file is set or they cannot be loaded.
    """
    cert, key = server_config.tls_cert_file, server_config.tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "certFile" if not cert else "keyFile"
        raise LogvoldError(f"server.tls.{missing} is required when the other one is set", op="tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise LogvoldError(
            f"cannot load the TLS certificate {cert} with key {key}: {exc}", path=cert, op="tls"
        ) from exc
    return context
