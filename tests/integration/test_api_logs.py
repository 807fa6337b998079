"""GET /logs/... against a real server on 127.0.0.1: every parameter, 4xx reasons,
the listing, and traversal attempts that must never reach a file outside the volume."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from logvold.core.streams import StreamKey, StreamRegistry
from tests.support.api_server import Served, fetch, serving
from tests.support.events import parse_event, split_raw, verify
from tests.support.streams import build_stream, event_ts, make_events, rfc3339

SECRET = b"TOP-SECRET-OUTSIDE-THE-VOLUME"

# One server for the module, on one event loop shared by the fixture and the tests.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    root = tmp_path_factory.mktemp("api")
    (root / "outside").mkdir()
    (root / "outside" / "secret.log").write_bytes(SECRET + b"\n")
    registry = StreamRegistry()
    registry.put(
        build_stream(
            root / "vol" / "cri",
            make_events(500, "cri", stderr_every=5),
            fmt="cri",
            key=StreamKey("team-a", "web", "app"),
        )
    )
    registry.put(
        build_stream(
            root / "vol" / "raw",
            make_events(300, "raw"),
            key=StreamKey("default", "batch", "worker"),
            layout=(("zst", 100), ("plain", 100)),
        )
    )
    # A stream whose active file is a symlink planted to point out of the volume, and
    # a symlinked "segment" next to a real one.
    evil = root / "vol" / "evil"
    evil.mkdir(parents=True)
    (evil / "app.log").symlink_to(root / "outside" / "secret.log")
    registry.put(
        build_stream(evil, [], key=StreamKey("default", "evil", "app"), layout=(), base="other.log")
    )
    registry.put(
        build_stream(evil, [], key=StreamKey("default", "evil2", "app"), layout=(), base="app.log")
    )
    seg_dir = root / "vol" / "segs"
    registry.put(
        build_stream(
            seg_dir, make_events(20, "raw"), layout=(), key=StreamKey("default", "segs", "app")
        )
    )
    (seg_dir / "app.log.20200101-000000").symlink_to(root / "outside" / "secret.log")
    (seg_dir / "app.log.20200101-000001.gz").symlink_to(root / "outside" / "secret.log")
    async with serving(registry) as srv:
        yield srv


def body_seqs(data: bytes) -> list[int]:
    out = []
    for b in split_raw([data]):
        s = parse_event(b)
        assert s is not None, b[:80]
        out.append(s)
    return out


async def test_whole_stream_and_default_namespace(server: Served) -> None:
    status, body, headers = await fetch(server.base + "/logs/team-a/web/app")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert verify(split_raw([body])).seen == 500 and verify(split_raw([body])).ok
    status, body, _ = await fetch(server.base + "/logs/batch/worker")
    assert status == 200 and body_seqs(body) == list(range(300))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tailLines=3", list(range(497, 500))),
        ("tailLines=0", []),
        (f"sinceTime={rfc3339(event_ts(480))}", list(range(480, 500))),
        (
            f"sinceTime={rfc3339(event_ts(100))}&untilTime={rfc3339(event_ts(104))}",
            list(range(100, 105)),
        ),
        ("stream=stderr&tailLines=2", [490, 495]),
        ("stream=Stdout&tailLines=1", [499]),
        ("stream=All&tailLines=1", [499]),
        ("pattern=%23000000012%5B0-4%5D", [120, 121, 122, 123, 124]),
        ("sinceSeconds=1", []),  # the fixture's events are older than a second
    ],
)
async def test_params(server: Served, query: str, expected: list[int]) -> None:
    status, body, _ = await fetch(f"{server.base}/logs/team-a/web/app?{query}")
    assert status == 200, body
    assert body_seqs(body) == expected


async def test_timestamps_and_limit_bytes(server: Served) -> None:
    _, body, _ = await fetch(server.base + "/logs/team-a/web/app?tailLines=2&timestamps=true")
    lines = body.splitlines()
    assert [ln.split(b" ", 1)[0].decode() for ln in lines] == [
        rfc3339(event_ts(s)) for s in (498, 499)
    ]
    _, full, _ = await fetch(server.base + "/logs/team-a/web/app")
    _, limited, _ = await fetch(server.base + "/logs/team-a/web/app?limitBytes=1000")
    assert 0 < len(limited) <= 1000 and full.startswith(limited) and limited.endswith(b"\n")


async def test_listing(server: Served) -> None:
    status, body, _ = await fetch(server.base + "/logs/")
    assert status == 200
    items = {(i["namespace"], i["pod"], i["container"]): i for i in json.loads(body)["items"]}
    web = items[("team-a", "web", "app")]
    assert web["policy"]["format"] == "cri" and web["volume"] == "logs"
    assert web["segments"]["count"] == 3 and web["segments"]["compressed"] == 2
    assert web["activeFile"]["apparentBytes"] > web["activeFile"]["allocatedBytes"]  # punched
    assert json.loads(body)["metadata"] == {"total": len(items), "truncated": False}


async def test_listing_pages_with_a_continue_token(server: Served) -> None:
    _, whole, _ = await fetch(server.base + "/logs/")
    every = [(i["namespace"], i["pod"], i["container"]) for i in json.loads(whole)["items"]]
    assert every == sorted(every) and len(every) >= 3
    seen: list[tuple[str, str, str]] = []
    query = "limit=2"
    for _ in range(len(every)):
        status, body, _ = await fetch(server.base + "/logs/?" + query)
        assert status == 200
        page = json.loads(body)
        assert len(page["items"]) <= 2 and page["metadata"]["total"] == len(every)
        seen += [(i["namespace"], i["pod"], i["container"]) for i in page["items"]]
        if not page["metadata"]["truncated"]:
            assert "continue" not in page["metadata"]
            break
        query = "limit=2&continue=" + page["metadata"]["continue"]
    assert seen == every


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("limit=0", b"limit must be"),
        ("limit=5001", b"limit must be"),
        ("limit=x", b"limit"),
        ("continue=a/b", b"continue must be"),
        ("limit=1&limit=2", b"more than once"),
    ],
)
async def test_listing_bad_page_params_are_400(server: Served, query: str, reason: bytes) -> None:
    status, body, _ = await fetch(server.base + "/logs/?" + query)
    assert status == 400 and reason in body, body


@pytest.mark.parametrize(
    ("path", "code", "reason"),
    [
        ("/logs/team-a/web/app?tailLines=-1", 400, b"tailLines must be between"),
        ("/logs/team-a/web/app?tailLines=abc", 400, b"tailLines must be an integer"),
        ("/logs/team-a/web/app?tailLines=99999999999999999999", 400, b"tailLines"),
        ("/logs/team-a/web/app?tailLines=1&tailLines=2", 400, b"more than once"),
        ("/logs/team-a/web/app?sinceSeconds=0", 400, b"sinceSeconds"),
        ("/logs/team-a/web/app?sinceTime=yesterday", 400, b"RFC3339"),
        ("/logs/team-a/web/app?sinceTime=2026-01-01T00:00:00Z&sinceSeconds=5", 400, b"at most one"),
        (
            "/logs/team-a/web/app?sinceTime=2026-01-02T00:00:00Z&untilTime=2026-01-01T00:00:00Z",
            400,
            b"untilTime",
        ),
        ("/logs/team-a/web/app?limitBytes=0", 400, b"limitBytes"),
        ("/logs/team-a/web/app?follow=maybe", 400, b"follow must be true or false"),
        ("/logs/team-a/web/app?stream=stdin", 400, b"stream must be"),
        ("/logs/team-a/web/app?pattern=%28", 400, b"invalid RE2 pattern"),
        ("/logs/team-a/web/app?pattern=" + "a" * 1025, 400, b"longer than 1024"),
        ("/logs/team-a/web/nope", 404, b"no stream team-a/web/nope"),
        ("/logs/nope/nope", 404, b"no stream default/nope/nope"),
    ],
)
async def test_bad_input_is_4xx_with_reason(
    server: Served, path: str, code: int, reason: bytes
) -> None:
    status, body, _ = await fetch(server.base + path)
    assert status == code and reason in body, body


@pytest.mark.parametrize(
    "path",
    [
        "/logs/../../etc/passwd",
        "/logs/%2e%2e/%2e%2e/outside",
        "/logs/default/%2e%2e/app",
        "/logs/default/evil%2F..%2F..%2Foutside/app",
        "/logs/default/..%2f..%2foutside/secret.log",
        "/logs/..%252f..%252foutside/secret",
        "/logs/default/evil/app",
        "/logs/default/evil2/app",
        "/logs/default/segs/app",
        "/logs//outside/secret.log",
        "/logs/default/evil/app/../../../../outside/secret.log",
        "/api/v1/namespaces/%2e%2e/pods/evil2/log",
        "/api/v1/namespaces/default/pods/evil2/log",
    ],
)
async def test_traversal_never_serves_outside_bytes(server: Served, path: str) -> None:
    status, body, _ = await fetch(server.base + path)
    assert SECRET not in body
    assert status < 500


async def test_symlinked_active_file_is_refused_and_symlinked_segments_skipped(
    server: Served,
) -> None:
    status, body, _ = await fetch(server.base + "/logs/default/evil2/app")
    assert status == 403 and b"not a regular file" in body
    status, body, _ = await fetch(server.base + "/logs/default/segs/app")
    assert status == 200 and body_seqs(body) == list(range(20))


async def test_follow_streams_new_events_and_stops_on_disconnect(server: Served) -> None:
    registry = server.registry
    info = registry.get(StreamKey("default", "batch", "worker"))
    assert info is not None
    followers_before = await _gauge(server, "logvold_followers")

    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.get(server.base + "/logs/default/batch/worker?follow=true&tailLines=1") as r,
    ):
        assert r.status == 200
        got = await r.content.readuntil(b"\n")
        new = make_events(2, "raw", start=300, seed=9)
        with (Path(info.directory) / info.base).open("ab") as f:
            f.write(b"".join(e.encoded for e in new))
        got += await r.content.readuntil(b"\n")
        got += await r.content.readuntil(b"\n")

    assert body_seqs(got) == [299, 300, 301]
    for _ in range(100):  # the server notices the disconnect at its next poll
        if await _gauge(server, "logvold_followers") == followers_before:
            break
        await asyncio.sleep(0.05)
    assert await _gauge(server, "logvold_followers") == followers_before


async def test_follow_ends_when_stream_is_removed(server: Served, tmp_path: Path) -> None:
    key = StreamKey("default", "gone", "app")
    server.registry.put(build_stream(tmp_path / "gone", make_events(5, "raw"), layout=(), key=key))

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s,
        s.get(server.base + "/logs/default/gone/app?follow=true") as r,
    ):
        first = await r.content.readuntil(b"\n")
        server.registry.remove(key)
        got = first + await r.read()  # ends: the response completes

    assert body_seqs(got) == list(range(5))


async def test_metrics_count_requests_by_handler_and_code(server: Served) -> None:
    await fetch(server.base + "/logs/team-a/web/app?tailLines=x")
    _, text, _ = await fetch(server.base + "/metrics")
    assert b'logvold_http_requests_total{code="400",handler="logs"}' in text
    assert b'logvold_http_request_duration_seconds_count{handler="logs"}' in text
    assert b'logvold_bytes_served_total{handler="logs"}' in text


async def test_health(server: Served) -> None:
    assert (await fetch(server.base + "/healthz"))[:2] == (200, b"ok\n")
    assert (await fetch(server.base + "/readyz"))[0] == 200
    server.is_ready = lambda: False
    try:
        assert (await fetch(server.base + "/readyz"))[0] == 503
    finally:
        server.is_ready = lambda: True


async def _gauge(server: Served, name: str) -> float:
    _, text, _ = await fetch(server.base + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


async def test_no_fd_leak_after_many_requests(server: Served) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        await fetch(server.base + "/logs/team-a/web/app?tailLines=5")
        await fetch(server.base + "/logs/default/batch/worker?limitBytes=100")
    await asyncio.sleep(0.2)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


async def test_head_of_a_stream_is_not_allowed(server: Served) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.head(server.base + "/logs/team-a/web/app?follow=true") as r,
    ):
        assert r.status == 405


async def test_kubectl_style_json_errors_when_json_is_asked_for(server: Served) -> None:
    status, body, headers = await fetch(
        server.base + "/logs/team-a/web/app?tailLines=-5",
        headers={"Accept": "application/json, */*"},
    )
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["kind"] == "Status" and doc["code"] == 400 and "tailLines" in doc["message"]


async def test_redos_pattern_returns_promptly(server: Served, tmp_path: Path) -> None:
    key = StreamKey("default", "redos", "app")
    info = build_stream(tmp_path / "redos", make_events(20, "raw"), layout=(), key=key)
    with (tmp_path / "redos" / "app.log").open("ab") as f:
        for _ in range(50):
            f.write(b"x" * 20_000 + b"!\n")  # catastrophic for (x+x+)+y with backtracking
    server.registry.put(info)
    try:
        t0 = time.monotonic()
        query = "pattern=%28x%2Bx%2B%29%2By"
        status, body, _ = await fetch(server.base + "/logs/default/redos/app?" + query)
        assert status == 200 and b"xxxx" not in body
        assert time.monotonic() - t0 < 60  # backtracking would take ~forever; RE2 is linear
    finally:
        server.registry.remove(key)


async def test_shutdown_with_a_follower_attached_leaks_nothing(tmp_path: Path) -> None:
    registry = StreamRegistry()
    registry.put(
        build_stream(
            tmp_path / "s", make_events(5, "raw"), layout=(), key=StreamKey("default", "p", "c")
        )
    )
    threads_before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    server = serving(registry)
    srv = await server.__aenter__()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s,
        s.get(srv.base + "/logs/default/p/c?follow=true") as r,
    ):
        got = await r.content.readuntil(b"\n")
        t0 = time.monotonic()
        # Shut down while the follower reads: its body must end cleanly, not at a timeout.
        shutdown = asyncio.create_task(server.__aexit__(None, None, None))
        got += await r.read()  # the body ended cleanly: the server said goodbye
        await shutdown
        # The follower ended at shutdown, not at the client's 120 s timeout.
        assert time.monotonic() - t0 < 60

    assert body_seqs(got) == list(range(5))
    for _ in range(50):
        if threading.active_count() <= threads_before:
            break
        await asyncio.sleep(0.05)
    assert threading.active_count() <= threads_before
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 1
