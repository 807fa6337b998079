"""server.auth: TokenReview + SubjectAccessReview through the real kubernetes
client against the loopback API server of tests/support/fake_kube_api.py (no
kube-apiserver can be installed here, see ECOSYSTEM.md), in front of real
aiohttp servers on 127.0.0.1; TLS with a self-signed certificate from openssl.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from logvold.core.policy import KubernetesConfig, ServerConfig, default_config
from logvold.core.streams import StreamRegistry
from logvold.errors import LogvoldError
from logvold.server.auth import (
    ResourceAttributes,
    make_auth_middleware,
    make_ssl_context,
    request_attributes,
)
from logvold.sources.kube_api import KubernetesApi, make_api_client
from logvold.telemetry.metrics import Metrics
from tests.support.fake_kube_api import FakeKubeApi, assert_valid_object, running_fake_api

NODE = "node-a"
ALICE = "alice-token"  # pods/log in namespace team-a only
OPS = "ops-token"  # nodes/proxy and nodes/metrics
Json = dict[str, Any]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeKubeApi]:
    with running_fake_api() as server:
        server.state.tokens = {
            ALICE: {"username": "alice", "uid": "u-alice", "groups": ["devs"]},
            OPS: {"username": "system:serviceaccount:monitoring:prometheus", "groups": []},
        }

        def allow(spec: Json) -> tuple[bool, str]:
            attrs = spec["resourceAttributes"]
            target = (attrs["resource"], attrs.get("subresource", ""))
            if spec["user"] == "alice":
                ok = target == ("pods", "log") and attrs.get("namespace") == "team-a"
                return ok, "" if ok else "alice may only read logs in team-a"
            if spec["user"].endswith(":prometheus"):
                ok = target in (("nodes", "proxy"), ("nodes", "metrics"))
                return ok and attrs.get("name") == NODE, ""
            return False, "no rule"

        server.state.allow = allow
        yield server


def _factory(api: FakeKubeApi, tmp_path: Path) -> Callable[[], KubernetesApi]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    return lambda: KubernetesApi(make_api_client(KubernetesConfig(kubeconfig=str(kubeconfig))))


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text=f"served {request.path}\n")


def _tiny_app(middleware: Any) -> web.Application:
    """The documented routes of the HTTP API, each answering with its path."""
    app = web.Application(middlewares=[middleware])
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/logs/",
        "/logs/{ns}/{pod}/{c}",
        "/logs/{pod}/{c}",
        "/api",
        "/api/v1/namespaces/{ns}/pods/{pod}",
        "/api/v1/namespaces/{ns}/pods/{pod}/log",
    ):
        app.router.add_get(path, _ok)
    return app


async def _serve(
    app: web.Application,
    body: Callable[[str], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    try:
        await body(f"{scheme}://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def _get(
    session: aiohttp.ClientSession, url: str, token: str | None = None
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as response:
        return response.status, await response.text()


def _reviews(api: FakeKubeApi, kind: str) -> list[Json]:
    return [r.body or {} for r in api.requests("POST") if r.path.endswith(kind)]


@pytest.mark.asyncio
async def test_tokens_reviews_and_decisions(api: FakeKubeApi, tmp_path: Path) -> None:
    config = ServerConfig(auth="kubernetes", auth_cache_ttl_s=60)
    app = _tiny_app(make_auth_middleware(config, _factory(api, tmp_path), node_name=NODE))

    async def body(base: str) -> None:
        async with aiohttp.ClientSession() as s:
            # Probes are anonymous; everything else needs a token.
            assert await _get(s, f"{base}/healthz") == (200, "served /healthz\n")
            assert (await _get(s, f"{base}/readyz"))[0] == 200
            status, text = await _get(s, f"{base}/logs/team-a/web/app")
            assert (status, text) == (
                401,
                "Unauthorized: no bearer token; send Authorization: Bearer <token>\n",
            )
            status, text = await _get(s, f"{base}/logs/team-a/web/app", "stolen")
            assert status == 401
            assert "invalid bearer token" in text

            # pods/log in team-a: the container logs, both URL shapes.
            assert await _get(s, f"{base}/logs/team-a/web/app", ALICE) == (
                200,
                "served /logs/team-a/web/app\n",
            )
            assert (await _get(s, f"{base}/api/v1/namespaces/team-a/pods/web/log", ALICE))[0] == 200
            status, text = await _get(s, f"{base}/logs/team-b/web/app", ALICE)
            assert status == 403
            assert text == (
                "Forbidden (user=alice, verb=get, resource=pods, subresource=log,"
                " namespace=team-b, name=web): alice may only read logs in team-a\n"
            )
            # /logs/POD/CONTAINER is the default namespace.
            assert (await _get(s, f"{base}/logs/web/app", ALICE))[0] == 403
            # Node-wide endpoints need nodes/proxy; /metrics needs nodes/metrics.
            assert (await _get(s, f"{base}/logs/?query=kubelet", ALICE))[0] == 403
            assert (await _get(s, f"{base}/logs/", OPS))[0] == 200
            assert (await _get(s, f"{base}/logs/?query=kubelet&pattern=err", OPS))[0] == 200
            assert (await _get(s, f"{base}/metrics", OPS))[0] == 200
            assert (await _get(s, f"{base}/metrics", ALICE))[0] == 403
            assert (await _get(s, f"{base}/metrics"))[0] == 401
            # Discovery: any authenticated user, no SubjectAccessReview.
            assert (await _get(s, f"{base}/api", ALICE))[0] == 200

    await _serve(app, body)

    token_reviews = _reviews(api, "tokenreviews")
    # One review per distinct token: answers are cached (negative ones too).
    assert sorted(r["spec"]["token"] for r in token_reviews) == sorted([ALICE, OPS, "stolen"])
    assert token_reviews[0]["apiVersion"] == "authentication.k8s.io/v1"
    sars = _reviews(api, "subjectaccessreviews")
    alice_logs = [
        r["spec"]
        for r in sars
        if r["spec"]["user"] == "alice"
        and r["spec"]["resourceAttributes"].get("namespace") == "team-a"
    ]
    assert alice_logs == [
        {
            "resourceAttributes": {
                "verb": "get",
                "group": "",
                "resource": "pods",
                "subresource": "log",
                "namespace": "team-a",
                "name": "web",
            },
            "user": "alice",
            "uid": "u-alice",
            "groups": ["devs"],
        }
    ]  # asked once for two requests of the same pod
    node_proxy = [
        r["spec"]["resourceAttributes"]
        for r in sars
        if r["spec"]["resourceAttributes"].get("subresource") == "proxy"
    ]
    assert {a["name"] for a in node_proxy} == {NODE}
    assert all(r["apiVersion"] == "authorization.k8s.io/v1" for r in sars)
    # What logvold sent matches the 1.33 API's schemas, field for field.
    assert_valid_object(token_reviews[0], tmp_path)
    for review in sars:
        assert_valid_object(review, tmp_path)


@pytest.mark.asyncio
async def test_cache_expires_after_the_ttl(api: FakeKubeApi, tmp_path: Path) -> None:
    now = [1000.0]
    config = ServerConfig(auth="kubernetes", auth_cache_ttl_s=30)
    middleware = make_auth_middleware(
        config, _factory(api, tmp_path), node_name=NODE, clock=lambda: now[0]
    )

    async def body(base: str) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                assert (await _get(s, f"{base}/logs/team-a/web/app", ALICE))[0] == 200
            now[0] += 29
            assert (await _get(s, f"{base}/logs/team-a/web/app", ALICE))[0] == 200
            assert len(_reviews(api, "tokenreviews")) == 1
            now[0] += 2  # past the TTL: both answers are fetched again
            api.state.tokens.pop(ALICE)  # the token was revoked meanwhile
            assert (await _get(s, f"{base}/logs/team-a/web/app", ALICE))[0] == 401
            assert len(_reviews(api, "tokenreviews")) == 2

    await _serve(_tiny_app(middleware), body)
    assert len(_reviews(api, "subjectaccessreviews")) == 1


@pytest.mark.asyncio
async def test_api_server_down_is_a_503_not_an_open_door(tmp_path: Path) -> None:
    with running_fake_api() as gone:
        factory = _factory(gone, tmp_path)
    config = ServerConfig(auth="kubernetes")
    app = _tiny_app(make_auth_middleware(config, factory, node_name=NODE))

    async def body(base: str) -> None:
        async with aiohttp.ClientSession() as s:
            status, text = await _get(s, f"{base}/logs/team-a/web/app", ALICE)
            assert status == 503
            assert text.startswith("cannot check access with the Kubernetes API server")
            assert (await _get(s, f"{base}/healthz"))[0] == 200

    await _serve(app, body)


@pytest.mark.asyncio
async def test_auth_none_passes_everything_through() -> None:
    def factory() -> KubernetesApi:
        raise AssertionError("auth none must not touch the API server")

    app = _tiny_app(make_auth_middleware(ServerConfig(), factory, node_name=NODE))

    async def body(base: str) -> None:
        async with aiohttp.ClientSession() as s:
            assert (await _get(s, f"{base}/logs/ns/pod/c"))[0] == 200
            assert (await _get(s, f"{base}/metrics"))[0] == 200

    await _serve(app, body)


@pytest.mark.asyncio
async def test_real_app_with_the_middleware(api: FakeKubeApi, tmp_path: Path) -> None:
    from logvold.server.app import build_app

    config = ServerConfig(auth="kubernetes")
    app = build_app(
        config=default_config(str(tmp_path / "logs")),
        registry=StreamRegistry(),
        metrics=Metrics(),
        is_ready=lambda: True,
    )
    app.middlewares.append(make_auth_middleware(config, _factory(api, tmp_path), node_name=NODE))

    async def body(base: str) -> None:
        async with aiohttp.ClientSession() as s:
            assert await _get(s, f"{base}/healthz") == (200, "ok\n")
            assert (await _get(s, f"{base}/logs/"))[0] == 401
            assert (await _get(s, f"{base}/logs/", ALICE))[0] == 403
            status, text = await _get(s, f"{base}/metrics", OPS)
            assert status == 200
            assert "logvold_build_info" in text

    await _serve(app, body)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/healthz", None),
        ("GET", "/logs/ns/p/c", ResourceAttributes("get", "pods", "log", "ns", "p")),
        ("GET", "/logs/p/c", ResourceAttributes("get", "pods", "log", "default", "p")),
        ("GET", "/logs/", ResourceAttributes("get", "nodes", "proxy", name=NODE)),
        ("GET", "/logs//p/c", ResourceAttributes("get", "nodes", "proxy", name=NODE)),
        ("GET", "/logs/a/b/c/d", ResourceAttributes("get", "nodes", "proxy", name=NODE)),
        ("GET", "/metrics", ResourceAttributes("get", "nodes", "metrics", name=NODE)),
        ("GET", "/api/v1/namespaces/ns/pods/p", ResourceAttributes("get", "pods", "", "ns", "p")),
        ("GET", "/api/v1/namespaces/ns/pods", ResourceAttributes("list", "pods", "", "ns")),
        ("POST", "/other", ResourceAttributes("create", "nodes", "proxy", name=NODE)),
    ],
    ids=[
        "probe",
        "log",
        "log-default-ns",
        "listing",
        "empty-part",
        "deep",
        "metrics",
        "pod",
        "pods",
        "other",
    ],
)
def test_request_attributes(method: str, path: str, expected: ResourceAttributes | None) -> None:
    assert request_attributes(method, path, NODE) == expected


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "tls.crt", d / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=logvold-test", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.mark.asyncio
async def test_https_with_a_self_signed_certificate(
    self_signed: tuple[Path, Path], api: FakeKubeApi, tmp_path: Path
) -> None:
    cert, key = self_signed
    config = ServerConfig(
        auth="kubernetes", tls_cert_file=str(cert), tls_key_file=str(key), listen="127.0.0.1:0"
    )
    server_ssl = make_ssl_context(config)
    assert server_ssl is not None
    assert server_ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    app = _tiny_app(make_auth_middleware(config, _factory(api, tmp_path), node_name=NODE))
    client_ssl = ssl.create_default_context(cafile=str(cert))

    async def body(base: str) -> None:
        assert base.startswith("https://")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/healthz", ssl=client_ssl) as response:
                assert response.status == 200
                assert await response.text() == "served /healthz\n"
            headers = {"Authorization": f"Bearer {ALICE}"}
            async with s.get(f"{base}/logs/team-a/p/c", ssl=client_ssl, headers=headers) as r:
                assert r.status == 200
            # A client that does not trust the certificate is refused.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with s.get(f"{base}/healthz"):
                    pass
            # Plain HTTP to the TLS port does not get an answer.
            plain = base.replace("https://", "http://")
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"{plain}/healthz"):
                    pass

    await _serve(app, body, ssl_context=server_ssl)


def test_ssl_context_errors_name_the_problem(
    self_signed: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = self_signed
    assert make_ssl_context(ServerConfig()) is None
    with pytest.raises(LogvoldError, match="keyFile is required"):
        make_ssl_context(ServerConfig(tls_cert_file=str(cert)))
    with pytest.raises(LogvoldError, match="cannot load the TLS certificate") as caught:
        make_ssl_context(
            ServerConfig(tls_cert_file=str(tmp_path / "no.crt"), tls_key_file=str(key))
        )
    assert caught.value.path == str(tmp_path / "no.crt")
    with pytest.raises(LogvoldError, match="cannot load"):
        make_ssl_context(ServerConfig(tls_cert_file=str(key), tls_key_file=str(cert)))
