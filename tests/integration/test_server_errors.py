"""The error middleware maps only the request-error family (errors.BadRequest) to a 400:
a ValueError escaping a handler is a bug, so it is a 500 and logged with its traceback,
and counted as a 500 in logvold_http_requests_total. A real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from logvold.core.policy import default_config
from logvold.core.streams import StreamRegistry
from logvold.errors import BadRequest, LogvoldError, SelectorError
from logvold.server.app import build_app, start_server
from logvold.telemetry.metrics import Metrics


async def _bad_request(request: web.Request) -> web.Response:
    raise BadRequest("tailLines must be an integer, got 'x'")


async def _selector(request: web.Request) -> web.Response:
    raise SelectorError("unknown operator in 'a=~b'")


async def _bug(request: web.Request) -> web.Response:
    raise ValueError("invalid literal for int() with base 10: 'oops'")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, Metrics]]:
    metrics = Metrics()
    app = build_app(
        config=default_config(), registry=StreamRegistry(), metrics=metrics, is_ready=lambda: True
    )
    app.router.add_get("/test/bad-request", _bad_request, name="bad_request")
    app.router.add_get("/test/selector", _selector, name="selector")
    app.router.add_get("/test/bug", _bug, name="bug")
    runner = await start_server(app, "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", metrics
    finally:
        await runner.cleanup()


async def _get(url: str, accept: str = "text/plain") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Accept": accept}) as response,
    ):
        return response.status, await response.text()


def test_request_errors_are_logvold_errors_and_a_stray_value_error_is_not() -> None:
    assert issubclass(BadRequest, LogvoldError)
    assert issubclass(SelectorError, BadRequest)
    assert not issubclass(BadRequest, ValueError)


@pytest.mark.asyncio
async def test_bad_request_family_is_a_400_with_its_reason(
    server: tuple[str, Metrics],
) -> None:
    base, _ = server
    assert await _get(f"{base}/test/bad-request") == (
        400,
        "tailLines must be an integer, got 'x'\n",
    )
    status, body = await _get(f"{base}/test/selector", accept="application/json")
    assert status == 400
    assert "unknown operator" in body and '"kind": "Status"' in body.replace('":"', '": "')


@pytest.mark.asyncio
async def test_a_value_error_from_a_bug_is_a_500_logged_and_counted(
    server: tuple[str, Metrics], caplog: pytest.LogCaptureFixture
) -> None:
    base, metrics = server
    with caplog.at_level(logging.ERROR, logger="logvold.server.app"):
        status, body = await _get(f"{base}/test/bug")
    assert status == 500
    assert "oops" not in body  # no internals to the client
    logged = [r for r in caplog.records if "/test/bug" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "invalid literal" in str(logged[0].exc_info[1])
    exposition = metrics.exposition()[0].decode()
    assert 'logvold_http_requests_total{code="500",handler="bug"} 1.0' in exposition
