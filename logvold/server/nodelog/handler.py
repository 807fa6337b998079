"""`GET /logs/?query=...`: the kubelet's node log query (KEP-2258), answered from journald or files.

Validation is core/nodelog_query.py with RE2 patterns; this module resolves services to the journal
or to files, streams the answer under one deadline and a byte cap, and reports late errors as a
final text line, as the kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import re2
from aiohttp import web

from logvold.core.nodelog_query import (
    QUERY_PARAMS,
    NodeLogQuery,
    NodeLogQueryError,
    journalctl_args,
)
from logvold.core.nodelog_query import parse_node_log_query as _parse
from logvold.core.policy import NodeLogQueryConfig
from logvold.server.access import TRUSTED, Peer, forbid, may_open_fd, peer_of
from logvold.server.nodelog import journal
from logvold.server.nodelog.files import (
    DeadlineExceeded,
    FileQueryError,
    LineMatcher,
    OpenedLog,
    iter_forward,
    listing_html,
    open_in_log_dir,
    open_service_log,
    read_tail,
)
from logvold.telemetry.metrics import Metrics

__all__ = [
    "QUERY_PARAMS",
    "NodeLogQuery",
    "NodeLogQueryError",
    "add_node_log_routes",
    "handle_node_log_query",
    "is_node_log_query",
    "parse_node_log_query",
]

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("logvold.nodelog.config", NodeLogQueryConfig)
METRICS_KEY = web.AppKey("logvold.nodelog.metrics", Metrics)
_TEXT = "text/plain;charset=UTF-8"  # the kubelet's exact Content-Type
_LAST_WRITE_TIMEOUT_S = 2.0
_CLIENT_POLL_S = 0.25


def _re2_options(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    # journalctl's --grep is case-insensitive unless the pattern has an upper-case letter;
    # files follow the same rule so one query means the same thing on both sources.
    options.case_sensitive = any(ch.isupper() for ch in pattern)
    return options


def compile_pattern(pattern: str) -> LineMatcher:
    """The RE2 line matcher for `pattern` over raw bytes (linear time whatever the input)."""
    options = _re2_options(pattern)
    raw = pattern.encode("utf-8")
    line = re2.compile(raw, options=options)
    # Multi-line mode finds every per-line match in a whole block, except with \A or \z
    # (line edges per line, buffer edges in a block) or multi-line turned off by the pattern.
    block_safe = not any(token in pattern for token in ("\\A", "\\z", "-m"))
    block = re2.compile(b"(?m)" + raw, options=options) if block_safe else None
    return LineMatcher(line, block)


def _pattern_problem(pattern: str) -> str | None:
    try:
        compile_pattern(pattern)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        return f"error parsing regexp: {detail.decode() if isinstance(detail, bytes) else detail}"
    except (UnicodeError, ValueError, TypeError) as exc:
        return f"error parsing regexp: {exc}"
    return None


def parse_node_log_query(params: Mapping[str, Sequence[str]]) -> NodeLogQuery:
    """Parse and validate query parameters; NodeLogQueryError carries 400 or 406 and the reason."""
    return _parse(params, pattern_problem=_pattern_problem)


def is_node_log_query(params: Mapping[str, object]) -> bool:
    """Whether `GET /logs/` with these parameters is a node log query (a recognised name)."""
    return any(name in params for name in QUERY_PARAMS)


def add_node_log_routes(
    app: web.Application, config: NodeLogQueryConfig, metrics: Metrics | None
) -> None:
    """Give the node log query its settings; app.py's `GET /logs/` handler dispatches to it.

    No route of its own: `/logs/` belongs to the stream listing, which hands over when
    `is_node_log_query(request.query)`.
    """
    app[CONFIG_KEY] = config
    if metrics is not None:
        app[METRICS_KEY] = metrics


def _settings(app: web.Application) -> NodeLogQueryConfig:
    own = app.get(CONFIG_KEY)
    if own is not None:
        return own
    for key, value in app.items():
        # app.py keeps the whole Config under "config" (a str or an AppKey of that name).
        name = key if isinstance(key, str) else getattr(key, "_name", "")
        if name == "config" or str(name).endswith(".config"):
            section = getattr(value, "node_log_query", None)
            if isinstance(section, NodeLogQueryConfig):
                return section
    return NodeLogQueryConfig()


def _metrics(app: web.Application) -> Metrics | None:
    own = app.get(METRICS_KEY)
    if own is not None:
        return own
    for value in app.values():
        if isinstance(value, Metrics):
            return value
    return None


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip().rstrip("0").rstrip(".") in ("", "0"))
    return False


class _CapReached(Exception):
    pass


class _Body:
    """The response body: log bytes against the cap, cut at a line end; notice lines."""

    def __init__(self, resp: web.StreamResponse, max_bytes: int, metrics: Metrics | None) -> None:
        self.resp = resp
        self.max_bytes = max_bytes
        self.sent = 0
        self.ends_line = True
        self.metrics = metrics

    @property
    def room(self) -> int:
        return max(0, self.max_bytes - self.sent)

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        await self.resp.write(data)
        self.ends_line = data.endswith(b"\n")
        if self.metrics is not None:
            self.metrics.bytes_served.labels(handler="nodelog").inc(len(data))

    async def write(self, data: bytes) -> None:
        """Send log bytes; raises _CapReached after sending the whole lines that still fit."""
        if len(data) <= self.room:
            await self._send(data)
            self.sent += len(data)
            return
        cut = data[: self.room]
        cut = cut[: cut.rfind(b"\n") + 1]
        await self._send(cut)
        self.sent += len(cut)
        raise _CapReached

    async def notice(self, text: str) -> None:
        """A line of our own (error or note), always on a line of its own, never capped."""
        data = ("" if self.ends_line else "\n") + text.rstrip("\n") + "\n"
        await self._send(data.encode("utf-8", "replace"))


async def handle_node_log_query(request: web.Request) -> web.StreamResponse:
    """Answer `GET /logs/?query=...` like the kubelet: 400/406 with a reason, else a text stream."""
    cfg = _settings(request.app)
    if not cfg.enabled:
        disabled = "node log query is disabled (nodeLogQuery.enabled: false)\n"
        return web.Response(status=404, text=disabled)
    params = {name: request.query.getall(name) for name in set(request.query.keys())}
    try:
        query = parse_node_log_query(params)
    except NodeLogQueryError as exc:
        return web.Response(status=exc.status, text=exc.reason + "\n", content_type="text/plain")

    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = started + cfg.timeout_s
    loop_deadline = loop.time() + cfg.timeout_s

    explicit: OpenedLog | None = None
    if query.is_empty or query.file is not None:
        try:
            explicit = await asyncio.to_thread(open_in_log_dir, cfg.log_dir, query.file or "")
        except FileQueryError as exc:
            if query.file is None:
                return web.Response(status=404, text=f"log directory not available: {exc}\n")
            return web.Response(status=406, text=f"query: Invalid value: {exc}\n")
        problem = may_open_fd(peer_of(request), explicit.fd, explicit.path)
        if problem is not None:
            os.close(explicit.fd)
            raise forbid(request, f"query {query.file or '/'}", problem)
        if explicit.is_dir:
            # The kubelet's http.FileServer answers a directory with its listing.
            page = await asyncio.to_thread(listing_html, explicit.fd)
            return web.Response(body=page, content_type="text/html", charset="utf-8")

    journal_units: list[str] = []
    file_services: list[str] = []
    if query.services:
        remaining = max(0.0, deadline - time.monotonic())
        journal_units, file_services = await _split_services(cfg, query.services, remaining)
        if journal_units and not peer_of(request).trusted:
            if explicit is not None:
                os.close(explicit.fd)
            raise forbid(request, "the journal", "journalctl reads every user's entries")

    resp = web.StreamResponse(headers={"Content-Type": _TEXT})
    if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
        resp.enable_compression(web.ContentCoding.gzip)
    plan = _Plan(
        query, explicit.fd if explicit else None, journal_units, file_services, peer_of(request)
    )
    try:
        await resp.prepare(request)
    except BaseException:
        if plan.file_fd is not None:
            os.close(plan.file_fd)
        raise
    body = _Body(resp, cfg.max_bytes, _metrics(request.app))
    work = asyncio.ensure_future(_stream(body, cfg, plan, deadline, loop_deadline))
    watch = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Whichever way we leave (done, client gone, server shutdown), nothing keeps running.
        work.cancel()
        watch.cancel()
        outcome, _ = await asyncio.gather(work, watch, return_exceptions=True)
    if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
        log.error("node log query failed after %d bytes", body.sent, exc_info=outcome)
    elif watch.done() and not watch.cancelled():
        log.debug("node log query client went away after %d bytes", body.sent)
    return resp


@dataclass
class _Plan:
    """What to send, decided before the response starts."""

    query: NodeLogQuery
    file_fd: int | None
    """An explicit file query's open file (owned by the plan until read)."""
    journal_units: list[str]
    file_services: list[str]
    peer: Peer = TRUSTED
    """Whose file permissions the service files are read with (server/access.py)."""


