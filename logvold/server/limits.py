"""Connection and request limits of the HTTP server: what one client (or a thousand)
can make the daemon hold. Every refusal is an HTTP answer with a reason (503 for the
server as a whole, 429 for one stream or a kind of work), counted in
`logvold_http_refused_total{reason}`; nothing queues without bound.

- connections: at the cap, the listener's protocol factory closes the oldest connection
  that has not completed a request yet (a slowloris one, or a client that connected and
  stalled) to make room; with none such, it answers the new connection with a 503 and
  closes it. Descriptors stay available for the files being rotated, and a prompt client
  (a probe) is served even while a flood of stalled connections comes in;
- header timeout: aiohttp's keep-alive timer (armed at connect and after each response,
  not reset by partial data) closes a connection that does not complete its headers;
- followers (global and per stream) and heavy reads: counted slots taken around the
  handler, released when the response ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from logvold.core.policy import ServerLimits
from logvold.core.streams import StreamKey
from logvold.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BACKLOG = 128
"""Listen backlog, and so the most connections asyncio accepts in one burst (it accepts up
to `backlog` per readiness event before any protocol runs): small enough that a burst
cannot exhaust the descriptors the connection cap keeps in reserve."""
_REFUSE_LINGER_S = 0.5
"""How long a refused connection may take to read its 503 before it is closed."""
_ACCEPT_ERROR_LOG_EVERY_S = 10.0


def effective_limits(limits: ServerLimits, nofile_soft: int | None = None) -> ServerLimits:
    """`limits` clamped to the descriptors this process may open: at most half for client
    connections and an eighth for followers (each also holds one or two file fds), so a
    flood of clients never leaves the rotator without descriptors."""
    if nofile_soft is None:
        nofile_soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile_soft == resource.RLIM_INFINITY or nofile_soft <= 0:
        return limits
    from dataclasses import replace

    return replace(
        limits,
        max_connections=max(1, min(limits.max_connections, nofile_soft // 2)),
        max_followers=max(1, min(limits.max_followers, nofile_soft // 8)),
        max_heavy_reads=max(1, min(limits.max_heavy_reads, nofile_soft // 32)),
    )


@dataclass
class RequestLimits:
    """Counted slots for followers and heavy reads (the event loop only: no locks)."""

    limits: ServerLimits
    metrics: Metrics
    followers: int = 0
    heavy: int = 0
    per_stream: dict[StreamKey, int] = field(default_factory=dict)
    waiting: dict[Any, None] = field(default_factory=dict)
    """Connections (aiohttp RequestHandlers) that have not completed a request yet, oldest
    first: the ones to close when a new connection needs room."""

    def refuse(self, reason: str, status: int, text: str) -> web.HTTPException:
        self.metrics.http_refused.labels(reason).inc()
        cls = web.HTTPTooManyRequests if status == 429 else web.HTTPServiceUnavailable
        refusal = cls(text=text + "\n", headers={"Retry-After": "1"})
        refusal.force_close()  # a refused client's connection is not kept alive
        return refusal

    def evict_waiting(self) -> bool:
        """Close the oldest connection still waiting for its first request; False if none."""
        while self.waiting:
            handler = next(iter(self.waiting))
            del self.waiting[handler]
            if handler.transport is not None and not handler.transport.is_closing():
                handler.force_close()
                self.metrics.http_refused.labels("idle_evicted").inc()
                return True
        return False

    def connected(self, handler: Any) -> None:
        if len(self.waiting) > 2 * self.limits.max_connections:  # drop closed ones
            self.waiting = {
                h: None
                for h in self.waiting
                if h.transport is not None and not h.transport.is_closing()
            }
        self.waiting[handler] = None

    @contextlib.asynccontextmanager
    async def follower(self, key: StreamKey) -> AsyncIterator[None]:
        lim = self.limits
        if self.followers >= lim.max_followers:
            raise self.refuse(
                "followers",
                503,
                f"too many followers ({lim.max_followers}, "
                "server.limits.maxFollowers); retry later",
            )
        if self.per_stream.get(key, 0) >= lim.max_followers_per_stream:
            raise self.refuse(
                "stream_followers",
                429,
                f"too many followers of {key} ({lim.max_followers_per_stream}, "
                "server.limits.maxFollowersPerStream); retry later",
            )
        self.followers += 1
        self.per_stream[key] = self.per_stream.get(key, 0) + 1
        try:
            yield
        finally:
            self.followers -= 1
            left = self.per_stream[key] - 1
            if left:
                self.per_stream[key] = left
            else:
                del self.per_stream[key]

    @contextlib.asynccontextmanager
    async def heavy_read(self) -> AsyncIterator[None]:
        lim = self.limits
        if self.heavy >= lim.max_heavy_reads:
            raise self.refuse(
                "heavy_reads",
                429,
                f"too many concurrent reads ({lim.max_heavy_reads}, "
                "server.limits.maxHeavyReads); retry shortly",
            )
        self.heavy += 1
        try:
            yield
        finally:
            self.heavy -= 1


LIMITS_KEY = web.AppKey("logvold.limits", RequestLimits)


def request_limits(app: web.Application) -> RequestLimits | None:
    return app.get(LIMITS_KEY)


@web.middleware
async def request_started(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A connection that completed a request is no longer a candidate for eviction."""
    limits = request.app.get(LIMITS_KEY)
    if limits is not None:
        limits.waiting.pop(request.protocol, None)
    return await handler(request)


