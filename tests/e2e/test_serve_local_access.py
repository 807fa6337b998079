"""`auth: local` (the default) with a daemon that reads as root: a real non-root user
(`runuser -u nobody -- curl`) must not read, over TCP or the unix socket, a file it
could not open itself: a container stream (/logs/... and the kubelet pod-log path) and
the node log query over a root-only log directory. Root reads everything; files every
user may read stay readable; `auth: {mode: none}` is the explicit opt-out."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.serve_support import free_port, http_get, running, wait_for
from tests.support.events import event_stream

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root to run a daemon as root and a client as nobody"
    ),
]

SECRET = b"".join(event_stream(5, seed=7))
PUBLIC = b"".join(event_stream(5, seed=8))


@contextlib.contextmanager
def world_tmp() -> Iterator[Path]:
    """A directory every user may search (pytest's tmp_path is 0700 under root's)."""
    path = Path(tempfile.mkdtemp(prefix="logvold-access-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def layout(base: Path) -> tuple[Path, Path, Path]:
    volume = base / "vol"
    volume.mkdir(mode=0o755)
    volume.chmod(0o755)
    (volume / "secret.log").write_bytes(SECRET)
    (volume / "secret.log").chmod(0o600)
    (volume / "public.log").write_bytes(PUBLIC)
    (volume / "public.log").chmod(0o644)
    varlog = base / "varlog"  # like a root-only /var/log: the files inside are 0644
    varlog.mkdir()
    varlog.chmod(0o700)
    (varlog / "kubelet.log").write_bytes(b"kubelet line 1\nkubelet line 2\n")
    (varlog / "kubelet.log").chmod(0o644)
    run = base / "run"
    run.mkdir()
    run.chmod(0o755)
    return volume, varlog, run / "logvold.sock"


def config(base: Path, port: int, volume: Path, varlog: Path, sock: Path, auth: str) -> Path:
    path = base / "config.yaml"
    path.write_text(
        f"server:\n  listen: 127.0.0.1:{port}\n{auth}"
        f'  socket: {{path: {sock}, mode: "0660", group: nogroup}}\n'
        f"volumes:\n  - name: v\n    pod: p\n    path: {volume}\n"
        f"nodeLogQuery: {{journal: never, logDir: {varlog}}}\n"
    )
    return path


def curl_as(user: str, url: str, *, sock: Path | None = None) -> tuple[int, bytes]:
    """GET `url` as `user` with curl; (status, body)."""
    args = ["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]
    if sock is not None:
        args += ["--unix-socket", str(sock)]
    prefix = [] if user == "root" else ["runuser", "-u", user, "--"]
    out = subprocess.run([*prefix, *args, url], capture_output=True, timeout=60, check=True).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


def test_nobody_cannot_read_root_only_files_over_tcp_or_the_socket() -> None:
    port = free_port()
    tcp = f"http://127.0.0.1:{port}"
    with world_tmp() as base:
        volume, varlog, sock = layout(base)
        cfg = config(base, port, volume, varlog, sock, "")
        with running(["--config", str(cfg)], base / "daemon.log") as daemon:
            wait_for(lambda: http_get(f"{tcp}/readyz")[0] == 200, 60, "readyz")
            assert (
                "each client is served only the files its own user could open" in daemon.log_text()
            )
            assert oct(sock.stat().st_mode & 0o777) == "0o660"
            for where, sock_arg in (("tcp", None), ("socket", sock)):
                base_url = tcp if sock_arg is None else "http://localhost"
                # A container stream: /logs/... and the kubelet's pod-log path.
                code, body = curl_as("nobody", f"{base_url}/logs/default/p/secret", sock=sock_arg)
                assert code == 403, (where, code, body)
                assert b"not readable by uid 65534" in body and SECRET[:20] not in body
                code, body = curl_as(
                    "nobody",
                    f"{base_url}/api/v1/namespaces/default/pods/p/log?container=secret",
                    sock=sock_arg,
                )
                assert code == 403 and SECRET[:20] not in body, (where, code, body)
                code, body = curl_as(
                    "nobody", f"{base_url}/logs/default/p/public?tailLines=5", sock=sock_arg
                )
                assert (code, body) == (200, PUBLIC), where
                # The listing shows only what nobody could read.
                code, body = curl_as("nobody", f"{base_url}/logs/", sock=sock_arg)
                assert code == 200 and b'"public"' in body and b'"secret"' not in body, where
                # The node log query over a root-only log directory: the file itself is
                # 0644, but nobody cannot search the directory.
                code, body = curl_as(
                    "nobody", f"{base_url}/logs/?query=/kubelet.log", sock=sock_arg
                )
                assert code == 403 and b"kubelet line" not in body, (where, code, body)
                code, body = curl_as("nobody", f"{base_url}/logs/?query=kubelet", sock=sock_arg)
                assert b"kubelet line" not in body and b"not searchable" in body, (where, body)
                code, body = curl_as("nobody", f"{base_url}/logs/?query=/", sock=sock_arg)
                assert code == 403 and b"kubelet.log" not in body, (where, code, body)
                # Root reads everything, over both.
                code, body = curl_as("root", f"{base_url}/logs/default/p/secret", sock=sock_arg)
                assert (code, body) == (200, SECRET), where
                code, body = curl_as(
                    "root", f"{base_url}/logs/?query=kubelet&tailLines=1", sock=sock_arg
                )
                assert (code, body) == (200, b"kubelet line 2\n"), where
            # Probes and metrics stay open.
            assert curl_as("nobody", f"{tcp}/healthz")[0] == 200
            assert curl_as("nobody", f"{tcp}/metrics")[0] == 200
            assert daemon.stop() == 0
        assert not sock.exists()  # removed on exit


def test_logvold_client_over_the_socket_reads_as_its_user() -> None:
    """`logvold logs --socket`: the same check through the project's own client (as root,
    the only user that can run this machine's Python; nobody is covered above by curl)."""
    from logvold.client.cli import main_logs

    port = free_port()
    with world_tmp() as base:
        volume, varlog, sock = layout(base)
        cfg = config(base, port, volume, varlog, sock, "")
        with running(["--config", str(cfg)], base / "daemon.log") as daemon:
            wait_for(sock.exists, 60, "the socket")
            out = io.BytesIO()
            assert main_logs(["p/secret", "--socket", str(sock)], stdout=out) == 0
            assert out.getvalue() == SECRET
            assert daemon.stop() == 0


def test_auth_none_is_an_explicit_acknowledgement() -> None:
    port = free_port()
    tcp = f"http://127.0.0.1:{port}"
    with world_tmp() as base:
        volume, varlog, sock = layout(base)
        cfg = config(base, port, volume, varlog, sock, "  auth: {mode: none}\n")
        with running(["--config", str(cfg)], base / "daemon.log") as daemon:
            wait_for(lambda: http_get(f"{tcp}/readyz")[0] == 200, 60, "readyz")
            assert curl_as("nobody", f"{tcp}/logs/default/p/secret") == (200, SECRET)
            # The socket still checks its peers whatever the TCP mode.
            code, _ = curl_as("nobody", "http://localhost/logs/default/p/secret", sock=sock)
            assert code == 403
            assert daemon.stop() == 0