async def _client_gone(request: web.Request) -> None:
    """Return when the client's connection closes (a silent journalctl gives no write to fail)."""
    while True:
        await asyncio.sleep(_CLIENT_POLL_S)
        transport = request.transport
        if transport is None or transport.is_closing():
            return


async def _stream(
    body: _Body, cfg: NodeLogQueryConfig, plan: _Plan, deadline: float, loop_deadline: float
) -> None:
    query = plan.query
    matcher = compile_pattern(query.pattern) if query.pattern else None
    try:
        try:
            async with asyncio.timeout_at(loop_deadline):
                if plan.file_fd is not None:
                    fd, plan.file_fd = plan.file_fd, None
                    await _copy_file(body, fd, query, matcher, deadline)
                if plan.journal_units:
                    await _copy_journal(body, query, plan.journal_units, cfg.journal_directory)
                if plan.file_services:
                    await _copy_service_files(
                        body,
                        cfg.log_dir,
                        plan.file_services,
                        query,
                        matcher,
                        deadline,
                        plan.peer,
                    )
        except (TimeoutError, DeadlineExceeded):
            async with asyncio.timeout(_LAST_WRITE_TIMEOUT_S):
                await body.notice(
                    f"error: the query did not finish within {cfg.timeout_s:g}s; output incomplete"
                )
        except _CapReached:
            async with asyncio.timeout(_LAST_WRITE_TIMEOUT_S):
                await body.notice(
                    f"error: output truncated at {cfg.max_bytes} bytes (nodeLogQuery.maxBytes)"
                )
        except ConnectionError:
            raise
        except OSError as exc:
            # A read error (EIO, a file removed under us) ends the answer; say which.
            async with asyncio.timeout(_LAST_WRITE_TIMEOUT_S):
                await body.notice(f"error: {exc}")
        except Exception:
            log.exception("node log query failed after %d bytes", body.sent)
            async with asyncio.timeout(_LAST_WRITE_TIMEOUT_S):
                await body.notice("error: internal error; see the logvold log")
        await body.resp.write_eof()
    except (ConnectionError, TimeoutError) as exc:
        # The client went away or stopped reading; the journalctl child is already reaped.
        log.debug("node log query client gone after %d bytes: %s", body.sent, exc)
    finally:
        if plan.file_fd is not None:
            with contextlib.suppress(OSError):
                os.close(plan.file_fd)


