"""The config reload path (SIGHUP, a changed config file): validate, then apply or keep the old.

A new config is loaded and checked on a worker thread (runtime checks, directory locks,
host checks against the previous config); a rejected one changes nothing, is logged and
counted, and its content is not retried every rescan. An accepted one is applied in
place (Daemon.reload): logging, the default volume, the static source, a full
reconcile, pod discovery and the HTTP server only when their parts of the config changed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logvold.config.serve_settings import ServeOptions, check_host, check_runtime
from logvold.core.streams import StreamRegistry
from logvold.daemon.locks import StreamDirectoryLocks
from logvold.daemon.logger import LOGGER_NAME
from logvold.errors import ConfigError, UsageError
from logvold.fileio.dirlock import DirectoryLocked
from logvold.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from logvold.core.policy import Config

log = logging.getLogger(LOGGER_NAME)

DISCOVERY_SYNC_TIMEOUT_S = 10.0
"""How long start-up waits for the first pod list before serving what it has."""


async def load_checked(
    load: Callable[[ServeOptions], Config],
    options: ServeOptions,
    previous: Config,
    locks: StreamDirectoryLocks,
) -> Config:
    """Load the config again and check it as a start would (runtime, directory locks
    of its static volumes, host checks against `previous`); ConfigError, UsageError
    or DirectoryLocked when it must be rejected (no lock is left behind then)."""
    new = await asyncio.to_thread(load, options)
    check_runtime(new)
    locks.lock_volumes(new)
    await asyncio.to_thread(functools.partial(check_host, new, options, previous=previous))
    return new


def log_rejected(exc: ConfigError | UsageError | DirectoryLocked, options: ServeOptions) -> None:
    problems = [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [str(exc)]
    log.error(
        "config reload rejected; the previous config stays in effect",
        extra={"config": options.config_path or "-", "problems": "; ".join(problems)},
    )


def prepare_default_volume(config: Config, options: ServeOptions) -> None:
    """The built-in `local` volume (no config file) is created if missing."""
    if options.config_path is not None and options.logs_dir is None:
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


class Discovery:
    """Pod discovery when `kubernetes.enabled`: pods of this node feed the same registry
    as the static volumes. Started, swapped by a reload that changes its config, stopped."""

    def __init__(self, registry: StreamRegistry, metrics: Metrics) -> None:
        self._registry = registry
        self._metrics = metrics
        self.running: Any = None
        """PodDiscovery (imported only when enabled: it pulls in the client)."""

    async def start(self, config: Config) -> None:
        if not config.kubernetes.enabled:
            return
        from logvold.sources.kubernetes import PodDiscovery

        discovery = PodDiscovery(
            config.kubernetes,
            self._registry,
            self._metrics,
            config.defaults,
            max_streams_per_volume=config.max_streams_per_volume,
        )
        await asyncio.to_thread(discovery.start)  # loads credentials: LogvoldError if none
        self.running = discovery
        if not await asyncio.to_thread(discovery.wait_synced, DISCOVERY_SYNC_TIMEOUT_S):
            log.warning(
                "pods not listed yet; streams appear as the list arrives",
                extra={"node": discovery.node_name},
            )

    async def apply(self, old: Config, new: Config) -> None:
        """A reloaded config: restart on a new `kubernetes` section, else pass on new
        defaults and stream caps."""
        if new.kubernetes != old.kubernetes:
            await self.stop()
            await self.start(new)
        elif self.running is not None and (new.defaults, new.max_streams_per_volume) != (
            old.defaults,
            old.max_streams_per_volume,
        ):
            self.running.update_defaults(new.defaults, new.max_streams_per_volume)

    async def stop(self) -> None:
        if self.running is not None:
            await asyncio.to_thread(self.running.stop)
            self.running = None
