"""The `logvold` command: dispatches subcommands to the modules that own them.

Only this layer maps errors to exit codes: 0 ok, 1 runtime failure, 2 usage or
config error; `run` returns the child's status (128+N for signal N).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = """\
usage: logvold <command> [options]

commands:
  serve          run the daemon (rotate, truncate and serve logging volumes)
  run            run a command, writing its output to a rotating log file
                 (drop-in for kube-log-runner; `kube-log-runner` is an alias)
  driver         containerd binary:// log driver (also the `logvold-driver` script)
  logs           read a container stream from a running daemon ([NS/]POD/CONTAINER)
  query          node log query (kubelet KEP-2258) against a running daemon
  check-config   validate a config file and print OK or every problem found
  version        print the version (also `logvold --version`)

`logvold <command> -h` shows the options of a command.
"""


def _serve(argv: Sequence[str]) -> int:
    from logvold.daemon.serve import main_serve

    return main_serve(argv)


def _run(argv: Sequence[str]) -> int:
    from logvold.runner.cli import main_run
    from logvold.runner.process import exit_now

    exit_now(main_run(argv, prog="logvold run"))


def _driver(argv: Sequence[str]) -> int:
    from logvold.driver.logger import main_driver

    return main_driver(argv)


def _check_config(argv: Sequence[str]) -> int:
    from logvold.config.yaml_file import main_check_config

    return main_check_config(argv)


def _logs(argv: Sequence[str]) -> int:
    from logvold.client.cli import main_logs

    return main_logs(argv)


def _query(argv: Sequence[str]) -> int:
    from logvold.client.cli import main_query

    return main_query(argv)


def _version(argv: Sequence[str]) -> int:
    from logvold import __version__

    print(f"logvold {__version__}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "serve": _serve,
    "run": _run,
    "driver": _driver,
    "check-config": _check_config,
    "logs": _logs,
    "query": _query,
    "version": _version,
    "--version": _version,
    "-V": _version,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        sys.stderr.write(f"logvold: unknown command {args[0]!r}\n\n{USAGE}")
        return 2
    return command(args[1:])


def kube_log_runner_main() -> int:
    """`kube-log-runner`: the same as `logvold run`, under the Go binary's name."""
    from logvold.runner.cli import main_run
    from logvold.runner.process import exit_now

    exit_now(main_run(sys.argv[1:], prog="kube-log-runner"))
