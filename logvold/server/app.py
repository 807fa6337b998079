"""The aiohttp application: routes, the error/metrics middleware, /metrics and health.

Handlers stay thin: validation and reading live in logs.py / kubeapi.py over the
sync reader, which runs in a bounded thread pool one step at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from logvold.core.policy import Config
from logvold.core.streams import StreamRegistry
from logvold.errors import BadRequest, LogvoldError, UsageError
from logvold.server.keys import (
    CHANGES_KEY,
    CONFIG_KEY,
    EXECUTOR_KEY,
    HANDLER_KEY,
    LIVE_KEY,
    METRICS_KEY,
    READY_KEY,
    REGISTRY_KEY,
    SHUTDOWN_KEY,
    LiveCheck,
)
from logvold.server.keys import ReadyCheck as ReadyCheck
from logvold.sources.changes import StreamChanges
from logvold.telemetry.metrics import CLIENT_CLOSED_REQUEST, Metrics

log = logging.getLogger(__name__)


READER_THREADS = 32
"""Threads that run reader steps; a step is bounded (one chunk), so followers share them."""
_T0_KEY = web.RequestKey("logvold.t0", float)
_SOCKETS_KEY: web.AppKey[list[tuple[str, int]]] = web.AppKey("logvold.sockets")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler_name(request: web.Request) -> str:
    """A bounded label for metrics: the route's name, never the raw path."""
    if HANDLER_KEY in request:
        return request[HANDLER_KEY]
    route = request.match_info.route
    return route.name or "unmatched"


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Client mistakes become 4xx with a short reason; only bugs are a 5xx (and logged)."""
    request[_T0_KEY] = time.monotonic()
    metrics = request.app[METRICS_KEY]
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as e:
        code = e.status
        if 400 <= code < 500 and _wants_json(request):
            response = _status_json(code, e.reason, e.text or e.reason)
            if "Allow" in e.headers:
                response.headers["Allow"] = e.headers["Allow"]
            return response
        raise
    except BadRequest as e:
        code = 400
        if _wants_json(request):
            return _status_json(400, "Bad Request", str(e))
        raise web.HTTPBadRequest(text=f"{e}\n") from e
    except (ConnectionResetError, BrokenPipeError, asyncio.CancelledError):
        # The client went away (aiohttp cancels the handler of a closed connection, e.g.
        # the end of `kubectl logs -f`): nginx's 499, never a 5xx that error alerts count.
        code = CLIENT_CLOSED_REQUEST
        raise
    except LogvoldError as e:
        log.error("request %s %s failed: %s", request.method, request.path, e)
        raise web.HTTPInternalServerError(text="internal error; see the logvold log\n") from e
    except Exception as e:  # a bug (a stray ValueError too): 500, logged with its traceback
        log.exception("request %s %s failed", request.method, request.path)
        raise web.HTTPInternalServerError(text="internal error; see the logvold log\n") from e
    finally:
        metrics.http_requests.labels(handler_name(request), str(code)).inc()


def _wants_json(request: web.Request) -> bool:
    """kubectl (`get --raw`) asks for JSON and prints a Status' message; curl gets text."""
    return "application/json" in request.headers.get("Accept", "")


_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "RequestEntityTooLarge",
    501: "NotImplemented",
}


def _status_json(code: int, reason: str, message: str) -> web.Response:
    """An error as a Kubernetes `Status`, the shape kubectl decodes."""
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.strip(),
            "reason": _REASONS.get(code, reason.replace(" ", "")),
            "code": code,
        },
        status=code,
    )


async def _observe_latency(request: web.Request, response: web.StreamResponse) -> None:
    """Latency until the response started (streams run long after that)."""
    t0 = request.get(_T0_KEY)
    if t0 is not None:
        request.app[METRICS_KEY].http_seconds.labels(handler_name(request)).observe(
            time.monotonic() - t0
        )


async def _metrics_handler(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[READY_KEY]():
        return web.Response(text="ok\n")
    return web.Response(status=503, text="not ready\n")


async def _livez(request: web.Request) -> web.Response:
    """For a liveness probe: 503 when the reconcile loop is stuck. A stalled event loop
    cannot answer at all, which the probe's timeout counts as a failure too."""
    problem = request.app[LIVE_KEY]()
    if problem is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"{problem}\n")


async def _on_shutdown(app: web.Application) -> None:
    app[SHUTDOWN_KEY].set()  # followers end at their next poll
    if CHANGES_KEY in app:
        app[CHANGES_KEY].notify_all()  # ... or now, when they sleep on change notices


async def _on_cleanup(app: web.Application) -> None:
    app[EXECUTOR_KEY].shutdown(wait=True, cancel_futures=True)


