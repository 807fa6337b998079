"""Hypothesis-generated requests from docs/openapi.yaml (valid, boundary and hostile
path segments and parameters) against the running server: never a 5xx, never a byte
from outside the stream roots, and 200s carry the documented content type."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logvold.core.streams import StreamKey, StreamRegistry
from tests.support.api_server import RunningServer
from tests.support.streams import build_stream, make_events

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
SECRET = b"FUZZ-SECRET-OUTSIDE"
HOSTILE_SEGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    "..%2f..",
    "%2F",
    "a%2Fb",
    "%00",
    "%252e%252e",
    "..%5c..",
    "~root",
    "outside",
    "secret.log",
    "%c0%ae%c0%ae",
    "-",
    "_",
]
KNOWN = ["team-a", "web", "app", "default", "raw", "evil", "logs"]


def _resolve(obj: dict[str, Any]) -> dict[str, Any]:
    ref = obj.get("$ref")
    if not ref:
        return obj
    node: Any = SPEC
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return dict(node)


OPERATIONS = [
    (
        path,
        [_resolve(p) for p in op["get"].get("parameters", [])],
        {code: _resolve(r) for code, r in op["get"]["responses"].items()},
    )
    for path, op in SPEC["paths"].items()
]


def _value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    junk = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
    t = schema.get("type")
    if t == "integer":
        lo, hi = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63)
        good = st.integers(lo, hi).map(str)
        edge = st.sampled_from([str(lo - 1), str(hi + 1), "1e3", "0x10", " 1", "-0", "", "99" * 20])
        return st.one_of(good, edge, junk)
    if t == "boolean":
        return st.one_of(st.sampled_from(["true", "false", "1", "0", "True", "yes", ""]), junk)
    if schema.get("format") == "date-time":
        good = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S") + "Z")
        return st.one_of(
            good,
            st.sampled_from(["2026-11-23T12:00:00.123456789+02:00", "2026-13-01T00:00:00Z", "now"]),
            junk,
        )
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), junk)
    if "pattern" in schema:
        return st.one_of(st.from_regex(r"[a-z0-9][-a-z0-9.]{0,20}", fullmatch=True), junk)
    return st.one_of(st.sampled_from(["(a+)+$", "err.r", "(", "[", "\\", ".*" * 300]), junk)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, dict[str, Any]]]:
    template, params, responses = draw(st.sampled_from(OPERATIONS))
    path = template
    query: list[str] = []
    for p in params:
        schema = p.get("schema", {})
        if p["in"] == "path":
            # Never empty: `/logs/{file}` with "" is another operation (`/logs/`, JSON).
            seg = draw(
                st.one_of(
                    st.sampled_from(KNOWN),
                    st.sampled_from(HOSTILE_SEGMENTS),
                    _value(schema).map(lambda v: quote(v, safe="")).filter(bool),
                )
            )
            path = path.replace("{" + p["name"] + "}", seg)
        elif p["name"] != "follow" and draw(st.booleans()):
            query.append(f"{p['name']}={quote(draw(_value(schema)), safe='')}")
    if draw(st.booleans()):
        query.append(
            draw(
                st.sampled_from(
                    ["x=1", "tailLines=1&tailLines=2", "%zz=1", "=", "pattern=%28", "follow=false"]
                )
            )
        )
    return path + ("?" + "&".join(query) if query else ""), responses


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside").mkdir()
    (root / "outside" / "secret.log").write_bytes(SECRET + b"\n")
    registry = StreamRegistry()
    registry.put(
        build_stream(
            root / "vol" / "cri",
            make_events(120, "cri", stderr_every=3),
            fmt="cri",
            key=StreamKey("team-a", "web", "app"),
            layout=(("gz", 30), ("plain", 30)),
        )
    )
    registry.put(
        build_stream(
            root / "vol" / "raw",
            make_events(50, "raw"),
            layout=(),
            key=StreamKey("default", "raw", "app"),
        )
    )
    evil = root / "vol" / "evil"
    evil.mkdir()
    (evil / "app.log").symlink_to(root / "outside" / "secret.log")
    (evil / "app.log.20200101-000000").symlink_to(root / "outside" / "secret.log")
    registry.put(
        build_stream(evil, [], layout=(), base="x.log", key=StreamKey("default", "evil", "x"))
    )
    registry.put(
        build_stream(evil, [], layout=(), base="app.log", key=StreamKey("default", "evil", "app"))
    )
    with RunningServer(registry) as srv:
        yield srv


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(req=requests(), accept=st.sampled_from(["*/*", "application/json, */*", "text/plain"]))
def test_fuzz_never_5xx_never_outside_bytes(
    server: RunningServer, req: tuple[str, dict[str, dict[str, Any]]], accept: str
) -> None:
    path, responses = req
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        t0 = time.monotonic()
        conn.request("GET", path, headers={"Accept": accept})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status < 500 or (path.startswith("/readyz") and resp.status == 503), (
        path,
        resp.status,
        body[:200],
    )
    assert SECRET not in body, path
    assert time.monotonic() - t0 < 60, path  # RE2: no catastrophic pattern stalls
    if resp.status == 200 and "200" in responses:
        documented = set(responses["200"].get("content", {}))
        ctype = resp.getheader("Content-Type", "").split(";")[0]
        assert not documented or ctype in documented, (path, ctype, documented)
