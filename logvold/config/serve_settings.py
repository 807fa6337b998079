"""Settings of `logvold serve`: command-line options, the effective config (file or
built-in defaults, then flag overrides) and the checks only the daemon makes."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from logvold.config.host_checks import find_unit, host_problems, read_unit_sandbox
from logvold.config.yaml_file import load_config, parse_yaml_tree, read_config_text
from logvold.core.policy import Config, VolumeSpec, default_config
from logvold.errors import ConfigError, ConfigProblem, LogvoldError, UsageError
from logvold.telemetry.logsetup import FORMATS, LEVELS


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """Command-line settings of `logvold serve`; they override the config file."""

    config_path: str | None = None
    listen: str | None = None
    logs_dir: str | None = None
    log_format: str | None = None
    log_level: str | None = None
    serve_http: bool = True
    rotation_workers: int = 4
    compression_workers: int = 2
    hint_delay_s: float = 0.0
    """Extra batching of hints in the scheduler: none, the watcher batches already."""
    min_check_interval_s: float = 0.0
    """Floor between two checks of one stream: none, a write only costs a step when the
    size gate (workers.size_due) says maxSize may be crossed."""
    stall_timeout_s: float = 120.0
    """/livez turns 503 once the event loop or a reconcile pass is stuck this long (or no
    pass finished for rescanInterval plus this): long enough for a slow full scan of a big
    node, short enough that a wedged daemon is restarted within minutes."""


def load_effective_config(options: ServeOptions) -> Config:
    """The config file (or the built-in defaults) with the command-line overrides applied."""
    if options.config_path is None:
        config = default_config(options.logs_dir or "./logs")
    else:
        config = load_config(options.config_path)
        if options.logs_dir is not None:
            if config.volumes:
                raise UsageError(
                    "--logs-dir only applies when the config defines no volumes; "
                    "edit the volume paths in the config instead"
                )
            config = replace(config, volumes=(VolumeSpec(name="local", path=options.logs_dir),))
    if options.listen is not None:
        config = replace(config, server=replace(config.server, listen=options.listen))
    if options.log_format is not None:
        config = replace(config, log_format=options.log_format)  # type: ignore[arg-type]
    if options.log_level is not None:
        config = replace(config, log_level=options.log_level)
    return config


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"listen address {listen!r} must be HOST:PORT, e.g. 127.0.0.1:8642")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - explicit ":PORT" means all


def check_runtime(config: Config) -> None:
    """Problems only the daemon can see (flags are checked before the file is read)."""
    problems: list[ConfigProblem] = []
    try:
        parse_listen(config.server.listen)
    except UsageError as exc:
        problems.append(ConfigProblem(config.source, None, "server.listen", str(exc)))
    if config.log_format not in FORMATS:
        problems.append(
            ConfigProblem(config.source, None, "logFormat", f"must be one of {', '.join(FORMATS)}")
        )
    if config.log_level.lower() not in LEVELS:
        problems.append(
            ConfigProblem(config.source, None, "logLevel", f"must be one of {', '.join(LEVELS)}")
        )
    if problems:
        raise ConfigError(problems)


def creates_local_volume(options: ServeOptions) -> bool:
    """The daemon creates the `local` volume itself (built-in defaults or --logs-dir)."""
    return options.config_path is None or options.logs_dir is not None


def check_host(
    config: Config,
    options: ServeOptions,
    environ: Mapping[str, str] | None = None,
    *,
    previous: Config | None = None,
) -> None:
    """ConfigError with what stops `config` from working on this host (a missing volume
    path, one the systemd unit this process runs as cannot write): the same words
    `logvold check-config` prints as warnings. On a reload (`previous`), only what the
    new config adds or changes is judged. See logvold.config.host_checks."""
    env = os.environ if environ is None else environ
    unit_file = find_unit(env, running=True)
    unit = read_unit_sandbox(unit_file) if unit_file is not None else None
    lines = None
    if options.config_path is not None and Path(config.source).is_file():
        try:
            lines = parse_yaml_tree(read_config_text(config.source), config.source)[1]
        except ConfigError:
            lines = None  # changed under us since it was loaded: report without lines
    created = ("local",) if creates_local_volume(options) else ()
    problems = host_problems(config, lines=lines, unit=unit, created=created, previous=previous)
    if problems:
        raise ConfigError(problems)


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The listener's TLS context (None for plain HTTP); a bad cert/key is a config
    problem naming the key, so `serve` exits 2 and a reload keeps the old listener."""
    from logvold.server.auth import make_ssl_context

    try:
        return make_ssl_context(config.server)
    except LogvoldError as exc:
        raise ConfigError([ConfigProblem(config.source, None, "server.tls", str(exc))]) from exc
