"""`GET /logs/...`: container streams (whole, tail, since/until, filters, follow) and
the listing of streams; hands `/logs/?query=...` to the node log query."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from logvold.core.formats import rfc3339nano_ns
from logvold.core.layout import STATE_DIR_NAME, segments_of, state_file_name
from logvold.core.streams import DEFAULT_NAMESPACE, StreamInfo, StreamKey
from logvold.core.values import GO_FALSE, GO_TRUE
from logvold.errors import BadRequest as BadRequest
from logvold.fileio.reader import (
    MAX_PATTERN_LENGTH,
    FileRegion,
    ReadOptions,
    StreamFilter,
    StreamReader,
    compile_pattern,
)
from logvold.fileio.reader_dir import Refused, log_refusal
from logvold.fileio.safedir import UnsafeFile, open_stream_dir
from logvold.server.access import Peer, forbid, may_read_files, peer_of
from logvold.server.keys import (
    CHANGES_KEY,
    EXECUTOR_KEY,
    HANDLER_KEY,
    METRICS_KEY,
    REGISTRY_KEY,
    SHUTDOWN_KEY,
)
from logvold.server.limits import request_limits
from logvold.server.stream_list import page_of, parse_page
from logvold.sources.changes import StreamChanges
from logvold.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

NODE_LOG_QUERY_PARAMS = ("query", "pattern", "sinceTime", "untilTime", "tailLines", "boot")
"""Any of these on `GET /logs/` makes it a KEP-2258 node log query."""
MAX_TAIL_LINES = 10_000_000
MAX_SECONDS = 100 * 365 * 86400
_NAME_RE = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,252}")
_BOOL = {**dict.fromkeys(GO_TRUE, True), **dict.fromkeys(GO_FALSE, False)}  # Go's ParseBool
POLL_INTERVAL_S = 0.05
MAX_IDLE_S = 1.0
FALLBACK_S = 2.0
"""With change notices: the longest a caught-up follower sleeps without one."""
GONE_RECHECK_S = 0.25
"""... while its active file is missing (the reader decides after a grace time)."""


# ---- parameters ---------------------------------------------------------------------


def _one(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name} given more than once")
    return values[0] if values else None


def _int(query: MultiMapping[str], name: str, lo: int, hi: int) -> int | None:
    text = _one(query, name)
    if text is None:
        return None
    if not re.fullmatch(r"-?[0-9]{1,19}", text):
        raise BadRequest(f"{name} must be an integer, got {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _bool(query: MultiMapping[str], name: str) -> bool:
    text = _one(query, name)
    if text is None or text == "":
        return text == ""  # `?follow` alone means true, like a flag
    if text not in _BOOL:
        raise BadRequest(f"{name} must be true or false, got {text[:40]!r}")
    return _BOOL[text]


def _time(query: MultiMapping[str], name: str) -> int | None:
    text = _one(query, name)
    if text is None:
        return None
    ns = rfc3339nano_ns(text.encode("utf-8", "replace")) if len(text) <= 64 else None
    if ns is None:
        raise BadRequest(
            f"{name} must be an RFC3339 time like 2026-11-23T12:00:00Z, got {text[:64]!r}"
        )
    return ns


def parse_read_options(query: MultiMapping[str], *, now_ns: int | None = None) -> ReadOptions:
    """PodLogOptions (plus untilTime, pattern, stream) from query parameters; BadRequest
    with the reason for anything out of range."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    since_seconds = _int(query, "sinceSeconds", 1, MAX_SECONDS)
    since_ns = _time(query, "sinceTime")
    if since_seconds is not None and since_ns is not None:
        raise BadRequest("at most one of sinceTime or sinceSeconds may be specified")
    if since_seconds is not None:
        since_ns = now_ns - since_seconds * 1_000_000_000
    until_ns = _time(query, "untilTime")
    if since_ns is not None and until_ns is not None and until_ns < since_ns:
        raise BadRequest("untilTime is before the start time")
    stream_text = _one(query, "stream")
    stream: StreamFilter = "All"
    if stream_text is not None:
        lowered = stream_text.lower()
        if lowered not in ("all", "stdout", "stderr"):
            raise BadRequest(f"stream must be stdout, stderr or All, got {stream_text[:40]!r}")
        stream = "All" if lowered == "all" else ("stdout" if lowered == "stdout" else "stderr")
    pattern = _one(query, "pattern")
    if pattern is not None:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise BadRequest(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
        try:
            compile_pattern(pattern)
        except ValueError as e:  # the RE2 engine's reason
            raise BadRequest(f"invalid pattern: {e}") from e
        pattern = pattern or None
    return ReadOptions(
        tail_events=_int(query, "tailLines", 0, MAX_TAIL_LINES),
        since_ns=since_ns,
        until_ns=until_ns,
        limit_bytes=_int(query, "limitBytes", 1, 2**62),
        timestamps=_bool(query, "timestamps"),
        stream=stream,
        pattern=pattern,
        follow=_bool(query, "follow"),
    )


def check_name(kind: str, value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise BadRequest(f"invalid {kind} name {value[:64]!r}")
    return value


def check_readable(info: StreamInfo, refused: Refused = log_refusal) -> None:
    """The stream's directory must be reached from its safety root (the pod's own
    volume) without a symlink, and its active file must be a regular, singly linked file:
    a subDir planted as `-> /var/log`, a symlinked, FIFO or hard-linked active file is a
    403, never served (the reader opens every file through `fileio.safedir` as well).
    The reason names the stream, not host paths."""
    try:
        with open_stream_dir(info) as sd:
            os.close(sd.open_file(info.base).fd)
    except FileNotFoundError:
        return  # no directory or active file yet: segments only, or nothing
    except UnsafeFile as e:
        refused(e)
        what = "active file" if e.path == str(info.active_path) else "directory"
        raise web.HTTPForbidden(
            text=f"stream {info.key}: the {what} is not a regular file "
            f"inside its volume ({e.kind}); not served\n"
        ) from e
    except OSError as e:
        raise web.HTTPForbidden(text=f"stream {info.key} is not readable: {e.strerror}\n") from e


REFUSAL_LOG_INTERVAL_S = 60.0
_refusals_logged: dict[tuple[str, str], float] = {}
_refusals_lock = threading.Lock()


def refusal_counter(metrics: Metrics) -> Refused:
    """Counts a refused file (`logvold_unsafe_files_refused_total{kind}`) and logs it,
    once a minute per file and kind: a client repeating a request that hits a planted
    symlink must not flood the log."""

    def refused(exc: UnsafeFile) -> None:
        metrics.unsafe_refused.labels(exc.kind).inc()
        key, now = (exc.path or "-", exc.kind), time.monotonic()
        with _refusals_lock:
            if now - _refusals_logged.get(key, -REFUSAL_LOG_INTERVAL_S) < REFUSAL_LOG_INTERVAL_S:
                return
            if len(_refusals_logged) > 10_000:
                _refusals_logged.clear()
            _refusals_logged[key] = now
        log.warning(
            "file in a volume refused; not served",
            extra={"path": exc.path or "-", "kind": exc.kind, "reason": str(exc)},
        )

    return refused


# ---- streaming ------------------------------------------------------------------------


@dataclass
class _Stepper:
    """Runs a sync chunk generator one bounded step at a time in the reader threads."""

    chunks: Iterator[bytes | FileRegion]
    lock: threading.Lock

    def step(self) -> bytes | FileRegion | None:
        with self.lock:
            return next(self.chunks, None)

    def close(self) -> None:
        with self.lock:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()


Signature = tuple[int, ...]


def _signature(info: StreamInfo) -> Signature:
    """What changes when a stream gets new bytes, rotates, or is compressed/removed:
    the active file's and the state file's identity, size and mtime, and the directory's
    mtime. Taken in the event loop (three stat calls) so idle followers cost no thread."""
    out: list[int] = []
    directory = Path(info.directory)
    for path in (
        info.active_path,
        directory / STATE_DIR_NAME / state_file_name(info.base),
        directory,
    ):
        try:
            st = path.lstat()
        except OSError:
            out += (0, 0, 0)
            continue
        out += (st.st_ino, st.st_size, st.st_mtime_ns)
    return tuple(out)


async def _wait_for_change(
    reader: StreamReader, seen: object, stop: Callable[[], bool], changes: StreamChanges | None
) -> None:
    """Until the stream changed since `seen` (taken before the step that found nothing
    new, so no append is missed), the reader must stop, or a fallback time passed.

    With the daemon's change notices this is one parked future per follower (idle
    followers cost nothing); the FALLBACK_S timeout is a safety net for a missed notice
    and lets the reader's own clocks (removal grace, untilTime) run. Without notices
    (the API served on its own) it polls the stream's signature every poll interval."""
    if changes is not None:
        timeout = FALLBACK_S
        if reader.options.follow and not os.path.lexists(reader.info.active_path):
            timeout = min(timeout, GONE_RECHECK_S)  # removal grace runs on the reader's clock
        assert isinstance(seen, int)
        await changes.wait(reader.info.key, seen, timeout)
        return
    deadline = time.monotonic() + MAX_IDLE_S
    while True:
        await asyncio.sleep(reader.poll_interval_s)
        if stop() or time.monotonic() >= deadline or _signature(reader.info) != seen:
            return


async def _send_region(
    request: web.Request, response: web.StreamResponse, region: FileRegion
) -> None:
    """sendfile(2) whole events straight from a plain segment: no copy through Python,
    no per-event split. In a chunked response the region is framed as one chunk (the
    headers went out at prepare(), so the transport carries the body in order)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client left")
    chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
    loop = asyncio.get_running_loop()
    with open(region.fd, "rb", buffering=0, closefd=False) as f:  # the reader owns the fd
        if chunked:
            transport.write(b"%x\r\n" % region.count)
        await loop.sendfile(transport, f, region.offset, region.count)
        if chunked:
            transport.write(b"\r\n")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream_reader(
    request: web.Request,
    reader: StreamReader,
    *,
    handler: str,
    content_type: str = "text/plain",
    byte_limit: int | None = None,
) -> web.StreamResponse:
    """Send what `reader` yields, chunk by chunk, until it ends, the client leaves or the
    server shuts down. Errors after the headers went out end the body early (logged).
    `byte_limit`: stop after that many bytes, even mid-event (the kubelet's limitBytes)."""
    app = request.app
    metrics = app[METRICS_KEY]
    executor = app[EXECUTOR_KEY]
    shutdown = app[SHUTDOWN_KEY]
    registry = app[REGISTRY_KEY]
    gone = threading.Event()
    key = reader.info.key

    def stop() -> bool:
        return gone.is_set() or shutdown.is_set() or registry.get(key) is None

    reader.stop = stop
    stepper = _Stepper(reader.chunks_or_regions(), threading.Lock())
    loop = asyncio.get_running_loop()
    changes = app.get(CHANGES_KEY)

    def snapshot() -> object:
        return changes.version(key) if changes is not None else _signature(reader.info)

    # The first step runs before the headers, so a failure there is still a clean 4xx/5xx.
    before_first = snapshot()
    try:
        first = await loop.run_in_executor(executor, stepper.step)
    except PermissionError as e:
        stepper.close()
        raise web.HTTPForbidden(text=f"stream {key}: {e.strerror}\n") from e
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{content_type}; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
    )
    await response.prepare(request)
    follow = reader.options.follow
    if follow:
        metrics.followers.inc()
    bytes_served = metrics.bytes_served.labels(handler)
    events_served = metrics.events_served.labels(handler)
    counted = 0
    try:
        chunk = first
        seen = before_first
        while chunk is not None:
            if chunk and not isinstance(chunk, FileRegion) and byte_limit is not None:
                chunk = chunk[:byte_limit]
                byte_limit -= len(chunk)
            if isinstance(chunk, FileRegion):  # never with a byte_limit (see serve_stream)
                await _send_region(request, response, chunk)
                bytes_served.inc(chunk.count)
            elif chunk:
                await response.write(chunk)
                bytes_served.inc(len(chunk))
                events_served.inc(reader.events_served - counted)
                counted = reader.events_served
            elif reader.more_ready:  # a pause between blocks of a backlog: go on
                reader.more_ready = False
            else:  # caught up: wait (cheaply, no thread) until the files change
                await _wait_for_change(reader, seen, stop, changes)
            if _client_gone(request) or byte_limit == 0:
                break
            seen = snapshot()
            if not reader.caught_up:
                chunk = await loop.run_in_executor(executor, stepper.step)
            else:
                # Live: the step after an idle one reads only fresh bytes (bounded), so it
                # runs right here; a thread hop per poll would cost more than the read, and
                # a hundred followers' threads fighting for the GIL add latency.
                chunk = stepper.step()
        await response.write_eof()
    except (ConnectionResetError, BrokenPipeError):
        pass  # the client left; nothing to tell it
    except OSError as e:
        log.warning("reading %s failed mid-response: %s", key, e)
    finally:
        gone.set()
        if follow:
            metrics.followers.dec()
        try:
            executor.submit(stepper.close)  # after any step in flight (the lock orders them)
        except RuntimeError:  # executor already shut down: close here
            stepper.close()
    return response


# ---- handlers -------------------------------------------------------------------------


def lookup(request: web.Request, namespace: str, pod: str, container: str) -> StreamInfo:
    for kind, value in (("namespace", namespace), ("pod", pod), ("container", container)):
        check_name(kind, value)
    info = request.app[REGISTRY_KEY].get(StreamKey(namespace, pod, container))
    if info is None:
        raise web.HTTPNotFound(text=f"no stream {namespace}/{pod}/{container}\n")
    return info


def stream_access(peer: Peer, info: StreamInfo) -> str | None:
    """None if `peer` could read every file of the stream itself (server/access.py)."""
    if peer.trusted:
        return None
    try:
        with open_stream_dir(info) as d:
            names = d.names()
    except (OSError, UnsafeFile):
        names = []
    files = [info.base] + [s.filename for s in segments_of(info.base, names)]
    return may_read_files(peer, Path(info.directory), files)


async def serve_stream(
    request: web.Request,
    info: StreamInfo,
    options: ReadOptions,
    *,
    handler: str,
    byte_limit: int | None = None,
) -> web.StreamResponse:
    refused = refusal_counter(request.app[METRICS_KEY])
    await asyncio.get_running_loop().run_in_executor(
        request.app[EXECUTOR_KEY], check_readable, info, refused
    )
    peer = peer_of(request)
    if not peer.trusted:
        problem = await asyncio.get_running_loop().run_in_executor(
            request.app[EXECUTOR_KEY], stream_access, peer, info
        )
        if problem is not None:
            raise forbid(request, f"stream {info.key}", problem)
    limits = request_limits(request.app)
    slot = (
        contextlib.nullcontext()
        if limits is None
        else limits.follower(info.key)
        if options.follow
        else limits.heavy_read()
    )
    async with slot:
        # regions: whole plain segments of an unfiltered raw read go out by sendfile
        # (not under the kubelet's byte limit, which cuts inside a segment).
        reader = StreamReader(
            info,
            options,
            poll_interval_s=POLL_INTERVAL_S,
            regions=byte_limit is None,
            on_refused=refused,
        )
        return await stream_reader(request, reader, handler=handler, byte_limit=byte_limit)


async def _container_logs(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    info = lookup(request, m.get("namespace", DEFAULT_NAMESPACE), m["pod"], m["container"])
    return await serve_stream(request, info, parse_read_options(request.query), handler="logs")


async def _logs_root(request: web.Request) -> web.StreamResponse:
    if any(name in request.query for name in NODE_LOG_QUERY_PARAMS):
        try:
            from logvold.server.nodelog import handler as nodelog
        except ImportError:  # pragma: no cover - built in parallel
            raise web.HTTPNotImplemented(text="node log query is not available\n") from None
        request[HANDLER_KEY] = "nodelog"
        limits = request_limits(request.app)
        async with contextlib.nullcontext() if limits is None else limits.heavy_read():
            return await nodelog.handle_node_log_query(request)
    try:
        size, after = parse_page(_one(request.query, "limit"), _one(request.query, "continue"))
    except BadRequest as exc:  # BadListParam included
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    executor = request.app[EXECUTOR_KEY]
    streams = request.app[REGISTRY_KEY].snapshot()
    peer = peer_of(request)
    refused = refusal_counter(request.app[METRICS_KEY])
    page = await asyncio.get_running_loop().run_in_executor(
        executor,
        lambda: page_of(
            streams,
            visible=lambda i: stream_access(peer, i) is None,
            size=size,
            after=after,
            refused=refused,
        ),
    )
    metadata: dict[str, Any] = {"total": page.total, "truncated": page.next_after is not None}
    if page.next_after is not None:
        metadata["continue"] = str(page.next_after)
    return web.json_response({"kind": "StreamList", "metadata": metadata, "items": page.items})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/logs/", _logs_root, name="logs_list")
    app.router.add_get("/logs", _logs_root, name="logs_list_noslash")
    # No HEAD: a HEAD of follow=true would hold a connection open for no body.
    app.router.add_get(
        "/logs/{namespace}/{pod}/{container}", _container_logs, name="logs", allow_head=False
    )
    app.router.add_get(
        "/logs/{pod}/{container}", _container_logs, name="logs_default_ns", allow_head=False
    )
