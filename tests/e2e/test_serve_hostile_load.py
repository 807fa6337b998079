"""Hostile clients against a real `logvold serve`: a slowloris flood at a 1024 fd limit,
a thousand followers, heavy reads beyond their cap, and a huge tailLines in bounded
memory. Every refusal must be an HTTP answer with a reason, counted in
logvold_http_refused_total; /healthz and rotation must keep working."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from tests.e2e.serve_support import ROOT, free_port, http_get, metric, wait_for
from tests.support.events import event_stream, split_raw, verify

pytestmark = pytest.mark.slow


class LimitedDaemon:
    """`logvold serve` as a child with RLIMIT_NOFILE set before exec (like prlimit)."""

    def __init__(self, config: Path, log_path: Path, nofile: int | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "logvold", "serve", "--config", str(config)],
            stdout=self._log,
            stderr=self._log,
            env=env,
            preexec_fn=limit,
        )
        wait_for(lambda: self._serving(), 30, "the daemon to serve")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
        return "logvold serving" in self.log_text()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def status(self, field: str) -> int:
        """A kB field of /proc/<pid>/status (VmHWM, VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(field)

    def stop(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def daemon(config: Path, log_path: Path, nofile: int | None = None) -> Iterator[LimitedDaemon]:
    d = LimitedDaemon(config, log_path, nofile)
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture(autouse=True)
def _many_fds() -> None:
    """The test itself opens over a thousand sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2500:
        pytest.fail("the test needs 2500 file descriptors (raise the hard limit)")


def write_config(
    path: Path, volume: Path, port: int, *, limits: str = "", policy: str = "{}"
) -> Path:
    path.write_text(
        f"server:\n  listen: 127.0.0.1:{port}\n  limits: {{{limits}}}\n"
        f"defaults: {policy}\nrescanInterval: 2s\n"
        f"volumes:\n  - name: v\n    pod: p\n    path: {volume}\n"
    )
    return path


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock


def status_of(sock: socket.socket) -> tuple[int, bytes]:
    """The status code and the first bytes of an answer on a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    line = data.split(b"\r\n", 1)[0]
    parts = line.split()
    return (int(parts[1]) if len(parts) > 1 else 0), data


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        sock.settimeout(0.05)
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slowloris_at_a_1024_fd_limit_keeps_healthz_and_rotation(tmp_path: Path) -> None:
    port = free_port()
    volume = tmp_path / "vol"
    volume.mkdir()
    active = volume / "app.log"
    active.write_bytes(b"")
    cfg = write_config(
        tmp_path / "c.yaml",
        volume,
        port,
        limits="headerTimeout: 3s",
        policy="{maxSize: 64Ki, maxFiles: 0}",
    )
    with daemon(cfg, tmp_path / "daemon.log", nofile=1024) as d:
        assert "soft=1024" in d.log_text()  # hard 1024: nothing to raise, logged
        half_open = []
        for _ in range(1100):
            s = connect(port)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
            half_open.append(s)
        # A prompt client is served in the middle of the flood.
        for _ in range(5):
            code, _ = http_get(f"http://127.0.0.1:{port}/healthz", timeout_s=20)
            assert code == 200
        assert d.fds() < 1000
        # Rotation still happens: the stream passes maxSize and is cut.
        events = list(event_stream(4000, seed=3))
        with active.open("ab") as f:
            for ev in events:
                f.write(ev)
        wait_for(lambda: segments_of("app.log", os.listdir(volume)), 60, "a rotation")
        # The stalled connections are closed by the header timeout.
        wait_for(
            lambda: all(closed_by_peer(s) for s in half_open[-200:]),
            60,
            "the header timeout to close stalled connections",
        )
        for s in half_open:
            s.close()
        assert metric(port, "logvold_http_refused_total", {"reason": "idle_evicted"}) >= 1
        log_text = d.log_text()
        assert "Too many open files" not in log_text
        assert len(log_text) < 200_000, "the daemon's own log grew under the flood"
        code, body = http_get(f"http://127.0.0.1:{port}/logs/default/p/app")
        assert code == 200
        report = verify(split_raw([body]), expected=range(len(events)))
        assert report.ok and report.seen == len(events), report.summary()
        assert d.stop() == 0


def test_a_thousand_followers_beyond_the_caps_are_refused(tmp_path: Path) -> None:
    port = free_port()
    volume = tmp_path / "vol"
    volume.mkdir()
    for name in ("a", "b"):
        (volume / f"{name}.log").write_bytes(b"".join(event_stream(3, seed=1)))
    cfg = write_config(
        tmp_path / "c.yaml", volume, port, limits="maxFollowers: 100, maxFollowersPerStream: 60"
    )
    with daemon(cfg, tmp_path / "daemon.log") as d:
        accepted: list[socket.socket] = []
        codes: dict[int, int] = {}
        reasons: set[bytes] = set()
        per_stream = {"a": 0, "b": 0}
        for i in range(1000):
            name = "a" if i < 700 else "b"  # a fills its own cap, then b the global one
            s = connect(port)
            s.sendall(
                f"GET /logs/default/p/{name}?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            code, data = status_of(s)
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                accepted.append(s)
                per_stream[name] += 1
            else:
                reasons.add(data.split(b"\r\n\r\n", 1)[1][:40])
                s.close()
        assert codes == {200: 100, 429: 640, 503: 260}, codes
        assert per_stream == {"a": 60, "b": 40}
        assert any(r.startswith(b"too many followers (100") for r in reasons), reasons
        assert any(r.startswith(b"too many followers of") for r in reasons), reasons
        # Bounded: 100 follower connections plus their open files (the active file and the
        # pinned stream and state directories), not 1000 of each.
        assert d.fds() < 100 * 4 + 100, d.fds()
        refused = metric(port, "logvold_http_refused_total", {"reason": "followers"}) + metric(
            port, "logvold_http_refused_total", {"reason": "stream_followers"}
        )
        assert refused == 900
        # A follower that leaves frees its slot.
        for s in accepted[:10]:
            s.close()

        def one_more() -> bool:
            with connect(port) as s:
                s.sendall(b"GET /logs/default/p/b?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
                return status_of(s)[0] == 200

        wait_for(one_more, 30, "a freed follower slot")
        for s in accepted:
            s.close()
        assert d.stop() == 0


def test_heavy_reads_beyond_the_cap_get_429(tmp_path: Path) -> None:
    port = free_port()
    volume = tmp_path / "vol"
    volume.mkdir()
    big = volume / "big.log"
    with big.open("wb") as f:
        for ev in event_stream(100_000, seed=5):  # ~10 MB: more than socket buffers hold
            f.write(ev)
    cfg = write_config(tmp_path / "c.yaml", volume, port, limits="maxHeavyReads: 1")
    with daemon(cfg, tmp_path / "daemon.log") as d:
        holder = connect(port)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        holder.sendall(b"GET /logs/default/p/big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(holder)[0] == 200  # and then not read: the read stays in progress
        code, body = http_get(f"http://127.0.0.1:{port}/logs/default/p/big?tailLines=1")
        assert code == 429 and body.startswith(b"too many concurrent reads (1"), (code, body)
        assert metric(port, "logvold_http_refused_total", {"reason": "heavy_reads"}) == 1
        holder.close()
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{port}/logs/default/p/big?tailLines=1")[0] == 200,
            30,
            "the slot to be freed",
        )
        assert d.stop() == 0


def test_huge_tail_lines_in_bounded_daemon_memory(tmp_path: Path) -> None:
    """tailLines=10000000 over 20 MB of short events (about a million): the daemon's peak
    RSS grows by far less than an index of the events would take, and the answer is
    exactly the stream."""
    port = free_port()
    volume = tmp_path / "vol"
    volume.mkdir()
    path = volume / "short.log"
    count = 0
    with path.open("wb") as f:
        while f.tell() < 20 * 2**20:
            f.write(f"e{count:09d}\n".encode())  # 11-byte events
            count += 1
    expected = path.read_bytes()
    cfg = write_config(tmp_path / "c.yaml", volume, port, policy="{maxSize: 0}")  # no rotation
    with daemon(cfg, tmp_path / "daemon.log") as d:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, "ready")
        before = d.status("VmHWM")
        url = f"http://127.0.0.1:{port}/logs/default/p/short?tailLines=10000000"
        code, body = http_get(url, timeout_s=300)
        growth_kb = d.status("VmHWM") - before
        assert code == 200
        assert body == expected
        assert growth_kb < 100 * 1024, f"peak RSS grew {growth_kb} kB"
        code, body = http_get(f"http://127.0.0.1:{port}/logs/default/p/short?tailLines=3")
        assert body == b"".join(f"e{i:09d}\n".encode() for i in range(count - 3, count))
        assert d.stop() == 0
