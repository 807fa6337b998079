"""The config reload path (SIGHUP, a changed config file): validate, then apply or keep the old.

A new config is loaded and checked on a worker thread (runtime checks, directory locks,
host checks against the previous config); a rejected one changes nothing, is logged and
counted, and its content is not retried every rescan. An accepted one is applied in
place: logging, the default volume, the static source, a full reconcile, pod discovery
and the HTTP server only when their parts of the config changed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from logvold.config.serve_settings import check_host, check_runtime
from logvold.daemon import LOGGER_NAME
from logvold.daemon.http_server import HttpServer
from logvold.daemon.reconcile import ReconcileSteps
from logvold.errors import ConfigError, UsageError
from logvold.fileio.dirlock import DirectoryLocked
from logvold.telemetry.logsetup import configure_logging

if TYPE_CHECKING:
    from logvold.core.policy import Config

log = logging.getLogger(LOGGER_NAME)

DISCOVERY_SYNC_TIMEOUT_S = 10.0
"""How long start-up waits for the first pod list before serving what it has."""


class ReloadSteps(ReconcileSteps):
    """Reloading the config, and the parts a config starts: default volume, pod discovery."""

    http: HttpServer

    async def reload(self) -> bool:
        """Re-read the config; apply it if valid, else keep the old one (logged, counted)."""
        digest = self.config_watch.read()
        try:
            new = await asyncio.to_thread(self._load_config, self.options)
            check_runtime(new)
            self.locks.lock_volumes(new)
            await asyncio.to_thread(
                functools.partial(check_host, new, self.options, previous=self.config)
            )
        except (ConfigError, UsageError, DirectoryLocked) as exc:
            self.reloads_failed += 1
            self.metrics.reloads.labels("error").inc()
            self.config_watch.remember(digest)  # do not retry the same bad content every rescan
            problems = (
                [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [str(exc)]
            )
            log.error(
                "config reload rejected; the previous config stays in effect",
                extra={"config": self.options.config_path or "-", "problems": "; ".join(problems)},
            )
            return False
        old = self.config
        self.config = new
        self.config_watch.remember(digest)
        if (new.log_format, new.log_level) != (old.log_format, old.log_level):
            configure_logging(new.log_format, new.log_level)
        self._prepare_default_volume(new)
        self.source.set_config(new)
        # Policies of existing streams change through registry "updated" events.
        self._full_rescan = True
        await self._reconcile(full=True)
        if new.kubernetes != old.kubernetes:
            if self.discovery is not None:
                await asyncio.to_thread(self.discovery.stop)
                self.discovery = None
            if new.kubernetes.enabled:
                await self._start_discovery(new)
        elif self.discovery is not None and (new.defaults, new.max_streams_per_volume) != (
            old.defaults,
            old.max_streams_per_volume,
        ):
            self.discovery.update_defaults(new.defaults, new.max_streams_per_volume)
        if self.options.serve_http and (
            new.server != old.server or new.node_log_query != old.node_log_query
        ):
            await self.http.restart(old, new)
        self.reloads_ok += 1
        self.metrics.reloads.labels("success").inc()
        log.info("config reloaded", extra={"config": new.source, "streams": len(self.registry)})
        return True

    def _prepare_default_volume(self, config: Config) -> None:
        """The built-in `local` volume (no config file) is created if missing."""
        if self.options.config_path is not None and self.options.logs_dir is None:
            return
        for volume in config.volumes:
            if volume.name == "local":
                try:
                    Path(volume.path).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    log.warning(
                        "cannot create the logs directory",
                        extra={"path": volume.path, "error": exc.strerror},
                    )

    # -- discovery --------------------------------------------------------------------

    async def _start_discovery(self, config: Config) -> None:
        """Pods of this node feed the same registry as the static volumes."""
        from logvold.sources.kubernetes import PodDiscovery

        discovery = PodDiscovery(
            config.kubernetes,
            self.registry,
            self.metrics,
            config.defaults,
            max_streams_per_volume=config.max_streams_per_volume,
        )
        await asyncio.to_thread(discovery.start)  # loads credentials: LogvoldError if none
        self.discovery = discovery
        if not await asyncio.to_thread(discovery.wait_synced, DISCOVERY_SYNC_TIMEOUT_S):
            log.warning(
                "pods not listed yet; streams appear as the list arrives",
                extra={"node": discovery.node_name},
            )
