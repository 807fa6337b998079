"""`logvold serve`: the command line, the config checks before start, and the daemon's process.

Arguments and the effective config are checked before anything starts (exit 2 with the
problem, or every config problem, on stderr); the file descriptor limit is raised; then
the daemon runs under asyncio with SIGTERM/SIGINT asking it to stop and SIGHUP to reload
(`--once`: one reconcile pass, no signals, no server). Exit 0 ok, 1 runtime failure, 2
config or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from logvold.config.serve_settings import (
    ServeOptions,
    check_host,
    check_runtime,
    load_effective_config,
    parse_listen,
)
from logvold.daemon.lifecycle import Daemon
from logvold.errors import ConfigError, LogvoldError, UsageError
from logvold.fileio.dirlock import DirectoryLocked
from logvold.telemetry.logsetup import FORMATS, LEVELS, configure_logging

log = logging.getLogger(__name__)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one, as Go's runtime does: every client
    connection, follower and rotation holds descriptors, and 1024 is a poor default for a
    node daemon. Returns (old soft, new soft)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, hard


# -- command line -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting: main_serve prints it with the
    usage line and returns 2 itself."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog="logvold serve",
        description="Rotate, truncate and serve the logging volumes of this node. Without "
        "--config, one volume `local` at ./logs (created if missing) is managed "
        "with the default policy and the API listens on 127.0.0.1:8642.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file (see config.example.yaml)")
    p.add_argument("--listen", metavar="HOST:PORT", help="override server.listen")
    p.add_argument(
        "--logs-dir", metavar="DIR", help="path of the default volume `local` (default ./logs)"
    )
    p.add_argument("--log-format", choices=FORMATS, help="format of logvold's own log lines")
    p.add_argument(
        "--log-level",
        choices=sorted(set(LEVELS) - {"warn"}),
        help="level of logvold's own log lines",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the effective config and exit"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="one reconcile pass (rotate, enforce retention, compress), then exit",
    )
    p.add_argument(
        "--rotation-workers",
        type=int,
        default=4,
        metavar="N",
        help="threads for rotation and retention steps (default 4)",
    )
    p.add_argument(
        "--compression-workers",
        type=int,
        default=2,
        metavar="N",
        help="threads for compressing closed segments (default 2)",
    )
    return p


def main_serve(argv: Sequence[str]) -> int:
    """`logvold serve`: exit 0 ok, 1 runtime failure, 2 config or usage error."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except UsageError as exc:
        sys.stderr.write(f"{parser.format_usage()}logvold serve: error: {exc}\n")
        return 2
    try:
        if args.rotation_workers < 1 or args.compression_workers < 1:
            raise UsageError("--rotation-workers and --compression-workers must be >= 1")
        if args.listen is not None:
            parse_listen(args.listen)
    except UsageError as exc:
        sys.stderr.write(f"logvold serve: error: {exc}\n")
        return 2
    options = ServeOptions(
        config_path=args.config,
        listen=args.listen,
        logs_dir=args.logs_dir,
        log_format=args.log_format,
        log_level=args.log_level,
        serve_http=not args.once,
        rotation_workers=args.rotation_workers,
        compression_workers=args.compression_workers,
    )
    try:
        config = load_effective_config(options)
        parse_listen(config.server.listen)
        check_runtime(config)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        sys.stderr.write(f"logvold serve: {len(exc.problems)} config problem(s); nothing started\n")
        return 2
    except (UsageError, LogvoldError) as exc:
        sys.stderr.write(f"logvold serve: error: {exc}\n")
        return 2
    if args.print_config:
        from logvold.config.yaml_file import dump_config

        sys.stdout.write(dump_config(config))
        return 0
    try:
        check_host(config, options)  # after --print-config: that may be for another host
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        sys.stderr.write(
            f"logvold serve: {len(exc.problems)} problem(s) on this host; nothing "
            "started (`logvold check-config FILE` shows the same)\n"
        )
        return 2
    configure_logging(config.log_format, config.log_level)
    old_soft, soft = raise_nofile_limit()
    log.info(
        "file descriptor limit",
        extra={
            "soft": soft,
            "was": old_soft,
            "hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        },
    )
    daemon = Daemon(config, options)
    try:
        return asyncio.run(_serve(daemon, once=args.once))
    except ConfigError as exc:  # e.g. a TLS key that cannot be loaded
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        return 2
    except DirectoryLocked as exc:
        sys.stderr.write(f"logvold serve: error: {exc}\n")
        return 1
    except (OSError, LogvoldError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1


async def _serve(daemon: Daemon, *, once: bool) -> int:
    if once:
        return await daemon.run_once()
    loop = asyncio.get_running_loop()
    for signum, action in (
        (signal.SIGTERM, daemon.request_stop),
        (signal.SIGINT, daemon.request_stop),
        (signal.SIGHUP, daemon.request_reload),
    ):
        loop.add_signal_handler(signum, action)
    try:
        try:
            await daemon.start()
        except BaseException:
            await daemon.stop()
            raise
        code = await daemon.run()
        await daemon.stop()
        return code
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
