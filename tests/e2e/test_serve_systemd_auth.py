"""`logvold serve` as systemd and a cluster see it: the notify protocol on a real
AF_UNIX datagram socket (READY, WATCHDOG, RELOADING, STOPPING), and bearer-token
authorisation through TokenReview + SubjectAccessReview.

No kube-apiserver can be installed here, so the reviews are answered by the
loopback fake API server of tests/support/fake_kube_api.py (real wire format);
the daemon's `kubernetes` client and aiohttp middleware are the real ones."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.serve_support import free_port, running
from tests.support.events import event_stream
from tests.support.fake_kube_api import Json, running_fake_api

pytestmark = pytest.mark.slow


def _collect(sock: socket.socket, until: str, timeout_s: float = 15.0) -> list[str]:
    """Datagrams received until one contains `until`."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} from the daemon; got {got}")


def test_notify_ready_watchdog_reload_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    port = free_port()
    cfg = tmp_path / "cfg.yaml"
    (tmp_path / "logs").mkdir()
    cfg.write_text(
        f"server: {{listen: '127.0.0.1:{port}'}}\n"
        f"volumes: [{{name: v, path: {json.dumps(str(tmp_path / 'logs'))}}}]\n"
    )
    try:
        with running(["--config", str(cfg)], tmp_path / "daemon.log") as daemon:
            ready = _collect(sock, "READY=1")
            assert any("STATUS=serving" in m for m in ready)
            pings = [m for m in _collect(sock, "WATCHDOG=1") if "WATCHDOG=1" in m]
            pings += [m for m in _collect(sock, "WATCHDOG=1") if "WATCHDOG=1" in m]
            assert len(pings) >= 2  # keeps pinging while the loop is alive
            daemon.signal(signal.SIGHUP)
            during = _collect(sock, "RELOADING=1")
            assert any("MONOTONIC_USEC=" in m for m in during if "RELOADING=1" in m)
            assert any("READY=1" in m for m in _collect(sock, "READY=1"))
            assert daemon.stop() == 0
            assert any("STOPPING=1" in m for m in _collect(sock, "STOPPING=1", 2.0))
    finally:
        sock.close()


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_bearer_tokens_are_reviewed_by_the_api_server(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    events = b"".join(event_stream(20))
    (logs / "app.log").write_bytes(events)
    port = free_port()
    with running_fake_api() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.state.tokens["alice-token"] = {"username": "alice", "groups": ["dev"]}
        api.state.tokens["bob-token"] = {"username": "bob", "groups": ["dev"]}

        def allow(spec: Json) -> tuple[bool, str]:
            attrs = spec.get("resourceAttributes", {})
            if spec.get("user") == "alice" and attrs.get("subresource") == "log":
                return True, "alice may read logs"
            return False, "only alice may read pod logs"

        api.state.allow = allow
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(
            f"server: {{listen: '127.0.0.1:{port}', auth: {{mode: kubernetes}}}}\n"
            f"kubernetes: {{nodeName: node-a, kubeconfig: {json.dumps(str(kubeconfig))}}}\n"
            f"volumes: [{{name: v, path: {json.dumps(str(logs))}, pod: web}}]\n"
        )
        with running(["--config", str(cfg)], tmp_path / "daemon.log") as daemon:
            base = f"http://127.0.0.1:{port}"
            assert _get(f"{base}/healthz", None)[0] == 200  # probes stay anonymous
            code, body = _get(f"{base}/logs/default/web/app", None)
            assert code == 401 and b"bearer token" in body
            code, body = _get(f"{base}/logs/default/web/app", "mallory-token")
            assert code == 401 and b"invalid bearer token" in body
            code, body = _get(f"{base}/logs/default/web/app", "bob-token")
            assert code == 403 and b"only alice may read pod logs" in body
            code, body = _get(f"{base}/logs/default/web/app", "alice-token")
            assert (code, body) == (200, events)
            code, _ = _get(f"{base}/logs/", "alice-token")  # node-wide: nodes/proxy
            assert code == 403
            reviews = [r for r in api.requests("POST") if r.path.endswith("subjectaccessreviews")]
            sar = [r.body["spec"]["resourceAttributes"] for r in reviews if r.body]
            assert {
                "namespace": "default",
                "name": "web",
                "resource": "pods",
                "subresource": "log",
                "verb": "get",
            }.items() <= sar[0].items()
            assert daemon.stop() == 0
        assert "Traceback" not in daemon.log_text()