async def _split_services(
    cfg: NodeLogQueryConfig, services: Sequence[str], timeout_s: float
) -> tuple[list[str], list[str]]:
    """Services the journal answers and those that fall back to files, in request order."""
    if cfg.journal == "never":
        return [], list(services)
    if cfg.journal == "always":
        return list(services), []
    units = await journal.known_units(
        cfg.journal_directory, timeout_s=min(journal.UNIT_LOOKUP_TIMEOUT_S, timeout_s)
    )
    if units is None:
        return [], list(services)
    known = [s for s in services if journal.is_known(s, units)]
    return known, [s for s in services if s not in known]


async def _copy_journal(body: _Body, query: NodeLogQuery, units: list[str], directory: str) -> None:
    run = journal.JournalRun()
    chunks = journal.stream_journal(journalctl_args(query, units, directory=directory), run)
    # journalctl --grep with --lines walks backwards and prints newest first; put it right.
    newest_first = bool(query.pattern) and query.tail_lines is not None
    try:
        if newest_first:
            await _copy_reversed(body, chunks)
        else:
            async for chunk in chunks:
                await body.write(chunk)
    except FileNotFoundError:
        await body.notice("error: journal output not available (journalctl not found)")
        return
    except PermissionError as exc:
        await body.notice(f"error: journal output not available ({exc})")
        return
    finally:
        await chunks.aclose()
    if run.stderr.strip():
        await body.notice(run.stderr.decode("utf-8", "replace").strip())


