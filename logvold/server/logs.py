"""`GET /logs/...`: container streams (whole, tail, since/until, filters, follow) and
the listing of streams; hands `/logs/?query=...` to the node log query."""

from __future__ import annotations

import asyncio
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

from logvold.core.layout import STATE_DIR_NAME, segments_of, state_file_name
from logvold.core.streams import DEFAULT_NAMESPACE, StreamInfo, StreamKey
from logvold.fileio.reader import (
    MAX_PATTERN_LENGTH,
    ReadOptions,
    StreamFilter,
    StreamReader,
    compile_pattern,
    parse_rfc3339_ns,
)
from logvold.server.app import (
    EXECUTOR_KEY,
    HANDLER_KEY,
    METRICS_KEY,
    REGISTRY_KEY,
    SHUTDOWN_KEY,
)

log = logging.getLogger(__name__)

NODE_LOG_QUERY_PARAMS = ("query", "pattern", "sinceTime", "untilTime", "tailLines", "boot")
"""Any of these on `GET /logs/` makes it a KEP-2258 node log query."""
MAX_TAIL_LINES = 10_000_000
MAX_SECONDS = 100 * 365 * 86400
_NAME_RE = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,252}")
_BOOL = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
         "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}
POLL_INTERVAL_S = 0.05
MAX_IDLE_S = 1.0


class BadRequest(ValueError):
    """A client parameter that cannot be used; the message is the 400 reason."""


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
    ns = parse_rfc3339_ns(text.encode("utf-8", "replace")) if len(text) <= 64 else None
    if ns is None:
        raise BadRequest(f"{name} must be an RFC3339 time like 2026-11-23T12:00:00Z, "
                         f"got {text[:64]!r}")
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
        compile_pattern(pattern)  # ValueError with the reason
        pattern = pattern or None
    return ReadOptions(
        tail_events=_int(query, "tailLines", 0, MAX_TAIL_LINES),
        since_ns=since_ns, until_ns=until_ns,
        limit_bytes=_int(query, "limitBytes", 1, 2**62),
        timestamps=_bool(query, "timestamps"),
        stream=stream, pattern=pattern,
        follow=_bool(query, "follow"),
    )


