"""`GET /`: a status page a person can look at. Server-rendered HTML (every value escaped:
pods choose their names and annotations) plus a little plain JavaScript (`/status.js`, no
build step) for a live tail of one stream through `logs/...?follow=true`.

It shows the node's streams (namespace, pod, container, policy summary, segments, bytes
on disk against the budget, rotations, the newest segment's close time, failures) and the
volumes' disk use. The page sits behind the same auth as every other route, uses relative
links only (so it also works through the API server's node proxy path), and sends a
strict Content-Security-Policy: no inline script or style, connections to itself only.
"""

from __future__ import annotations

import asyncio
import html
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from logvold import __version__
from logvold.core.streams import StreamInfo
from logvold.server.keys import CONFIG_KEY, EXECUTOR_KEY, METRICS_KEY, REGISTRY_KEY
from logvold.server.stream_list import describe_many

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
MAX_ROWS = 5000
"""Streams shown (a node rarely has more; the page stays a bounded size)."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _size(n: float) -> str:
    """Bytes for people: 1023 B, 4.0 KiB, 12.3 MiB ..."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


def _logs_path(info: StreamInfo) -> str:
    """Relative URL of the stream (works under /api/v1/nodes/<node>/proxy/ too)."""
    k = info.key
    return "logs/" + "/".join(
        urllib.parse.quote(p, safe="") for p in (k.namespace, k.pod, k.container)
    )


def _disk(path: Path) -> tuple[int, int] | None:
    """(used, size) bytes of the filesystem holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    size = st.f_blocks * st.f_frsize
    return size - st.f_bfree * st.f_frsize, size


def _gather(
    infos: list[StreamInfo], budgets: dict[str, int], paths: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the stream and volume tables (a worker thread: it lists directories)."""
    rows = describe_many(infos[:MAX_ROWS])
    volumes: dict[str, dict[str, Any]] = {}
    for info, row in zip(infos, rows, strict=False):
        on_disk = row["segments"]["bytes"] + row["activeFile"]["allocatedBytes"]
        row["onDisk"] = on_disk
        v = volumes.setdefault(
            info.volume,
            {
                "name": info.volume,
                "streams": 0,
                "bytes": 0,
                "budget": budgets.get(info.volume, 0),
                "dir": Path(paths.get(info.volume) or info.directory),
            },
        )
        v["streams"] += 1
        v["bytes"] += on_disk
    for v in volumes.values():
        v["disk"] = _disk(v["dir"])
    return rows, sorted(volumes.values(), key=lambda v: str(v["name"]))


def _bar(used: float, total: float) -> str:
    if total <= 0:
        return ""
    pct = min(100, round(100 * used / total))
    return (
        f'<span class="bar" title="{pct}%"><span class="fill p{pct // 10 * 10}">'
        f"</span></span> {pct}%"
    )


def _stream_rows(
    rows: list[dict[str, Any]],
    infos: list[StreamInfo],
    totals: dict[tuple[str, str, str], dict[str, float]],
) -> str:
    out = []
    for info, row in zip(infos, rows, strict=False):
        p = row["policy"]
        t = totals.get((row["namespace"], row["pod"], row["container"]), {})
        budget = p["maxTotalSize"]
        policy = (
            f"{p['format']}, {p['strategy']}, rotate {p['rotate']}, "
            f"maxSize {_size(p['maxSize'])}, maxFiles {p['maxFiles']}"
            + (f", compress {p['compress']}" if p["compress"] != "none" else "")
        )
        fails = int(t.get("failures", 0))
        newest = (row["segments"]["newestClosed"] or "-").replace("T", " ").replace("+00:00", "Z")
        out.append(
            f"<tr><td>{_e(row['namespace'])}</td><td>{_e(row['pod'])}</td>"
            f'<td>{_e(row["container"])}</td><td class="policy">{_e(policy)}</td>'
            f'<td class="num">{_e(row["segments"]["count"])}</td>'
            f'<td class="num">{_e(_size(row["onDisk"]))}'
            f"{' / ' + _e(_size(budget)) + ' ' + _bar(row['onDisk'], budget) if budget else ''}"
            f'</td><td class="num">{int(t.get("rotations", 0))}</td>'
            f'<td class="time">{_e(newest)}</td>'
            f'<td class="num{" bad" if fails else ""}">{fails}</td>'
            f'<td><button type="button" data-tail="{_e(_logs_path(info))}">tail</button>'
            f"</td></tr>"
        )
    return "\n".join(out)


def _volume_rows(volumes: list[dict[str, Any]]) -> str:
    out = []
    for v in volumes:
        disk = v["disk"]
        fs = f"{_size(disk[0])} / {_size(disk[1])} {_bar(*disk)}" if disk else "unknown"
        budget = f"{_size(v['budget'])} {_bar(v['bytes'], v['budget'])}" if v["budget"] else "-"
        out.append(
            f'<tr><td>{_e(v["name"])}</td><td class="num">{v["streams"]}</td>'
            f'<td class="num">{_e(_size(v["bytes"]))}</td><td>{budget}</td>'
            f"<td>{fs}</td></tr>"
        )
    return "\n".join(out)