class _Refused(asyncio.Protocol):
    """Answers a connection over the cap with a 503 and closes it: no request is parsed."""

    BODY = b"too many connections (server.limits.maxConnections); retry later\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(self.BODY)).encode() + b"\r\n\r\n" + self.BODY
        )
        # Closing at once with unread request bytes would send a RST that can destroy the
        # 503 in flight; give the client a moment to read it.
        self.timer = asyncio.get_running_loop().call_later(_REFUSE_LINGER_S, transport.abort)
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if transport.can_write_eof():
                transport.write_eof()

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read

    def eof_received(self) -> bool:
        self.timer.cancel()
        self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()


class LimitedSite(web.BaseSite):
    """A listener whose protocol factory refuses connections beyond `max_connections`
    (counted over every site of the runner: TCP and the unix socket share the cap)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        *,
        limits: RequestLimits,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=_BACKLOG)
        self._host, self._port, self._sock = host, port, sock
        self._limits = limits

    @property
    def name(self) -> str:
        if self._sock is not None:
            return f"http://unix:{self._sock.getsockname()}:"
        return f"http://{self._host or '0.0.0.0'}:{self._port}"  # noqa: S104 - a label

    def _factory(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        limits = self._limits
        if len(server.connections) >= limits.limits.max_connections and (
            not limits.evict_waiting()
        ):
            limits.metrics.http_refused.labels("connections").inc()
            return _Refused()
        handler = server()
        limits.connected(handler)
        return handler

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.BaseProtocol] = self._factory
        if self._sock is not None:
            self._server = await loop.create_server(
                factory, sock=self._sock, ssl=self._ssl_context, backlog=_BACKLOG
            )
        else:
            self._server = await loop.create_server(
                factory,
                self._host,
                self._port,
                ssl=self._ssl_context,
                backlog=_BACKLOG,
                reuse_address=True,
            )


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
    """asyncio logs an accept() that fails for lack of descriptors (EMFILE) with a traceback
    each time it retries; log that at most every few seconds, and count it."""
    previous = loop.get_exception_handler()
    last = [0.0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "socket.accept() out of system resource" in str(context.get("message", "")):
            metrics.http_refused.labels("accept_error").inc()
            now = time.monotonic()
            if now - last[0] >= _ACCEPT_ERROR_LOG_EVERY_S:
                last[0] = now
                log.error(
                    "cannot accept connections: %s (out of file descriptors? see "
                    "server.limits.maxConnections and LimitNOFILE)",
                    context.get("exception"),
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