def check_name(kind: str, value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise BadRequest(f"invalid {kind} name {value[:64]!r}")
    return value


def check_readable(info: StreamInfo) -> None:
    """The active file must be a regular file inside the stream's directory: a symlink
    out of the volume is never followed (the reader opens with O_NOFOLLOW as well)."""
    path = info.active_path
    try:
        path.lstat()
    except FileNotFoundError:
        return  # no active file yet: segments only
    except OSError as e:
        raise web.HTTPForbidden(text=f"stream {info.key} is not readable: {e.strerror}\n") from e
    directory = Path(info.directory).resolve()
    if path.is_symlink() or path.resolve().parent != directory or not path.is_file():
        raise web.HTTPForbidden(text=f"stream {info.key}: the active file is not a regular "
                                     "file inside its volume; not served\n")


# ---- streaming ------------------------------------------------------------------------

@dataclass
class _Stepper:
    """Runs a sync chunk generator one bounded step at a time in the reader threads."""

    chunks: Iterator[bytes]
    lock: threading.Lock

    def step(self) -> bytes | None:
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
    for path in (info.active_path, directory / STATE_DIR_NAME / state_file_name(info.base),
                 directory):
        try:
            st = path.stat()
        except OSError:
            out += (0, 0, 0)
            continue
        out += (st.st_ino, st.st_size, st.st_mtime_ns)
    return tuple(out)


async def _wait_for_change(reader: StreamReader, seen: Signature,
                           stop: Callable[[], bool]) -> None:
    """Sleep poll intervals until the stream's signature differs from `seen` (taken
    before the step that found nothing new, so no append is missed), the reader must
    stop, or MAX_IDLE_S passed (the reader's own clocks, e.g. removal grace, then run)."""
    deadline = time.monotonic() + MAX_IDLE_S
    while True:
        await asyncio.sleep(reader.poll_interval_s)
        if stop() or time.monotonic() >= deadline or _signature(reader.info) != seen:
            return


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream_reader(request: web.Request, reader: StreamReader, *, handler: str,
                        content_type: str = "text/plain") -> web.StreamResponse:
    """Send what `reader` yields, chunk by chunk, until it ends, the client leaves or the
    server shuts down. Errors after the headers went out end the body early (logged)."""
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
    stepper = _Stepper(reader.chunks(), threading.Lock())
    loop = asyncio.get_running_loop()
    # The first step runs before the headers, so a failure there is still a clean 4xx/5xx.
    before_first = _signature(reader.info)
    try:
        first = await loop.run_in_executor(executor, stepper.step)
    except PermissionError as e:
        stepper.close()
        raise web.HTTPForbidden(text=f"stream {key}: {e.strerror}\n") from e
    response = web.StreamResponse(headers={"Content-Type": f"{content_type}; charset=utf-8",
                                           "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})
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
            if chunk:
                await response.write(chunk)
                bytes_served.inc(len(chunk))
                events_served.inc(reader.events_served - counted)
                counted = reader.events_served
            elif reader.more_ready:  # a pause between blocks of a backlog: go on
                reader.more_ready = False
            else:  # caught up: wait (cheaply, no thread) until the files change
                await _wait_for_change(reader, seen, stop)
            if _client_gone(request):
                break
            seen = _signature(reader.info)
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


async def serve_stream(request: web.Request, info: StreamInfo, options: ReadOptions,
                       *, handler: str) -> web.StreamResponse:
    check_readable(info)
    reader = StreamReader(info, options, poll_interval_s=POLL_INTERVAL_S)
    return await stream_reader(request, reader, handler=handler)


async def _container_logs(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    info = lookup(request, m.get("namespace", DEFAULT_NAMESPACE), m["pod"], m["container"])
    return await serve_stream(request, info, parse_read_options(request.query),
                              handler="logs")


async def _logs_root(request: web.Request) -> web.StreamResponse:
    if any(name in request.query for name in NODE_LOG_QUERY_PARAMS):
        try:
            from logvold.server import nodelog
        except ImportError:  # pragma: no cover - built in parallel
            raise web.HTTPNotImplemented(text="node log query is not available\n") from None
        request[HANDLER_KEY] = "nodelog"
        return await nodelog.handle_node_log_query(request)
    executor = request.app[EXECUTOR_KEY]
    streams = request.app[REGISTRY_KEY].snapshot()
    listing = await asyncio.get_running_loop().run_in_executor(
        executor, lambda: [describe(i) for i in streams])
    return web.json_response({"kind": "StreamList", "items": listing})


MAX_LISTED_SEGMENT_FILES = 1000
"""Segment paths listed per stream (the newest); counts and bytes still cover them all."""


def describe(info: StreamInfo) -> dict[str, Any]:
    """One stream of the listing: names, policy summary, annotations, sizes, and where its
    files are on disk (paths as logvold sees them: the host's, where volumes are mounted at
    their host paths as in the DaemonSet and the systemd unit)."""
    p = info.policy
    try:
        names = sorted(entry.name for entry in Path(info.directory).iterdir())
    except OSError:
        names = []
    segments = segments_of(info.base, names)
    segment_bytes = 0
    files: list[dict[str, Any]] = []
    for index, seg in enumerate(segments):
        path = Path(info.directory) / seg.filename
        try:
            size = os.lstat(path).st_size
        except OSError:
            continue
        segment_bytes += size
        if index >= len(segments) - MAX_LISTED_SEGMENT_FILES:
            files.append({"path": str(path), "bytes": size})
    try:
        st = os.lstat(info.active_path)
        active_size, active_alloc = st.st_size, st.st_blocks * 512
    except OSError:
        active_size = active_alloc = 0
    return {
        "namespace": info.key.namespace, "pod": info.key.pod, "container": info.key.container,
        "volume": info.volume, "source": info.source, "podUID": info.pod_uid,
        "file": info.base,
        "policy": {"format": p.format, "rotate": p.rotate, "maxSize": p.max_size_bytes,
                   "maxFiles": p.max_files, "maxAgeSeconds": p.max_age_s,
                   "maxTotalSize": p.max_total_size_bytes, "compress": p.compress,
                   "strategy": p.strategy},
        "annotations": dict(info.annotations),
        "activeFile": {"path": str(info.active_path), "apparentBytes": active_size,
                       "allocatedBytes": active_alloc},
        "segments": {"count": len(segments), "bytes": segment_bytes,
                     "compressed": sum(1 for s in segments if s.compression),
                     "files": files},
    }


def add_routes(app: web.Application) -> None:
    app.router.add_get("/logs/", _logs_root, name="logs_list")
    app.router.add_get("/logs", _logs_root, name="logs_list_noslash")
    # No HEAD: a HEAD of follow=true would hold a connection open for no body.
    app.router.add_get("/logs/{namespace}/{pod}/{container}", _container_logs, name="logs",
                       allow_head=False)
    app.router.add_get("/logs/{pod}/{container}", _container_logs, name="logs_default_ns",
                       allow_head=False)