async def _copy_reversed(body: _Body, chunks: AsyncIterator[bytes]) -> None:
    """Buffer at most the cap of newest-first journal output, then send its entries oldest first.

    An entry is a line plus its indented continuation lines; `-- Boot ... --` separators are
    dropped because in reverse they name the wrong boot.
    """
    held = bytearray()
    truncated = False
    async for chunk in chunks:
        if len(held) + len(chunk) > body.room:
            held += chunk[: body.room - len(held)]
            truncated = True
            break
        held += chunk
    lines = bytes(held).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif truncated and lines:
        lines.pop()  # a cut line is not sent
    entries: list[list[bytes]] = []
    for line in lines:
        if line.startswith(b"-- Boot ") and line.endswith(b" --"):
            continue
        if line[:1] in (b" ", b"\t") and entries:
            entries[-1].append(line)
        else:
            entries.append([line])
    await body.write(b"".join(b"\n".join(entry) + b"\n" for entry in reversed(entries)))
    if truncated:
        raise _CapReached


async def _copy_file(
    body: _Body, fd: int, query: NodeLogQuery, matcher: LineMatcher | None, deadline: float
) -> None:
    if query.tail_lines is not None:
        count = query.tail_lines
        tail = await asyncio.to_thread(read_tail, fd, count, matcher, deadline, body.room)
        await body.write(b"".join(tail.lines))
        if tail.truncated:
            raise _CapReached
        return
    chunks = iter_forward(fd, matcher, deadline)
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await body.write(chunk)
    finally:
        # A generator still running in its thread (we were cancelled) closes when collected.
        with contextlib.suppress(ValueError):
            chunks.close()


async def _copy_service_files(
    body: _Body,
    log_dir: str,
    services: list[str],
    query: NodeLogQuery,
    matcher: LineMatcher | None,
    deadline: float,
    peer: Peer = TRUSTED,
) -> None:
    if query.journal_only_options:
        # As the kubelet: files carry no timestamps or boots to filter on, so say so instead.
        await body.notice(
            f"options present and query resolved to log files for {services}: "
            f"{', '.join(query.journal_only_options)} need the journal; try without them"
        )
        return
    for service in services:
        try:
            opened = await asyncio.to_thread(open_service_log, log_dir, service)
        except FileQueryError as exc:
            await body.notice(f"error getting log for {service}: {exc}")
            continue
        if opened is None:
            await body.notice(f"log not found for {service}")
            continue
        problem = may_open_fd(peer, opened.fd, opened.path)
        if problem is not None:
            os.close(opened.fd)
            await body.notice(f"error getting log for {service}: {problem}")
            continue
        await _copy_file(body, opened.fd, query, matcher, deadline)
