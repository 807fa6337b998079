"""The daemon's HTTP server: started with the config, restarted by a reload that changes it.

Binding errors say what to do (address in use, not on this host, privileged port), a
reload whose new listener cannot start keeps the old one, and the start logs who may
read what (auth mode, root file access, loopback) and the limits in effect.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from logvold.config.serve_settings import ssl_context
from logvold.daemon.logger import LOGGER_NAME
from logvold.errors import LogvoldError

if TYPE_CHECKING:
    from aiohttp import web

    from logvold.core.policy import Config
    from logvold.core.streams import StreamRegistry
    from logvold.sources.changes import StreamChanges
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger(LOGGER_NAME)


class HttpServer:
    """The API server on the daemon's registry and metrics: at most one listener at a time.

    It owns the aiohttp runner; the daemon starts it with a config, restarts it when a
    reload changes the server's part of the config, and closes it at stop."""

    def __init__(
        self,
        registry: StreamRegistry,
        metrics: Metrics,
        changes: StreamChanges,
        *,
        is_ready: Callable[[], bool],
        is_live: Callable[[], str | None],
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._changes = changes
        self._is_ready = is_ready
        self._is_live = is_live
        self.runner: web.AppRunner | None = None
        """The running listener (None before start and after close); tests read its port."""

    async def start(self, config: Config) -> None:
        """Listen on `config.server.listen`; LogvoldError with what to do if binding fails."""
        from logvold.server.app import build_app, start_server

        app = build_app(
            config=config,
            registry=self._registry,
            metrics=self._metrics,
            is_ready=self._is_ready,
            changes=self._changes,
            is_live=self._is_live,
        )
        if config.server.auth == "kubernetes":
            app.middlewares.append(_kubernetes_auth(config))
        try:
            self.runner = await start_server(
                app, config.server.listen, ssl_context=ssl_context(config)
            )
        except OSError as exc:
            raise LogvoldError(listen_error(config.server.listen, exc), op="listen") from exc
        _log_server_safety(config)

    async def restart(self, old: Config, new: Config) -> None:
        """Swap the listener for one on `new`; if it cannot start, listen on `old` again."""
        await self.close()
        try:
            await self.start(new)
        except (OSError, LogvoldError) as exc:
            log.error(
                "cannot start the HTTP server with the new config; restoring the old listener",
                extra={"listen": new.server.listen, "error": str(exc)},
            )
            await self.start(old)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _log_server_safety(config: Config) -> None:
    """Say at start who may read what, and the limits in effect (clamped to the fds)."""
    from logvold.server.access import has_root_file_access
    from logvold.server.limits import effective_limits

    server = config.server
    limits = effective_limits(server.limits)
    if server.auth == "local" and has_root_file_access():
        log.warning(
            "no server.auth configured and logvold reads with root's file access: each "
            "client is served only the files its own user could open (local TCP clients "
            "by their uid, others only world-readable files); use the unix socket or "
            "server.auth for more (docs/SECURITY.md)",
            extra={"listen": server.listen, "socket": server.socket_path or "-"},
        )
    elif server.auth == "none" and not _is_loopback(server.listen):
        log.warning(
            "server.auth none on a non-loopback address: anyone who can connect reads every log",
            extra={"listen": server.listen},
        )
    log.info(
        "server limits",
        extra={
            "auth": server.auth,
            "socket": server.socket_path or "-",
            "header_timeout_s": limits.header_timeout_s,
            "max_connections": limits.max_connections,
            "max_followers": limits.max_followers,
            "max_followers_per_stream": limits.max_followers_per_stream,
            "max_heavy_reads": limits.max_heavy_reads,
        },
    )


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def listen_error(listen: str, exc: OSError) -> str:
    """What went wrong binding the API's address, and what to do about it."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        _, _, port = listen.rpartition(":")
        return (
            f"cannot listen on {listen}: address already in use; another process (maybe "
            f"another logvold) holds it: find it with `ss -ltnp 'sport = :{port}'`, or "
            "set server.listen (--listen) to a free port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {listen}: {reason}; the host has no such address: use "
            "127.0.0.1, 0.0.0.0 or one of its own addresses in server.listen (--listen)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {listen}: {reason}; ports below 1024 need "
            "CAP_NET_BIND_SERVICE: use a port >= 1024 in server.listen (--listen)"
        )
    return f"cannot listen on {listen}: {reason}; check server.listen (--listen)"


def _kubernetes_auth(config: Config) -> Any:
    """TokenReview + SubjectAccessReview middleware; the API client is built at the
    first request that needs a review, so starting needs no credentials yet."""
    from logvold.server.auth import make_auth_middleware
    from logvold.sources.kube_api import KubernetesApi, make_api_client, resolve_node_name

    return make_auth_middleware(
        config.server,
        lambda: KubernetesApi(make_api_client(config.kubernetes)),
        node_name=resolve_node_name(config.kubernetes.node_name),
    )
