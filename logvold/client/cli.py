"""`logvold logs` and `logvold query`: read a container stream or run a node log
query against a running logvold over HTTP, streaming the answer to stdout.

Stdlib only (urllib): the client must work wherever the package is installed,
without an event loop. Exit status: 0 ok, 1 HTTP error or unreachable daemon,
2 usage error.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.client import HTTPException, HTTPResponse
from typing import IO, NoReturn

from logvold.core.formats import format_rfc3339nano, rfc3339nano_ns
from logvold.core.units import parse_duration
from logvold.errors import ClientError as ClientError
from logvold.errors import UsageError

DEFAULT_URL = "http://127.0.0.1:8642"
TOKEN_ENV = "LOGVOLD_TOKEN"  # noqa: S105 (the name of the variable)
CHUNK_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 120.0
"""Socket timeout of a non-follow request (connect and each read); follow has none."""
_REASON_MAX = 500


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting (library code never exits)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            raise UsageError(message.strip())
        raise _HelpShown


class _HelpShown(Exception):
    pass


@dataclass(frozen=True)
class Request:
    """What the client will ask: a path with query parameters, a token, TLS settings."""

    url: str
    token: str | None
    follow: bool
    cafile: str | None = None
    insecure: bool = False
    socket: str | None = None
    """Unix socket of the daemon (server.socket.path): the request goes there, not to url."""
    where: tuple[str, str, str] | None = None
    """`logs --where`: print the files of this (namespace, pod, container), not the log."""


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"logvold's address (default {DEFAULT_URL})"
    )
    parser.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    parser.add_argument("--cacert", metavar="FILE", help="CA bundle that signed logvold's cert")
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify logvold's TLS certificate"
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="talk to logvold over its unix socket (server.socket.path) instead of --url: "
        "you read what your user could open",
    )


def _logs_parser() -> _Parser:
    p = _Parser(
        prog="logvold logs",
        description="Print a container's log stream (all segments, then the active file).",
    )
    p.add_argument("target", metavar="[NS/]POD/CONTAINER", help="namespace defaults to default")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming new events")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines/events")
    since = p.add_mutually_exclusive_group()
    since.add_argument("--since", metavar="DURATION", help="only events newer than 5m, 2h, 7d")
    since.add_argument("--since-time", metavar="RFC3339", help="only events after this time")
    p.add_argument("--timestamps", action="store_true", help="prefix each event with its time")
    p.add_argument("--pattern", metavar="RE", help="only events matching this RE2 pattern")
    p.add_argument("--limit-bytes", type=int, metavar="N", help="stop after N bytes")
    p.add_argument("--stream", choices=("stdout", "stderr", "All"), help="cri/json-file streams")
    p.add_argument(
        "--where",
        action="store_true",
        help="print the stream's files on the node instead (segments oldest first, "
        "then the active file); needs the listing's permission (nodes/proxy)",
    )
    _add_connection_options(p)
    return p


def _query_parser() -> _Parser:
    p = _Parser(
        prog="logvold query",
        description="Node log query (KEP-2258): systemd services from the journal, or files"
        " under the node's log directory.",
    )
    p.add_argument("query", nargs="+", metavar="SERVICE|FILE", help="e.g. kubelet, or pods/x.log")
    p.add_argument("--pattern", metavar="RE", help="only lines matching this RE2 pattern")
    p.add_argument("--since", metavar="TIME", help="RFC3339 time, or a duration back from now")
    p.add_argument("--until", metavar="TIME", help="RFC3339 time, or a duration back from now")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--boot", type=int, metavar="N", help="journal boot: 0 current, -1 previous")
    _add_connection_options(p)
    return p


def parse_time(text: str, *, now: datetime | None = None, option: str) -> str:
    """An RFC3339Nano UTC time from RFC3339 text (the codec's grammar, as the server reads
    it, to the nanosecond) or a duration back from `now`."""
    ns = rfc3339nano_ns(text.encode("ascii", "replace"))
    if ns is not None:
        return format_rfc3339nano(ns)
    if rfc3339nano_ns(text.encode("ascii", "replace") + b"Z") is not None:
        raise UsageError(f"{option}: {text!r} has no time zone; add Z or +HH:MM")
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise UsageError(
            f"{option}: expected an RFC3339 time (2026-11-23T12:00:00Z) or a duration"
            f" (90s, 6h, 7d), got {text!r}"
        ) from None
    return format_rfc3339nano((now or datetime.now(UTC)) - timedelta(seconds=seconds))


def _token(value: str | None, environ: Mapping[str, str]) -> str | None:
    return value or environ.get(TOKEN_ENV) or None


def _base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--url must be http://HOST:PORT or https://HOST:PORT, got {url!r}")
    return url.rstrip("/")


def logs_request(argv: Sequence[str], environ: Mapping[str, str]) -> Request:
    """The request `logvold logs ARGV` makes; UsageError if ARGV is wrong."""
    args = _logs_parser().parse_args(list(argv))
    parts = args.target.split("/")
    if len(parts) == 2:
        parts.insert(0, "default")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"expected [NAMESPACE/]POD/CONTAINER, got {args.target!r}")
    for option in ("tail", "limit_bytes"):
        value = getattr(args, option)
        if value is not None and value < 0:
            raise UsageError(f"--{option.replace('_', '-')} must not be negative")
    if args.where:
        reading = [
            f"--{name.replace('_', '-')}"
            for name in _READ_OPTIONS
            if getattr(args, name) not in (None, False)
        ]
        if reading:
            raise UsageError(f"--where prints file paths: it takes no {', '.join(reading)}")
        return Request(
            url=_base_url(args.url) + "/logs/",
            token=_token(args.token, environ),
            follow=False,
            cafile=args.cacert,
            insecure=args.insecure,
            where=(parts[0], parts[1], parts[2]),
        )
    params: list[tuple[str, str]] = []
    if args.follow:
        params.append(("follow", "true"))
    if args.tail is not None:
        params.append(("tailLines", str(args.tail)))
    if args.since is not None:
        try:
            seconds = parse_duration(args.since)
        except ValueError as exc:
            raise UsageError(f"--since: {exc}") from None
        params.append(("sinceSeconds", str(max(1, round(seconds)))))
    if args.since_time is not None:
        params.append(("sinceTime", parse_time(args.since_time, option="--since-time")))
    if args.timestamps:
        params.append(("timestamps", "true"))
    if args.pattern is not None:
        params.append(("pattern", args.pattern))
    if args.limit_bytes is not None:
        params.append(("limitBytes", str(args.limit_bytes)))
    if args.stream is not None:
        params.append(("stream", args.stream))
    path = "/logs/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return Request(
        url=_base_url(args.url) + path + query,
        token=_token(args.token, environ),
        follow=args.follow,
        cafile=args.cacert,
        insecure=args.insecure,
        socket=args.socket,
    )


_READ_OPTIONS = (
    "follow",
    "tail",
    "since",
    "since_time",
    "timestamps",
    "pattern",
    "limit_bytes",
    "stream",
)


def print_where(request: Request, out: IO[bytes]) -> None:
    """`logvold logs --where`: the stream's files on the node from the `/logs/` listing,
    one path per line, segments oldest first, then the active file."""
    assert request.where is not None
    buffer = io.BytesIO()
    stream_response(request, buffer)
    try:
        listing = json.loads(buffer.getvalue())
        items = listing["items"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"unexpected answer from {_origin(request.url)}/logs/: {exc}") from None
    namespace, pod, container = request.where
    for item in items:
        if (item.get("namespace"), item.get("pod"), item.get("container")) != request.where:
            continue
        segments = item.get("segments", {})
        files = [f["path"] for f in segments.get("files", [])]
        listed = segments.get("count", len(files))
        if listed > len(files):
            out.write(f"# {listed - len(files)} older segments not listed\n".encode())
        for path in [*files, item["activeFile"]["path"]]:
            out.write(os.fsencode(path) + b"\n")
        out.flush()
        return
    raise ClientError(
        f"no stream {namespace}/{pod}/{container} at {_origin(request.url)}; "
        "`curl .../logs/` lists them"
    )


def query_request(
    argv: Sequence[str], environ: Mapping[str, str], now: datetime | None = None
) -> Request:
    """The request `logvold query ARGV` makes; UsageError if ARGV is wrong."""
    args = _query_parser().parse_args(list(argv))
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must not be negative")
    params = [("query", q) for q in args.query]
    if args.pattern is not None:
        params.append(("pattern", args.pattern))
    if args.since is not None:
        params.append(("sinceTime", parse_time(args.since, now=now, option="--since")))
    if args.until is not None:
        params.append(("untilTime", parse_time(args.until, now=now, option="--until")))
    if args.tail is not None:
        params.append(("tailLines", str(args.tail)))
    if args.boot is not None:
        params.append(("boot", str(args.boot)))
    return Request(
        url=f"{_base_url(args.url)}/logs/?{urllib.parse.urlencode(params)}",
        token=_token(args.token, environ),
        follow=False,
        cafile=args.cacert,
        insecure=args.insecure,
        socket=args.socket,
    )


def stream_response(request: Request, out: IO[bytes]) -> int:
    """Send the request and copy the body to `out` chunk by chunk; bytes copied."""
    headers = {"User-Agent": "logvold-client"}
    if request.token:
        headers["Authorization"] = f"Bearer {request.token}"
    context = None
    if request.url.startswith("https:"):
        context = ssl.create_default_context(cafile=request.cafile)
        if request.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    http_request = urllib.request.Request(request.url, headers=headers)  # noqa: S310
    timeout = None if request.follow else REQUEST_TIMEOUT_S
    where = f"unix:{request.socket}" if request.socket else _origin(request.url)
    try:
        response: HTTPResponse
        if request.socket:
            response = _unix_get(request.socket, request.url, headers, timeout)
        else:
            response = urllib.request.urlopen(  # noqa: S310 (scheme checked)
                http_request, timeout=timeout, context=context
            )
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(_REASON_MAX * 4).decode("utf-8", "replace").strip()
        reason = body.splitlines()[0][:_REASON_MAX] if body else exc.reason
        raise ClientError(f"HTTP {exc.code}: {reason}") from None
    except urllib.error.URLError as exc:
        raise ClientError(f"cannot reach logvold at {where}: {exc.reason}") from None
    except (OSError, HTTPException) as exc:
        raise ClientError(f"cannot reach logvold at {where}: {exc}") from None
    copied = 0
    with response:
        try:
            while chunk := response.read1(CHUNK_BYTES):
                out.write(chunk)
                out.flush()
                copied += len(chunk)
        except (OSError, HTTPException) as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise ClientError(f"connection to logvold lost after {copied} bytes: {exc}") from None
    return copied


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (the daemon's local, SO_PEERCRED-checked listener)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _unix_get(path: str, url: str, headers: dict[str, str], timeout: float | None) -> HTTPResponse:
    """GET the path and query of `url` over the unix socket at `path`; an HTTP error
    status raises urllib's HTTPError, as urlopen would."""
    parts = urllib.parse.urlsplit(url)
    conn = _UnixConnection(path, timeout)
    # Connection: close lets http.client drop its socket once the body is read.
    conn.request(
        "GET",
        parts.path + (f"?{parts.query}" if parts.query else ""),
        headers={**headers, "Connection": "close"},
    )
    response = conn.getresponse()
    if response.status >= 400:
        raise urllib.error.HTTPError(
            url, response.status, response.reason, response.headers, response
        )
    return response


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _run(
    prog: str,
    build: Callable[[], Request],
    usage: str,
    stdout: IO[bytes] | None,
    stderr: IO[str] | None,
) -> int:
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr
    try:
        request = build()
    except _HelpShown:
        return 0
    except UsageError as exc:
        err.write(f"{usage}{prog}: error: {exc}\n")
        return 2
    try:
        if request.where is not None:
            print_where(request, out)
        else:
            stream_response(request, out)
    except ClientError as exc:
        err.write(f"{prog}: {exc}\n")
        return 1
    except BrokenPipeError:
        # The reader (`| head`) is gone: not an error; keep Python's exit flush quiet.
        if stdout is None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


def main_logs(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | None = None,
    stderr: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """`logvold logs [NS/]POD/CONTAINER [options]` -> GET /logs/<ns>/<pod>/<container>."""
    env = os.environ if environ is None else environ
    return _run(
        "logvold logs",
        lambda: logs_request(argv, env),
        _logs_parser().format_usage(),
        stdout,
        stderr,
    )


def main_query(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | None = None,
    stderr: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """`logvold query SERVICE|FILE... [options]` -> GET /logs/?query=...."""
    env = os.environ if environ is None else environ
    return _run(
        "logvold query",
        lambda: query_request(argv, env),
        _query_parser().format_usage(),
        stdout,
        stderr,
    )
