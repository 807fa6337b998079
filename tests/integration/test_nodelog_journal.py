"""Node log query against a real journal (systemd-journal-remote), real files, aiohttp and kubectl.

The journal is built from an export-format file with known timestamps, boots and messages, so
every assertion compares exact lines. Only the deadline and disconnect tests use a stand-in for
journalctl: a process that never answers, the one thing a real journal cannot be made to do.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from logvold.core.policy import Config, NodeLogQueryConfig
from logvold.core.streams import StreamRegistry
from logvold.server.app import build_app, start_server
from logvold.server.nodelog import journal
from logvold.server.nodelog.handler import add_node_log_routes, handle_node_log_query
from logvold.telemetry.metrics import Metrics

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
KUBECTL = str(Path(sys.executable).with_name("kubectl"))
BASE = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
BOOT_A = "0123456789abcdef0123456789abcdef"  # the previous boot
BOOT_B = "fedcba9876543210fedcba9876543210"  # the current (latest) boot
SECRET = b"TOP-SECRET-OUTSIDE-THE-LOG-DIR"


@dataclass(frozen=True)
class Entry:
    second: int
    boot: str
    unit: str
    message: str

    @property
    def ident(self) -> str:
        return self.unit.removesuffix(".service")

    def lines(self) -> list[str]:
        """What `journalctl -o short-precise --utc` prints for this entry."""
        prefix = f"Nov 20 10:00:{self.second:02d}.000000 node1 {self.ident}[42]: "
        first, *rest = self.message.split("\n")
        return [prefix + first] + [" " * len(prefix) + line for line in rest]


ENTRIES = [
    *(
        Entry(i, BOOT_A, "kubelet.service", f"kubelet {'error' if i % 2 else 'info'} {i}")
        for i in range(5)
    ),
    *(
        Entry(
            i,
            BOOT_B,
            "kubelet.service" if i % 2 else "containerd.service",
            f"{'kubelet' if i % 2 else 'containerd'} {'error' if i % 3 == 0 else 'ok'} {i}",
        )
        for i in range(10, 20)
    ),
    Entry(21, BOOT_B, "kubelet.service", "kubelet error multi-line 21\nsecond line of 21"),
]


def expected(entries: list[Entry], *, boot_separators: bool = True) -> list[str]:
    out: list[str] = []
    for i, entry in enumerate(entries):
        if boot_separators and i and entry.boot != entries[i - 1].boot:
            out.append(f"-- Boot {entry.boot} --")
        out += entry.lines()
    return out


def select(
    unit: str | None = None, *, boot: str | None = None, word: str | None = None
) -> list[Entry]:
    return [
        e
        for e in ENTRIES
        if (unit is None or e.unit == unit)
        and (boot is None or e.boot == boot)
        and (word is None or word in e.message)
    ]


def export_format(entries: list[Entry]) -> bytes:
    out = bytearray()
    for n, e in enumerate(entries):
        usec = int((BASE + timedelta(seconds=e.second)).timestamp() * 1_000_000)
        fields = {
            "__REALTIME_TIMESTAMP": str(usec),
            "__MONOTONIC_TIMESTAMP": str(1_000_000 + n),
            "_BOOT_ID": e.boot,
            "_MACHINE_ID": "00112233445566778899aabbccddeeff",
            "_HOSTNAME": "node1",
            "_SYSTEMD_UNIT": e.unit,
            "SYSLOG_IDENTIFIER": e.ident,
            "_PID": "42",
            "PRIORITY": "6",
        }
        for key, value in fields.items():
            out += f"{key}={value}\n".encode()
        message = e.message.encode()
        if b"\n" in message:  # binary-safe form of the export format
            out += b"MESSAGE\n" + struct.pack("<Q", len(message)) + message + b"\n"
        else:
            out += b"MESSAGE=" + message + b"\n"
        out += b"\n"
    return bytes(out)


@pytest.fixture(scope="module")
def journal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.access(JOURNAL_REMOTE, os.X_OK) or shutil.which("journalctl") is None:
        reason = f"{JOURNAL_REMOTE} or journalctl missing: apt-get install systemd-journal-remote"
        print(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("journal")
    export = root / "export.txt"
    export.write_bytes(export_format(ENTRIES))
    out = root / "j"
    out.mkdir()
    subprocess.run(
        [JOURNAL_REMOTE, f"--output={out}/test.journal", str(export)],
        check=True,
        capture_output=True,
        timeout=20,
    )
    return out


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """A /var/log-like tree, with a secret just outside it and links that try to reach it."""
    (tmp_path / "outside.txt").write_bytes(SECRET + b"\n")
    logs = tmp_path / "varlog"
    logs.mkdir()
    (logs / "foo.log").write_bytes(b"foo 1 ok\nfoo 2 error\nfoo 3 ok\nfoo 4 error\nfoo 5 ok\n")
    (logs / "bar").mkdir()
    (logs / "bar" / "bar.log").write_bytes(b"bar only line\n")
    (logs / "app").mkdir()
    (logs / "app" / "app.log").write_bytes(
        b"".join(b"app %d %s\n" % (i, b"WARN" if i % 4 == 0 else b"info") for i in range(40))
    )
    (logs / "escape.log").symlink_to(tmp_path / "outside.txt")
    (logs / "escapedir").symlink_to(tmp_path)
    (logs / "inner.log").symlink_to(logs / "foo.log")
    os.mkfifo(logs / "pipe")  # opening must never block, and a FIFO is not a log file
    return logs


@pytest.fixture(autouse=True)
def _fresh_unit_cache() -> Iterator[None]:
    journal.forget_units()
    yield
    journal.forget_units()


@asynccontextmanager
async def serve(cfg: NodeLogQueryConfig, metrics: Metrics | None = None) -> AsyncIterator[str]:
    """The real logvold app (build_app) on 127.0.0.1, `cfg` as its nodeLogQuery; yields its URL."""
    app = build_app(
        config=Config(node_log_query=cfg),
        registry=StreamRegistry(),
        metrics=metrics or Metrics(),
        is_ready=lambda: True,
    )
    runner = await start_server(app, "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def get(url: str, path: str, *, gzip_ok: bool = False) -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept-Encoding": "gzip" if gzip_ok else "identity"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url + path, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def text_lines(body: bytes) -> list[str]:
    return body.decode().splitlines()


async def kubectl_raw(url: str, path: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(tmp / "no-kubeconfig"), "HOME": str(tmp)}
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--server", url, "get", "--raw", path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return subprocess.CompletedProcess([KUBECTL], proc.returncode, out.decode(), err.decode())


def config(journal_dir: Path | None, log_dir: Path, **overrides: object) -> NodeLogQueryConfig:
    base = NodeLogQueryConfig(
        journal="auto",
        journal_directory=str(journal_dir) if journal_dir else "",
        log_dir=str(log_dir),
        timeout_s=20.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


# --- the journal ---


@pytest.mark.asyncio
async def test_service_queries_answer_from_the_journal(journal_dir: Path, log_dir: Path) -> None:
    async with serve(config(journal_dir, log_dir)) as url:
        status, headers, body = await get(url, "/logs/?query=kubelet")
        assert status == 200
        assert headers["Content-Type"] == "text/plain;charset=UTF-8"
        assert text_lines(body) == expected(select("kubelet.service"))
        # RFC 3339 bounds are inclusive; an offset is converted to UTC for journalctl.
        _, _, body = await get(
            url,
            "/logs/?query=kubelet&sinceTime=2026-11-20T10:00:13Z&untilTime=2026-11-20T12:00:17%2B02:00",
        )
        window = [e for e in select("kubelet.service") if 13 <= e.second <= 17]
        assert [e.second for e in window] == [13, 15, 17]
        assert text_lines(body) == expected(window)
        # tail + pattern: journalctl prints these newest first; we send them oldest first,
        # a multi-line entry kept whole.
        _, _, body = await get(url, "/logs/?query=kubelet&pattern=error&tailLines=2")
        assert text_lines(body) == expected(select("kubelet.service", word="error")[-2:])
        # tailLines passes --pager-end, which journalctl takes as "this boot" unless boot is
        # given: the kubelet answers the same way. boot=-1 reaches the older boot.
        _, _, body = await get(url, "/logs/?query=kubelet&pattern=error&tailLines=4")
        assert text_lines(body) == expected(select("kubelet.service", boot=BOOT_B, word="error"))
        _, _, body = await get(url, "/logs/?query=kubelet&pattern=error&tailLines=4&boot=-1")
        assert text_lines(body) == expected(select("kubelet.service", boot=BOOT_A, word="error"))
        # Two units interleave in time order; tail counts entries.
        _, _, body = await get(url, "/logs/?query=kubelet&query=containerd.service&tailLines=3")
        assert text_lines(body) == expected(ENTRIES[-3:])
        # boot=-1 is the older boot, boot=0 the newest in the journal.
        _, _, body = await get(url, "/logs/?query=kubelet&boot=-1")
        assert text_lines(body) == expected(select("kubelet.service", boot=BOOT_A))
        _, _, body = await get(url, "/logs/?query=containerd&boot=0&pattern=error")
        assert text_lines(body) == expected(select("containerd.service", word="error"))
        # A boot the journal lacks: journalctl's own complaint comes back as the last line.
        status, _, body = await get(url, "/logs/?query=kubelet&boot=-7")
        assert status == 200
        assert "boot" in text_lines(body)[-1].lower()
        # No match: journalctl's own marker, as the kubelet passes it through.
        _, _, body = await get(url, "/logs/?query=kubelet&pattern=nomatchanywhere")
        assert text_lines(body)[-1] == "-- No entries --"


@pytest.mark.asyncio
async def test_gzip_when_the_client_accepts_it(journal_dir: Path, log_dir: Path) -> None:
    metrics = Metrics()
    async with serve(config(journal_dir, log_dir), metrics) as url:
        status, headers, body = await get(url, "/logs/?query=kubelet&tailLines=3", gzip_ok=True)
        assert status == 200 and headers.get("Content-Encoding") == "gzip"
        assert text_lines(gzip.decompress(body)) == expected(select("kubelet.service")[-3:])
        _, headers, plain = await get(url, "/logs/?query=kubelet&tailLines=3")
        assert "Content-Encoding" not in headers
        assert plain == gzip.decompress(body)
    served = metrics.registry.get_sample_value("logvold_bytes_served_total", {"handler": "nodelog"})
    assert served == 2 * len(plain)  # log bytes before compression, both answers


@pytest.mark.asyncio
async def test_kubectl_get_raw_works_unchanged(
    journal_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    async with serve(config(journal_dir, log_dir)) as url:
        done = await kubectl_raw(url, "/logs/?query=kubelet&pattern=error&tailLines=2", tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == expected(select("kubelet.service", word="error")[-2:])
        done = await kubectl_raw(
            url, "/logs/?query=kubelet&sinceTime=2026-11-20T10:00:18Z", tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == expected(select("kubelet.service")[-2:])
        done = await kubectl_raw(url, "/logs/?query=foo&tailLines=1", tmp_path)
        assert done.stdout.splitlines() == ["foo 5 ok"]
        done = await kubectl_raw(url, "/logs/?query=kube%20let", tmp_path)
        assert done.returncode != 0
        assert "NotAcceptable" in done.stderr and "unsupported characters" in done.stderr
        done = await kubectl_raw(url, "/logs/?query=kubelet&tailLines=many", tmp_path)
        assert done.returncode != 0 and "BadRequest" in done.stderr


# --- files ---


@pytest.mark.asyncio
async def test_services_unknown_to_the_journal_fall_back_to_files(
    journal_dir: Path, log_dir: Path
) -> None:
    async with serve(config(journal_dir, log_dir)) as url:
        _, _, body = await get(url, "/logs/?query=foo")
        assert body == (log_dir / "foo.log").read_bytes()
        _, _, body = await get(url, "/logs/?query=bar")  # <dir>/bar is a dir: bar/bar.log
        assert body == b"bar only line\n"
        _, _, body = await get(url, "/logs/?query=nosuch")
        assert text_lines(body) == ["log not found for nosuch"]
        # Beyond the kubelet: tailLines and pattern apply to the fallback file too.
        _, _, body = await get(url, "/logs/?query=foo&pattern=error&tailLines=1")
        assert body == b"foo 4 error\n"
        # Journal first, then files, in one response.
        _, _, body = await get(url, "/logs/?query=kubelet&query=foo&tailLines=1")
        assert text_lines(body) == [*ENTRIES[-1].lines(), "foo 5 ok"]
        # Time and boot cannot apply to files: said so, nothing unfiltered is sent.
        _, _, body = await get(url, "/logs/?query=foo&sinceTime=2026-11-20T10:00:00Z")
        lines = text_lines(body)
        assert len(lines) == 1 and "resolved to log files for ['foo']" in lines[0]
    # journal=never: even a unit the journal knows is read from files.
    (log_dir / "kubelet.log").write_bytes(b"kubelet from a file\n")
    async with serve(config(journal_dir, log_dir, journal="never")) as url:
        _, _, body = await get(url, "/logs/?query=kubelet")
        assert body == b"kubelet from a file\n"
    # No journal at all (containers, non-systemd hosts): files, as above.
    empty = log_dir.parent / "no-journal"
    empty.mkdir()
    async with serve(config(empty, log_dir)) as url:
        _, _, body = await get(url, "/logs/?query=kubelet")
        assert body == b"kubelet from a file\n"


@pytest.mark.asyncio
async def test_file_queries_with_tail_and_pattern(log_dir: Path) -> None:
    async with serve(config(None, log_dir, journal="never")) as url:
        status, _, body = await get(url, "/logs/?query=app/app.log")
        assert status == 200 and body == (log_dir / "app" / "app.log").read_bytes()
        _, _, body = await get(url, "/logs/?query=/app/app.log&tailLines=2")
        assert body == b"app 38 info\napp 39 info\n"
        _, _, body = await get(url, "/logs/?query=/app/app.log&pattern=WARN&tailLines=3")
        assert body == b"app 28 WARN\napp 32 WARN\napp 36 WARN\n"
        _, _, body = await get(url, "/logs/?query=/app/app.log&pattern=%5Eapp%20[12]%20")
        assert body == b"app 1 info\napp 2 info\n"
        _, _, body = await get(url, "/logs/?query=/inner.log&tailLines=1")  # link inside: fine
        assert body == b"foo 5 ok\n"
        status, _, body = await get(url, "/logs/?query=/app/app.log&boot=0")
        assert status == 406 and b"cannot specify file with boot" in body


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        "/logs/?query=../outside.txt",
        "/logs/?query=../../../../etc/passwd",
        "/logs/?query=%2e%2e%2foutside.txt",
        "/logs/?query=%2E%2E/outside.txt",
        "/logs/?query=..%5Coutside.txt",
        "/logs/?query=/escape.log",
        "/logs/?query=escapedir/outside.txt",
        "/logs/?query=escapedir/",
        "/logs/?query=foo.log%00/x",
        "/logs/?query=%252e%252e%252foutside.txt",
        "/logs/?query=/nosuch.log",
        "/logs/?query=escape",
        "/logs/?query=/pipe",
        "/logs/?query=pipe",
    ],
)
async def test_nothing_outside_the_log_dir_is_served(log_dir: Path, path: str) -> None:
    async with serve(config(None, log_dir, journal="never")) as url:
        status, _, body = await get(url, path)
        assert SECRET not in body
        assert b"outside.txt" not in body or status >= 400
        if path.endswith("query=escape"):
            # A service whose fallback file is a link out of the log dir: not found.
            assert (status, text_lines(body)) == (200, ["log not found for escape"])
        elif path.endswith("query=pipe"):
            assert status == 200
            assert text_lines(body) == ["error getting log for pipe: 'pipe' is not a regular file"]
        else:
            assert 400 <= status < 500, (status, body)


@pytest.mark.asyncio
async def test_listing_when_no_parameter_has_a_value(log_dir: Path) -> None:
    async with serve(config(None, log_dir)) as url:
        status, headers, body = await get(url, "/logs/?pattern=&tailLines=")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        page = body.decode()
        for name in ("app/", "bar/", "foo.log", "inner.log"):
            assert f'<a href="{name}">{name}</a>' in page
        status, _, body = await get(url, "/logs/?query=/app/")
        assert status == 200 and '<a href="app.log">app.log</a>' in body.decode()


# --- limits: byte cap, deadline, client gone ---


@pytest.mark.asyncio
async def test_byte_cap_ends_with_an_error_line(journal_dir: Path, log_dir: Path) -> None:
    async with serve(config(journal_dir, log_dir, max_bytes=100)) as url:
        _, _, body = await get(url, "/logs/?query=/app/app.log")
        *data, last = text_lines(body)
        assert last == "error: output truncated at 100 bytes (nodeLogQuery.maxBytes)"
        logged = "".join(line + "\n" for line in data).encode()
        assert len(logged) <= 100 and (log_dir / "app" / "app.log").read_bytes().startswith(logged)
        whole, size = [], 0  # the longest run of whole lines within the cap
        for line in (log_dir / "app" / "app.log").read_bytes().splitlines(keepends=True):
            if size + len(line) > 100:
                break
            whole.append(line.decode().rstrip("\n"))
            size += len(line)
        assert data == whole
        _, _, body = await get(url, "/logs/?query=kubelet")
        *data, last = text_lines(body)
        assert last.startswith("error: output truncated")
        assert data == expected(select("kubelet.service"))[: len(data)] and data


@pytest.mark.asyncio
async def test_deadline_on_a_huge_file_ends_with_an_error_line(log_dir: Path) -> None:
    (log_dir / "huge.log").write_bytes(b"line of a very large log file\n" * 1_500_000)

    async with serve(config(None, log_dir, journal="never", timeout_s=0.3)) as url:
        started = time.monotonic()
        status, _, body = await get(url, "/logs/?query=/huge.log&pattern=line")
        assert status == 200 and time.monotonic() - started < 30  # not the whole file
        assert (
            text_lines(body)[-1] == "error: the query did not finish within 0.3s; output incomplete"
        )


@pytest.fixture
def hung_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A journalctl that never answers and records its pid: a journal stuck on slow storage."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "journalctl.pid"
    script = bindir / "journalctl"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return pidfile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose only once reaped; /proc tells.
    return Path(f"/proc/{pid}").exists()


async def _wait_gone(pid: int, within_s: float) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.asyncio
async def test_deadline_kills_a_silent_journalctl(log_dir: Path, hung_journalctl: Path) -> None:
    async with serve(config(None, log_dir, journal="always", timeout_s=0.5)) as url:
        started = time.monotonic()
        status, _, body = await get(url, "/logs/?query=kubelet")
        # journalctl sleeps 60 s: the 0.5 s deadline ended the query, not journalctl.
        assert status == 200 and time.monotonic() - started < 30
        assert text_lines(body) == [
            "error: the query did not finish within 0.5s; output incomplete"
        ]
        assert await _wait_gone(int(hung_journalctl.read_text()), 2.0)


@asynccontextmanager
async def serve_plain(cfg: NodeLogQueryConfig) -> AsyncIterator[str]:
    """The handler in a bare app on aiohttp's default runner, which does not cancel handlers
    when the client leaves: only the handler's own watch can notice a silent journalctl."""
    app = web.Application()
    add_node_log_routes(app, cfg, None)
    app.router.add_get("/logs/", handle_node_log_query)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
