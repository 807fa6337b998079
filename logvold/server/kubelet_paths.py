"""The kubelet's own log paths, so scripts written against a kubelet (or against the API
server's node proxy) work unchanged:

- `/containerLogs/<namespace>/<pod>/<container>`: a container's log with the kubelet's
  PodLogOptions (limitBytes keeps the first N bytes, like the kubelet);
- `/logs/<file>`: the kubelet's file server over the node log directory (nodeLogQuery's
  logDir), confined to it; a directory gets an http.FileServer-like listing;
- `/api/v1/nodes/<node>/proxy/logs/...` and `/api/v1/nodes/<node>/proxy/containerLogs/...`:
  the same through the API server's node-proxy path shape (`?query=` is the node log
  query, as `kubectl get --raw` sends it through an API server).

Deeper files (`/logs/<dir>/<file>`) are only served on the node-proxy shape: on the bare
path two segments name a container stream (`/logs/<pod>/<container>`), which is authorised
as pods/log, not as the node-wide access a node file needs.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from logvold.server.keys import CONFIG_KEY, EXECUTOR_KEY, HANDLER_KEY
from logvold.server.kubeapi import serve_kubelet_style
from logvold.server.logs import BadRequest, check_name, lookup, parse_read_options
from logvold.server.nodelog.files import FileQueryError, listing_html, open_in_log_dir

_FILE_CHUNK = 64 * 1024


async def _container_logs(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    if "node" in m:
        check_name("node", m["node"])
    info = lookup(request, m["namespace"], m["pod"], m["container"])
    if request.query.get("previous", "false").lower() in ("true", "1", "t"):
        raise BadRequest(
            "previous is not supported: logvold keeps one stream per container "
            "name, across restarts"
        )
    return await serve_kubelet_style(
        request, info, parse_read_options(request.query), handler="container_logs"
    )


def _read_chunk(fd: int) -> bytes:
    return os.read(fd, _FILE_CHUNK)


async def serve_node_file(
    request: web.Request, name: str, *, files_only: bool = False
) -> web.StreamResponse:
    """A file (or a listing of a directory) under the node log directory, never outside."""
    cfg = request.app[CONFIG_KEY].node_log_query
    if not cfg.enabled:
        raise web.HTTPNotFound(text="node log files are disabled (nodeLogQuery.enabled)\n")
    if "\x00" in name or len(name) > 4096:
        raise BadRequest("invalid file name")
    loop = asyncio.get_running_loop()
    executor = request.app[EXECUTOR_KEY]
    try:
        opened = await loop.run_in_executor(executor, open_in_log_dir, cfg.log_dir, name)
    except FileQueryError as e:
        if e.missing:
            raise web.HTTPNotFound(text=f"{e}\n") from e
        raise web.HTTPForbidden(text=f"{e}\n") from e
    if opened.is_dir and files_only:
        os.close(opened.fd)
        raise web.HTTPNotFound(
            text=f"{name[:64]!r} is a directory; listed at /api/v1/nodes/<node>/proxy/logs/\n"
        )
    if opened.is_dir:
        if not request.path.endswith("/"):  # relative links need the slash, like Go's
            raise web.HTTPMovedPermanently(request.path + "/")
        page = await loop.run_in_executor(executor, listing_html, opened.fd)
        return web.Response(body=page, content_type="text/html", charset="utf-8")
    response = web.StreamResponse(
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}
    )
    try:
        await response.prepare(request)
        while True:  # bounded reads; the file may grow: what is there when each read runs
            chunk = await loop.run_in_executor(executor, _read_chunk, opened.fd)
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
    finally:
        os.close(opened.fd)
    return response


async def _node_file(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    if "node" in m:
        check_name("node", m["node"])
        return await serve_node_file(request, m["file"])
    name = m["file"]
    if "/" in name or name in (".", ".."):  # one segment names one file, nothing else
        raise web.HTTPNotFound(
            text=f"no file {name[:64]!r}; directories and deeper files "
            "are served at /api/v1/nodes/<node>/proxy/logs/\n"
        )
    return await serve_node_file(request, name, files_only=True)


async def _node_logs_root(request: web.Request) -> web.StreamResponse:
    """`/api/v1/nodes/<node>/proxy/logs/`: the node log query with `?query=`, else the
    listing of the log directory (what the kubelet answers)."""
    from logvold.server.logs import NODE_LOG_QUERY_PARAMS

    check_name("node", request.match_info["node"])
    if any(name in request.query for name in NODE_LOG_QUERY_PARAMS):
        from logvold.server.nodelog import handler as nodelog

        request[HANDLER_KEY] = "nodelog"
        return await nodelog.handle_node_log_query(request)
    return await serve_node_file(request, "")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(
        "/containerLogs/{namespace}/{pod}/{container}",
        _container_logs,
        name="container_logs",
        allow_head=False,
    )
    r.add_get("/logs/{file}", _node_file, name="node_file")
    proxy = "/api/v1/nodes/{node}/proxy"
    r.add_get(
        proxy + "/containerLogs/{namespace}/{pod}/{container}",
        _container_logs,
        name="node_proxy_container_logs",
        allow_head=False,
    )
    r.add_get(proxy + "/logs/", _node_logs_root, name="node_proxy_logs")
    r.add_get(proxy + "/logs", _node_logs_root, name="node_proxy_logs_noslash")
    r.add_get(proxy + "/logs/{file:.+}", _node_file, name="node_proxy_file")
