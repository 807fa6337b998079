"""`logvold logs` / `logvold query` against aiohttp servers on 127.0.0.1: a
recording app that checks exactly what the client sends and controls what it
answers, and the real build_app over a real stream and log directory."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from logvold.client.cli import main_logs, main_query, query_request
from logvold.core.policy import Config, LogPolicy, NodeLogQueryConfig
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.telemetry.metrics import Metrics

LOGVOLD = str(Path(sys.executable).with_name("logvold"))


class Recorder:
    """A fixture server mimicking the documented endpoints, recording requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[tuple[str, str]], str | None]] = []
        self.release = asyncio.Event()  # created unbound; used only from the server loop
        self.loop: asyncio.AbstractEventLoop | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/logs/", self.listing_or_query)
        app.router.add_get("/logs/{ns}/{pod}/{container}", self.stream)
        return app

    def _record(self, request: web.Request) -> None:
        self.requests.append(
            (request.path, list(request.query.items()), request.headers.get("Authorization"))
        )

    async def listing_or_query(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if "query" not in request.query:
            return web.json_response({"streams": []})
        if request.query.get("pattern") == "(":
            return web.Response(status=400, text='pattern: Invalid value: "(": missing )\n')
        return web.Response(text="".join(f"{q}: line\n" for q in request.query.getall("query")))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        pod = request.match_info["pod"]
        if pod == "missing":
            return web.Response(status=404, text="stream default/missing/app not found\nmore\n")
        if pod == "private":
            return web.Response(status=403, text="Forbidden (user=bob, verb=get)\n")
        if pod == "broken":
            return web.Response(status=500, text="internal error; see the logvold log\n")
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        for i in range(3):
            await response.write(f"event {i} ".encode() + b"x" * 100_000 + b"\n")
        if request.query.get("follow") == "true":
            await response.write(b"first\n")
            await self.release.wait()
            await response.write(b"second\n")
        await response.write_eof()
        return response


async def _plain_runner(app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@contextmanager
def serving(
    app: web.Application,
    start: Callable[[web.Application], Awaitable[web.AppRunner]] = _plain_runner,
) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """Run `app` on 127.0.0.1 in a thread with its own event loop.

    A thread on purpose, not pytest-asyncio: `logvold logs` / `logvold query` are blocking
    clients (called in-process or as subprocesses), so the test thread blocks while they
    run and a server on the test's own loop would never answer them.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start(app))
        state["port"] = runner.addresses[0][1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}", loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str, asyncio.AbstractEventLoop]]:
    rec = Recorder()
    with serving(rec.app()) as (url, loop):
        rec.loop = loop
        yield rec, url, loop


def _run(main: Any, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err, environ=env or {})
    return code, out.getvalue(), err.getvalue()


def test_logs_sends_pod_log_options_and_streams_the_body(
    recorder: tuple[Recorder, str, asyncio.AbstractEventLoop],
) -> None:
    rec, url, _ = recorder
    code, out, err = _run(
        main_logs,
        [
            "team-a/web-0/app",
            "--tail",
            "20",
            "--since",
            "5m",
            "--timestamps",
            "--pattern",
            "err|warn",
            "--limit-bytes",
            "1000",
            "--stream",
            "stderr",
            "--url",
            url,
        ],
        {"LOGVOLD_TOKEN": "from-env"},
    )
    assert (code, err) == (0, "")
    assert out == b"".join(f"event {i} ".encode() + b"x" * 100_000 + b"\n" for i in range(3))
    path, params, auth = rec.requests[-1]
    assert path == "/logs/team-a/web-0/app"
    assert params == [
        ("tailLines", "20"),
        ("sinceSeconds", "300"),
        ("timestamps", "true"),
        ("pattern", "err|warn"),
        ("limitBytes", "1000"),
        ("stream", "stderr"),
    ]
    assert auth == "Bearer from-env"


def test_logs_default_namespace_since_time_and_token_flag(
    recorder: tuple[Recorder, str, asyncio.AbstractEventLoop],
) -> None:
    rec, url, _ = recorder
    argv = ["web/app", "--since-time", "2026-11-23T10:00:00+01:00", "--url", url, "--token", "t1"]
    code, _, err = _run(main_logs, argv, {"LOGVOLD_TOKEN": "ignored"})
    assert (code, err) == (0, "")
    path, params, auth = rec.requests[-1]
    assert path == "/logs/default/web/app"
    assert params == [("sinceTime", "2026-11-23T09:00:00Z")]
    assert auth == "Bearer t1"
    _run(main_logs, ["web/app", "--url", url])
    assert rec.requests[-1][2] is None  # no token, no header


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        ("missing", "logvold logs: HTTP 404: stream default/missing/app not found\n"),
        ("private", "logvold logs: HTTP 403: Forbidden (user=bob, verb=get)\n"),
        ("broken", "logvold logs: HTTP 500: internal error; see the logvold log\n"),
    ],
    ids=["404", "403", "500"],
)
def test_http_errors_print_the_servers_reason_and_exit_1(
    recorder: tuple[Recorder, str, asyncio.AbstractEventLoop], pod: str, expected: str
) -> None:
    _, url, _ = recorder
    code, out, err = _run(main_logs, [f"{pod}/app", "--url", url])
    assert (code, out, err) == (1, b"", expected)


def test_unreachable_daemon_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code, out, err = _run(main_logs, ["p/c", "--url", f"http://127.0.0.1:{port}"])
    assert code == 1
    assert out == b""
    assert err.startswith(f"logvold logs: cannot reach logvold at http://127.0.0.1:{port}: ")
    assert err.count("\n") == 1
    assert "refused" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required"),
        (["a/b/c/d"], "expected [NAMESPACE/]POD/CONTAINER"),
        (["a//c"], "expected [NAMESPACE/]POD/CONTAINER"),
        (["p/c", "--since", "5m", "--since-time", "2026-11-23T00:00:00Z"], "not allowed with"),
        (["p/c", "--since", "soon"], "--since:"),
        (["p/c", "--since-time", "yesterday"], "--since-time: expected an RFC3339 time"),
        (["p/c", "--since-time", "2026-11-23T10:00:00"], "has no time zone"),
        (["p/c", "--tail", "-1"], "--tail must not be negative"),
        (["p/c", "--stream", "stdin"], "invalid choice"),
        (["p/c", "--url", "127.0.0.1:8642"], "--url must be http://HOST:PORT"),
    ],
    ids=[
        "no-target",
        "deep-target",
        "empty-part",
        "both-since",
        "bad-duration",
        "bad-time",
        "naive-time",
        "negative-tail",
        "bad-stream",
        "bad-url",
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    code, out, err = _run(main_logs, argv)
    assert code == 2
    assert out == b""
    assert err.startswith("usage: logvold logs")
    assert message in err


def test_query_sends_the_kep_2258_parameters(
    recorder: tuple[Recorder, str, asyncio.AbstractEventLoop],
) -> None:
    rec, url, _ = recorder
    argv = [
        "kubelet", "containerd",
        "--pattern", "error", "--since", "2026-11-23T10:00:00Z", "--until", "2026-11-23T11:30:00Z",
        "--tail", "50", "--boot", "-1", "--url", url + "/",
    ]  # fmt: skip
    code, out, err = _run(main_query, argv)
    assert (code, err) == (0, "")
    assert out == b"kubelet: line\ncontainerd: line\n"
    path, params, _ = rec.requests[-1]
    assert path == "/logs/"
    assert params == [
        ("query", "kubelet"),
        ("query", "containerd"),
        ("pattern", "error"),
        ("sinceTime", "2026-11-23T10:00:00Z"),
        ("untilTime", "2026-11-23T11:30:00Z"),
        ("tailLines", "50"),
        ("boot", "-1"),
    ]
    code, _, err = _run(main_query, ["kubelet", "--pattern", "(", "--url", url])
    assert (code, err) == (1, 'logvold query: HTTP 400: pattern: Invalid value: "(": missing )\n')
    code, _, err = _run(main_query, ["--tail", "3"])
    assert code == 2
    assert "required" in err


def test_query_since_as_a_duration_back_from_now() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    request = query_request(["kubelet", "--since", "90m"], {}, now=now)
    assert request.url.endswith("?query=kubelet&sinceTime=2026-11-23T10%3A30%3A00Z")


def test_follow_prints_each_chunk_as_it_arrives(
    recorder: tuple[Recorder, str, asyncio.AbstractEventLoop],
) -> None:
    rec, url, loop = recorder
    child = subprocess.Popen(
        [LOGVOLD, "logs", "ns/p/c", "-f", "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        for _ in range(3):
            assert child.stdout.readline().startswith(b"event ")
        # The server holds the response open: "first" must arrive before it ends.
        assert child.stdout.readline() == b"first\n"
        assert child.poll() is None
        loop.call_soon_threadsafe(rec.release.set)
        assert child.stdout.readline() == b"second\n"
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert rec.requests[-1][1] == [("follow", "true")]


def test_entry_point_exit_codes() -> None:
    usage = subprocess.run([LOGVOLD, "logs", "x"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2
    assert "expected [NAMESPACE/]POD/CONTAINER" in usage.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = subprocess.run(
        [LOGVOLD, "query", "kubelet", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1
    assert down.stderr.startswith("logvold query: cannot reach logvold")


# --- against the real HTTP API ----------------------------------------------------------------


@pytest.fixture
def real_api(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from logvold.server.app import build_app, start_server

    stream_dir = tmp_path / "volume"
    stream_dir.mkdir()
    (stream_dir / "app.log").write_bytes(b"".join(b"line %d\n" % i for i in range(1, 101)))
    log_dir = tmp_path / "varlog"
    log_dir.mkdir()
    (log_dir / "syslog").write_text("boot ok\nkernel: error on sda\nall fine\n")
    registry = StreamRegistry()
    registry.put(
        StreamInfo(
            key=StreamKey("team-a", "web-0", "app"),
            directory=stream_dir,
            base="app.log",
            policy=LogPolicy(),
            volume="v",
        )
    )
    config = Config(node_log_query=NodeLogQueryConfig(journal="never", log_dir=str(log_dir)))
    app = build_app(config=config, registry=registry, metrics=Metrics(), is_ready=lambda: True)
    with serving(app, lambda app: start_server(app, "127.0.0.1:0")) as (url, _):
        yield url, stream_dir


def test_real_api_logs_whole_stream_tail_and_missing(real_api: tuple[str, Path]) -> None:
    url, stream_dir = real_api
    code, out, err = _run(main_logs, ["team-a/web-0/app", "--url", url])
    assert (code, err) == (0, "")
    assert out == (stream_dir / "app.log").read_bytes()
    code, out, _ = _run(main_logs, ["team-a/web-0/app", "--tail", "2", "--url", url])
    assert (code, out) == (0, b"line 99\nline 100\n")
    code, out, _ = _run(main_logs, ["team-a/web-0/app", "--pattern", "^line 5[0-2]$", "--url", url])
    assert (code, out) == (0, b"line 50\nline 51\nline 52\n")
    code, out, err = _run(main_logs, ["team-a/nope/app", "--url", url])
    assert code == 1
    assert err.startswith("logvold logs: HTTP 404: ")
    assert err.count("\n") == 1


def test_real_api_node_log_query_of_a_file(real_api: tuple[str, Path]) -> None:
    url, _ = real_api
    code, out, err = _run(main_query, ["syslog", "--pattern", "error", "--url", url])
    assert (code, err) == (0, "")
    assert out == b"kernel: error on sda\n"
    code, out, err = _run(main_query, ["../etc/passwd", "--url", url])
    assert code == 1
    assert err.startswith("logvold query: HTTP 4")


def test_broken_pipe_is_not_an_error(
    recorder: tuple[Recorder, str, asyncio.AbstractEventLoop],
) -> None:
    _, url, _ = recorder
    shell = f"{LOGVOLD} logs ns/p/c --url {url} | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, timeout=30, env=dict(os.environ)
    )
    assert result.stdout.strip() == "0"
    assert "Traceback" not in result.stderr


def test_where_prints_the_streams_files_on_disk(real_api: tuple[str, Path]) -> None:
    from logvold.fileio.rotator import StreamRotator

    url, stream_dir = real_api
    info = StreamInfo(
        key=StreamKey("team-a", "web-0", "app"),
        directory=stream_dir,
        base="app.log",
        policy=LogPolicy(),
        volume="v",
    )
    rotator = StreamRotator(info)
    assert rotator.rotate("manual") is not None  # a real segment, cut at an event boundary
    with (stream_dir / "app.log").open("ab") as f:
        f.write(b"line 101\n")
    assert rotator.rotate("manual") is not None
    code, out, err = _run(main_logs, ["team-a/web-0/app", "--where", "--url", url])
    assert (code, err) == (0, "")
    paths = out.decode().splitlines()
    segments = sorted(p for p in os.listdir(stream_dir) if p.startswith("app.log."))
    assert len(segments) == 2
    assert paths == [str(stream_dir / s) for s in segments] + [str(stream_dir / "app.log")]
    # The first segment holds the first events: the path is the file that has them.
    assert Path(paths[0]).read_bytes().startswith(b"line 1\nline 2\n")
    code, _, err = _run(main_logs, ["team-a/web-0/other", "--where", "--url", url])
    assert code == 1 and "no stream team-a/web-0/other" in err
    code, _, err = _run(main_logs, ["team-a/web-0/app", "--where", "-f", "--url", url])
    assert code == 2 and "--where prints file paths: it takes no --follow" in err
