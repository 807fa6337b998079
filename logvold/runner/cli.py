"""`logvold run` / `kube-log-runner`: kube-log-runner's flags (plus ours) -> a run of the child.

Maps problems to exit codes: 2 for usage, 1 when the log file cannot be
opened, 127/126 when the command cannot be started (as a shell would), else
the child's own status (128+N when a signal N killed it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from logvold.core.log_policy import LogPolicy
from logvold.core.units import parse_go_duration, parse_size
from logvold.core.values import choice as _choice
from logvold.core.values import decode_delimiter as _delimiter
from logvold.core.values import parse_go_bool
from logvold.core.values import parse_positive_size as _positive_size
from logvold.core.values import parse_rotate as _rotate
from logvold.errors import FlagError, HelpRequested, LogvoldError, StartError
from logvold.runner import goflags
from logvold.runner.goflags import FlagSpec

_COMPRESS = ("none", "gzip", "zstd")
_FORMATS = ("raw", "cri", "json-file")
_COPY_MODES = ("read", "splice")


def _duration(value: str) -> float:
    try:
        return parse_go_duration(value)
    except ValueError:
        raise ValueError("parse error") from None


def _count(value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise ValueError("parse error") from None
    if number < 0:
        raise ValueError("must not be negative")
    return number


FLAGS: tuple[FlagSpec, ...] = (
    # kube-log-runner's own flags, with its usage text.
    FlagSpec(
        name="flush-interval",
        kind="duration",
        default="0s",
        zero="0s",
        check=_duration,
        usage="interval to flush log file to disk, default value 0, if non-zero, "
        "flush log file every interval",
    ),
    FlagSpec(
        name="log-file", kind="string", default="", usage="If non-empty, save stdout to this file"
    ),
    FlagSpec(
        name="log-file-size",
        kind="value",
        default="0",
        zero="0",
        check=parse_size,
        usage="useful with log-file, in format of resource.quantity, default value 0, "
        "if non-zero, rotate log file when it reaches this size",
    ),
    FlagSpec(
        name="log-file-age",
        kind="duration",
        default="0s",
        zero="0s",
        check=_duration,
        usage="useful with log-file-size, in format of timeDuration, if non-zero, "
        "remove log files older than this duration",
    ),
    FlagSpec(
        name="also-stdout",
        kind="bool",
        default="false",
        zero="false",
        usage="useful with log-file, log to standard output as well as the log file",
    ),
    FlagSpec(
        name="redirect-stderr",
        kind="bool",
        default="true",
        zero="false",
        usage="treat stderr same as stdout",
    ),
    # logvold's additions, in the same syntax.
    FlagSpec(
        name="rotate",
        kind="string",
        default="Never",
        check=_rotate,
        usage="also rotate the log file when each `period` starts: Hourly, Daily, Never or a "
        "fixed period such as 15m (UTC)",
    ),
    FlagSpec(
        name="max-files",
        kind="int",
        default="0",
        zero="0",
        check=_count,
        usage="keep at most this many rotated files, removing the oldest; 0 = no limit",
    ),
    FlagSpec(
        name="compress",
        kind="string",
        default="none",
        check=_choice(_COMPRESS),
        usage="compress rotated files: none, gzip or zstd (in the background)",
    ),
    FlagSpec(
        name="format",
        kind="string",
        default="raw",
        check=_choice(_FORMATS),
        usage="raw: the bytes as written; cri or json-file: one line per event piece, "
        "tagged with its time and stream (stdout and stderr are read apart)",
    ),
    FlagSpec(
        name="delimiter",
        kind="string",
        default="\\n",
        check=_delimiter,
        usage="end of an event for -format raw, with escapes (\\n\\n, \\x1e); "
        "rotation only cuts after one",
    ),
    FlagSpec(
        name="copy",
        kind="string",
        default="read",
        check=_choice(_COPY_MODES),
        usage="raw format: how output reaches the file - read (through a buffer) or splice "
        "(zero-copy, but the pipe stays locked while the file takes the bytes)",
    ),
    FlagSpec(
        name="max-event-size",
        kind="value",
        default="1Mi",
        check=_positive_size,
        usage="events longer than this may be cut at rotation (cri: P pieces); "
        "bounds memory (resource.quantity)",
    ),
)


def main_run(argv: Sequence[str], prog: str) -> int:
    """Parse kube-log-runner flags, run the command, return the exit status."""
    from logvold.runner import process

    usage = goflags.usage(prog, FLAGS)
    try:
        parsed = goflags.parse(FLAGS, argv)
    except HelpRequested:
        sys.stderr.write(usage)
        return 0
    except FlagError as exc:
        sys.stderr.write(f"{exc}\n{usage}")
        return 2
    if not parsed.args:
        sys.stderr.write(f"{prog}: not enough arguments to run: give the command after the flags\n")
        sys.stderr.write(usage)
        return 2
    v = parsed.values
    try:
        opts = process.RunOptions(
            argv=tuple(parsed.args),
            log_file=v["log-file"],
            also_stdout=parse_go_bool(v["also-stdout"]),
            redirect_stderr=parse_go_bool(v["redirect-stderr"]),
            flush_interval_s=_non_negative("flush-interval", _duration(v["flush-interval"])),
            copy=v["copy"],  # type: ignore[arg-type]
            policy=_policy(v),
        )
    except ValueError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    try:
        return process.run(opts)
    except StartError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return exc.exit_code
    except LogvoldError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1


def _non_negative(flag: str, seconds: float) -> float:
    if seconds < 0:
        raise ValueError(f"-{flag} must be non-negative")
    return seconds


def _policy(v: dict[str, str]) -> LogPolicy:
    size = parse_size(v["log-file-size"])
    fmt = v["format"]
    delimiter = _delimiter(v["delimiter"])
    if fmt != "raw" and delimiter != b"\n":
        raise ValueError(f"-format {fmt} frames lines: -delimiter must be \\n")
    max_event = _positive_size(v["max-event-size"])
    if max_event < len(delimiter):
        raise ValueError("-max-event-size must be at least as long as -delimiter")
    return LogPolicy(
        rotate=_rotate(v["rotate"]),
        max_size_bytes=size,
        max_files=_count(v["max-files"]),
        max_age_s=_non_negative("log-file-age", _duration(v["log-file-age"])),
        compress=v["compress"],  # type: ignore[arg-type]
        delay_compress=False,  # we are the writer: a closed segment is never written again
        format=fmt,  # type: ignore[arg-type]
        delimiter=delimiter,
        max_event_size_bytes=max_event,
    )