@pytest.mark.parametrize("server", [serve, serve_plain], ids=["build_app", "plain-runner"])
async def test_client_disconnect_kills_journalctl(
    log_dir: Path, hung_journalctl: Path, server: Callable[[NodeLogQueryConfig], Any]
) -> None:
    async with server(config(None, log_dir, journal="always", timeout_s=30.0)) as url:
        async with aiohttp.ClientSession() as session:
            resp = await session.get(url + "/logs/?query=kubelet")
            assert resp.status == 200
            for _ in range(100):
                if hung_journalctl.exists() and hung_journalctl.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            pid = int(hung_journalctl.read_text())
            resp.close()  # drop the connection mid-stream
        assert await _wait_gone(pid, 3.0), "journalctl still running after the client left"


@pytest.mark.asyncio
async def test_journal_always_without_journalctl_says_so(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(log_dir))  # no journalctl anywhere

    async with serve(config(None, log_dir, journal="always")) as url:
        status, _, body = await get(url, "/logs/?query=kubelet")
        assert status == 200
        assert text_lines(body) == ["error: journal output not available (journalctl not found)"]


@pytest.mark.asyncio
async def test_disabled_and_bad_input_never_5xx(log_dir: Path) -> None:
    async with serve(config(None, log_dir, enabled=False)) as url:
        status, _, _ = await get(url, "/logs/?query=kubelet")
        assert status == 404
    async with serve(config(None, log_dir, journal="never")) as url:
        for path in (
            "/logs/?query=%ff%fe",
            "/logs/?query=a&pattern=%ff",
            "/logs/?query=a&pattern=(",
            "/logs/?query=a&sinceTime=2026-11-20T10:00:00.1234567891Z",
            "/logs/?query=a&sinceTime=0000-01-01T00:00:00Z",
            "/logs/?query=a&boot=-99999999999999999999",
            "/logs/?query=/foo.log/../../outside.txt",
            "/logs/?query=" + "a/" * 3000,
        ):
            status, _, body = await get(url, path)
            assert status < 500, (path, status, body)
            assert SECRET not in body