def build_app(
    *,
    config: Config,
    registry: StreamRegistry,
    metrics: Metrics,
    is_ready: Callable[[], bool],
    changes: StreamChanges | None = None,
    is_live: LiveCheck | None = None,
) -> web.Application:
    """The whole HTTP API over `registry`; nothing runs until start_server().
    `changes`: the daemon's per-stream change notices (None: followers poll)."""
    from logvold.server import kubeapi, kubelet_paths, logs, status
    from logvold.server.access import make_access_middleware
    from logvold.server.limits import (
        LIMITS_KEY,
        RequestLimits,
        effective_limits,
        request_started,
    )

    access = make_access_middleware(config.server)
    app = web.Application(
        middlewares=[request_started, _errors_and_metrics, access], client_max_size=64 * 1024
    )
    app[LIMITS_KEY] = RequestLimits(effective_limits(config.server.limits), metrics)
    app[CONFIG_KEY] = config
    app[REGISTRY_KEY] = registry
    app[METRICS_KEY] = metrics
    app[READY_KEY] = is_ready
    app[LIVE_KEY] = is_live or (lambda: None)
    app[EXECUTOR_KEY] = ThreadPoolExecutor(
        max_workers=READER_THREADS, thread_name_prefix="logvold-reader"
    )
    app[SHUTDOWN_KEY] = threading.Event()
    if changes is not None:
        app[CHANGES_KEY] = changes
    app.on_response_prepare.append(_observe_latency)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    app[_SOCKETS_KEY] = []
    app.on_cleanup.append(_unlink_sockets)
    try:
        from logvold.server.nodelog import handler as nodelog
    except ImportError:  # pragma: no cover - built in parallel; /logs/?query= then says 501
        log.warning("node log query unavailable: logvold.server.nodelog.handler did not import")
    else:
        nodelog.add_node_log_routes(app, config.node_log_query, metrics)
    logs.add_routes(app)
    kubelet_paths.add_routes(app)  # before kubeapi's /api/... catch-all
    kubeapi.add_routes(app)
    status.add_routes(app)
    app.router.add_get("/metrics", _metrics_handler, name="metrics")
    app.router.add_get("/healthz", _healthz, name="healthz")
    app.router.add_get("/readyz", _readyz, name="readyz")
    app.router.add_get("/livez", _livez, name="livez")
    return app


async def start_server(
    app: web.Application, listen: str, *, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Bind `listen` (HOST:PORT; port 0 picks a free one) and the config's unix socket (if
    any) and serve; returns the runner.

    The bound port is `runner.addresses[0][1]`; stop with `await runner.cleanup()`.
    """
    from logvold.server.limits import LIMITS_KEY, LimitedSite, quiet_accept_errors

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"listen address {listen!r} must be HOST:PORT, e.g. 127.0.0.1:8642")
    server = app[CONFIG_KEY].server
    limits = app[LIMITS_KEY]
    quiet_accept_errors(asyncio.get_running_loop(), app[METRICS_KEY])
    # aiohttp's keep-alive timer is armed at connect and after each response and is not
    # reset by partial data: a connection that does not finish its headers in time closes.
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=2.0,
        handler_cancellation=True,
        keepalive_timeout=limits.limits.header_timeout_s,
    )
    await runner.setup()
    try:
        site = LimitedSite(
            runner,
            host=host.strip("[]") or None,
            port=int(port),
            ssl_context=ssl_context,
            limits=limits,
        )
        await site.start()
        if server.socket_path:
            sock = bind_unix_socket(server.socket_path, server.socket_mode, server.socket_group)
            app[_SOCKETS_KEY].append((server.socket_path, Path(server.socket_path).stat().st_ino))
            await LimitedSite(runner, sock=sock, limits=limits).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bind_unix_socket(path: str, mode: int, group: str) -> socket.socket:
    """A listening unix socket at `path` with `mode` and `group`. A stale socket file is
    replaced; one another process still listens on, or any other file, is an error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise LogvoldError(
                f"server.socket.path {path} exists and is not a socket", path=path, op="listen"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            target.unlink()  # stale: nobody listens any more
        else:
            raise LogvoldError(
                f"server.socket.path {path}: another process listens on it", path=path, op="listen"
            )
        finally:
            probe.close()
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise LogvoldError(
                f"server.socket.group {group!r}: no such group",
                op="listen",
            ) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # The mode is defence in depth: every peer is still checked by SO_PEERCRED.
        target.chmod(mode)
        if gid >= 0:
            os.chown(path, -1, gid)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _unlink_sockets(app: web.Application) -> None:
    """Remove our socket files (not one a newer daemon bound meanwhile)."""
    for path, ino in app[_SOCKETS_KEY]:
        with contextlib.suppress(OSError):
            if Path(path).stat().st_ino == ino:
                Path(path).unlink()