async def _status(request: web.Request) -> web.Response:
    app = request.app
    config = app[CONFIG_KEY]
    infos = app[REGISTRY_KEY].snapshot()
    budgets = {v.name: v.max_total_size_bytes for v in config.volumes}
    paths = {v.name: v.path for v in config.volumes}
    rows, volumes = await asyncio.get_running_loop().run_in_executor(
        app[EXECUTOR_KEY], _gather, infos, budgets, paths
    )
    totals = app[METRICS_KEY].stream_totals()
    options = "\n".join(
        f'<option value="{_e(_logs_path(i))}">{_e(i.key)}</option>' for i in infos[:MAX_ROWS]
    )
    node = config.kubernetes.node_name or os.environ.get("NODE_NAME", "") or os.uname().nodename
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="status.css">
<title>logvold on {_e(node)}</title></head>
<body>
<header><h1>logvold on {_e(node)}</h1>
<p class="meta">version {_e(__version__)} · {len(infos)} streams ·
{_e(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))} · <a href="">refresh</a> ·
<a href="metrics">metrics</a> · <a href="logs/">streams (JSON)</a></p></header>
<h2>Streams</h2>
<table id="streams"><thead><tr><th>namespace</th><th>pod</th><th>container</th>
<th>policy</th><th>segments</th><th>on disk / budget</th><th>rotations</th>
<th>newest segment closed</th><th>failures</th><th></th></tr></thead>
<tbody>
{_stream_rows(rows, infos, totals)}
</tbody></table>
<h2>Volumes</h2>
<table id="volumes"><thead><tr><th>volume</th><th>streams</th><th>logs on disk</th>
<th>budget</th><th>filesystem used / size</th></tr></thead>
<tbody>
{_volume_rows(volumes)}
</tbody></table>
<h2>Live tail</h2>
<p><label for="stream">stream</label> <select id="stream">
<option value="">(choose a stream)</option>
{options}
</select> <button type="button" id="stop">stop</button> <span id="tail-state"></span></p>
<pre id="tail" aria-live="polite"></pre>
<script src="status.js"></script>
</body></html>
"""
    return web.Response(text=page, content_type="text/html", charset="utf-8", headers=_HEADERS)


_JS = """\
"use strict";
// Live tail of one stream: fetch() streaming of logs/...?follow=true, text only.
(function () {
  const select = document.getElementById("stream");
  const out = document.getElementById("tail");
  const state = document.getElementById("tail-state");
  const MAX_CHUNKS = 4000;
  let current = null;

  function setState(text) { state.textContent = text; }

  function append(text) {
    const follow = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.appendChild(document.createTextNode(text));
    while (out.childNodes.length > MAX_CHUNKS) { out.removeChild(out.firstChild); }
    if (follow) { out.scrollTop = out.scrollHeight; }
  }

  function stop() {
    if (current) { current.abort(); current = null; }
  }

  async function tail(path) {
    stop();
    out.textContent = "";
    if (!path) { setState(""); return; }
    const ctrl = new AbortController();
    current = ctrl;
    setState("connecting");
    try {
      const resp = await fetch(path + "?follow=true&tailLines=100",
                               {signal: ctrl.signal, cache: "no-store",
                                credentials: "same-origin"});
      if (!resp.ok) {
        setState("error " + resp.status + ": " + (await resp.text()).slice(0, 300));
        return;
      }
      setState("following");
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const part = await reader.read();
        if (part.done) { break; }
        append(decoder.decode(part.value, {stream: true}));
      }
      if (current === ctrl) { setState("ended"); }
    } catch (err) {
      if (err.name !== "AbortError") { setState("disconnected: " + err.message); }
    }
  }

  select.addEventListener("change", function () { tail(select.value); });
  document.getElementById("stop").addEventListener("click", function () {
    stop();
    setState("stopped");
  });
  document.querySelectorAll("button[data-tail]").forEach(function (button) {
    button.addEventListener("click", function () {
      select.value = button.dataset.tail;
      tail(button.dataset.tail);
    });
  });
  window.addEventListener("pagehide", stop);
})();
"""

_CSS = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; }
h1 { font-size: 1.4em; margin: 0; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.meta { color: #5b6475; margin: .3em 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e3e6ec;
         vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.policy { color: #4a5263; font-size: .92em; }
td.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.bad { color: #b3261e; font-weight: 600; }
.bar { display: inline-block; width: 60px; height: .7em; background: #e3e6ec;
       vertical-align: middle; }
.fill { display: block; height: 100%; background: #2f7d4f; }
.p0 { width: 2% } .p10 { width: 10% } .p20 { width: 20% } .p30 { width: 30% }
.p40 { width: 40% } .p50 { width: 50% } .p60 { width: 60% } .p70 { width: 70% }
.p80 { width: 80%; background: #c58a00 } .p90 { width: 90%; background: #b3261e }
.p100 { width: 100%; background: #b3261e }
#tail { background: #11151c; color: #d7dde8; padding: .8em; height: 22em; overflow: auto;
        white-space: pre-wrap; word-break: break-all; font-size: 12.5px; }
button { font: inherit; padding: .1em .6em; }
"""


async def _js(request: web.Request) -> web.Response:
    return web.Response(text=_JS, content_type="text/javascript", charset="utf-8", headers=_HEADERS)


async def _css(request: web.Request) -> web.Response:
    return web.Response(text=_CSS, content_type="text/css", charset="utf-8", headers=_HEADERS)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", _status, name="status")
    app.router.add_get("/status.js", _js, name="status_js")
    app.router.add_get("/status.css", _css, name="status_css")
