"""A real logvold HTTP server (build_app + start_server) on 127.0.0.1, port 0.

`serving()` runs it on the test's own event loop (pytest-asyncio): the shape for async
tests, which talk to it with `fetch()`. `RunningServer` runs it in a thread with its own
loop, on purpose: it is for synchronous tests whose client is a subprocess or a blocking
library (kubectl, promtool, chromium, hypothesis-driven fuzzing) and so cannot share a
loop with the server; they talk to it with the blocking `get()`.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from logvold.core.policy import Config, default_config
from logvold.core.streams import StreamRegistry
from logvold.server.app import build_app, start_server
from logvold.telemetry.metrics import Metrics

T = TypeVar("T")


@dataclass
class Served:
    """A server running on the caller's loop; `is_ready` may be swapped by a test."""

    registry: StreamRegistry
    metrics: Metrics
    port: int = 0
    is_ready: Callable[[], bool] = field(default=lambda: True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def serving(
    registry: StreamRegistry,
    *,
    metrics: Metrics | None = None,
    config: Config | None = None,
) -> AsyncIterator[Served]:
    """Start build_app + start_server on 127.0.0.1:0 on the running loop; clean up on exit."""
    served = Served(registry=registry, metrics=metrics or Metrics())
    app = build_app(
        config=config or default_config(),
        registry=registry,
        metrics=served.metrics,
        is_ready=lambda: served.is_ready(),
    )
    runner = await start_server(app, "127.0.0.1:0")
    served.port = runner.addresses[0][1]
    try:
        yield served
    finally:
        await runner.cleanup()


class RunningServer:
    """The server in a background thread with its own loop, for synchronous tests whose
    client (a kubectl/promtool/chromium subprocess, or hypothesis) blocks the test thread:
    a server on the test's loop would never run while the test waits."""

    def __init__(
        self,
        registry: StreamRegistry,
        *,
        metrics: Metrics | None = None,
        is_ready: Callable[[], bool] = lambda: True,
        config: Config | None = None,
    ) -> None:
        self.registry = registry
        self.config = config or default_config()
        self.metrics = metrics or Metrics()
        self.is_ready = is_ready
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="test-api-server", daemon=True
        )
        self.runner: web.AppRunner | None = None
        self.port = 0

    def __enter__(self) -> RunningServer:
        self.thread.start()
        app = build_app(
            config=self.config,
            registry=self.registry,
            metrics=self.metrics,
            is_ready=lambda: self.is_ready(),
        )
        self.runner = self.call(start_server(app, "127.0.0.1:0"))
        self.port = self.runner.addresses[0][1]
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def fetch(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 20
) -> tuple[int, bytes, dict[str, str]]:
    """GET without any client-side normalisation of the path (encoded=True)."""
    from yarl import URL

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.get(URL(url, encoded=True), headers=headers) as r,
    ):
        return r.status, await r.read(), dict(r.headers)


def get(
    url: str, *, headers: dict[str, str] | None = None, timeout: float = 20
) -> tuple[int, bytes, dict[str, str]]:
    """A blocking GET for synchronous tests (the server runs in RunningServer's thread):
    http.client sends the path exactly as given, like fetch(), and runs no event loop."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()
