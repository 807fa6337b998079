"""A real logvold HTTP server (build_app + start_server) on 127.0.0.1, port 0, in a
thread with its own event loop, plus a small aiohttp client helper for sync tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from logvold.core.policy import Config, default_config
from logvold.core.streams import StreamRegistry
from logvold.server.app import build_app, start_server
from logvold.telemetry.metrics import Metrics

T = TypeVar("T")


class RunningServer:
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


def get(url: str, **kw: Any) -> tuple[int, bytes, dict[str, str]]:
    return asyncio.run(fetch(url, **kw))
