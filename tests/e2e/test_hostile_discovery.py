"""Attacks on a real `logvold serve` (a child process) from inside pod volumes and from
a second manager: a discovered pod whose subDir is a symlink to a /var/log-like
directory or to another pod's emptyDir (with `auth: kubernetes`, through a loopback
API server speaking the real wire format: no kube-apiserver can run here), two daemons
on one directory, a volume reached twice through a symlinked path (check-config, start,
reload), a writer truncating its own file under a follower, and a non-follow read
while a step marker stays pending.

Each asserts: outside canaries keep their bytes, mode and blocks; nothing of them is
served; the stream keeps its sequence-numbered events exactly once; the daemon stays
ready and stops on SIGTERM within a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.serve_support import (
    ROOT,
    Daemon,
    free_port,
    http_get,
    metric,
    stream_bytes,
    wait_for,
    write_config,
    writer,
)
from tests.support.events import event_stream, split_raw, verify
from tests.support.fake_kube_api import make_pod, running_fake_api

pytestmark = pytest.mark.slow
NODE = "node-a"
SECRET = b"TOP-SECRET-CANARY-OUTSIDE-THE-VOLUME"
STOP_DEADLINE_S = 30.0


class Canary:
    """A file outside every volume: its bytes, mode and blocks must never change."""

    def __init__(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600)
        self.path, self.data = path, data
        st = path.stat()
        self.mode, self.blocks = st.st_mode, st.st_blocks

    def unchanged(self) -> None:
        st = self.path.stat()
        assert self.path.read_bytes() == self.data, f"{self.path} changed"
        assert (st.st_mode, st.st_blocks) == (self.mode, self.blocks)


def _get(url: str, token: str | None = None, timeout_s: float = 30) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout_s
        ) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def sample(text: bytes, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of a /metrics exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    return 0.0


def _exactly_once(data: bytes, count: int, delimiter: bytes = b"\n\n") -> None:
    report = verify(split_raw([data], delimiter), expected=range(count))
    assert report.ok and report.seen == count, report.summary()
    assert b"\0" not in data


class Served(Daemon):
    """A serving daemon and its base URL."""

    def __init__(self, args: list[str], log: Path, port: int) -> None:
        super().__init__(args, log)
        self.base = f"http://127.0.0.1:{port}"
        self.wait_serving()

    def stop_ready(self) -> None:
        """Still ready after the attack, and stops on SIGTERM within the deadline."""
        assert http_get(f"{self.base}/readyz")[0] == 200
        started = time.monotonic()
        assert self.stop(STOP_DEADLINE_S) == 0
        assert time.monotonic() - started < STOP_DEADLINE_S
        assert "Traceback" not in self.log_text()


# -- discovery: a symlinked subDir ---------------------------------------------------------


def test_symlinked_subdir_of_a_pod_reaches_neither_host_logs_nor_another_pod(
    tmp_path: Path,
) -> None:
    kubelet = tmp_path / "kubelet"
    empty_dir = "volumes/kubernetes.io~empty-dir/logs"
    victim_dir = kubelet / "pods/uid-victim" / empty_dir
    victim_dir.mkdir(parents=True)
    attacker_dir = kubelet / "pods/uid-attacker" / empty_dir
    attacker_dir.mkdir(parents=True)
    var_log = tmp_path / "var-log"
    canaries = [
        Canary(var_log / "syslog.log", SECRET + b" syslog\n" + b"".join(event_stream(30))),
        Canary(var_log / "syslog.log.20200101-000000", SECRET + b" rotated\n"),
    ]
    (attacker_dir / "y").symlink_to(var_log)  # planted by the pod in its own volume
    (attacker_dir / "z").symlink_to(victim_dir)
    port = free_port()
    count = 400
    with running_fake_api() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.state.tokens["attacker-token"] = {"username": "attacker", "groups": ["dev"]}
        api.state.tokens["victim-token"] = {"username": "victim", "groups": ["dev"]}
        api.state.tokens["prom-token"] = {"username": "prometheus", "groups": ["mon"]}

        def scrape(name: str, labels: dict[str, str] | None = None) -> float:
            _, text = _get(f"http://127.0.0.1:{port}/metrics", "prom-token")
            return sample(text, name, labels)

        def allow(spec: dict) -> tuple[bool, str]:  # type: ignore[type-arg]
            attrs = spec.get("resourceAttributes", {})
            ns = {"attacker": "team-a", "victim": "team-b"}.get(spec.get("user", ""))
            if attrs.get("subresource") == "log" and attrs.get("namespace") == ns:
                return True, "own namespace"
            if spec.get("user") == "prometheus" and attrs.get("subresource") == "metrics":
                return True, "scrapes"
            return False, "only your own namespace"

        api.state.allow = allow
        api.add_pod(
            make_pod(
                "victim",
                node=NODE,
                namespace="team-b",
                uid="uid-victim",
                annotation="logs:\n  app: {maxSize: 8Ki, maxFiles: 0, delimiter: '\\n\\n'}\n",
            )
        )
        api.add_pod(
            make_pod(
                "attacker",
                node=NODE,
                namespace="team-a",
                uid="uid-attacker",
                containers=("syslog", "app"),
                annotation="logs:\n"
                "  syslog: {subDir: y, maxSize: 1Ki}\n"
                "  app: {subDir: z, maxSize: 1Ki, maxFiles: 1}\n",
            )
        )
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(
            f"server: {{listen: '127.0.0.1:{port}', auth: {{mode: kubernetes}}}}\n"
            "rescanInterval: 1s\n"
            f"kubernetes: {{enabled: true, nodeName: {NODE}, "
            f"kubeletRoot: {json.dumps(str(kubelet))}, "
            f"kubeconfig: {json.dumps(str(kubeconfig))}}}\n"
        )
        daemon = Served(["--config", str(cfg)], tmp_path / "daemon.log", port)
        try:
            base = daemon.base
            wait_for(
                lambda: scrape("logvold_unsafe_files_refused_total", {"kind": "symlink"}) >= 2,
                60,
                "both subDirs refused",
            )
            # The registry knows three streams; only the victim's is managed (rotated).
            wait_for(lambda: scrape("logvold_streams") == 1, 60, "one managed stream")
            proc = writer(victim_dir / "app.log", count=count, rate=100, max_chunk=2048)
            for container in ("syslog", "app"):
                for query in ("", "?follow=true", "?tailLines=10"):
                    code, body = _get(
                        f"{base}/logs/team-a/attacker/{container}{query}", "attacker-token"
                    )
                    assert code == 403, (container, query, code, body)
                    assert SECRET not in body and b"E#" not in body
                    assert str(tmp_path).encode() not in body
            code, _ = _get(f"{base}/logs/team-b/victim/app", "attacker-token")
            assert code == 403  # the SubjectAccessReview says no
            assert proc.wait(120) == 0
            wait_for(
                lambda: len([n for n in os.listdir(victim_dir) if n.startswith("app.log.")]) >= 2,
                30,
                "the victim's rotations under its own policy",
            )
            code, body = _get(f"{base}/logs/team-b/victim/app", "victim-token")
            assert code == 200
            _exactly_once(body, count)
            segments, live = stream_bytes(victim_dir, "app.log")
            _exactly_once(b"".join(segments) + live, count)
            # The attacker's maxFiles: 1 never removed any of them (none lost above).
            assert not (var_log / ".logvold").exists()
            assert sorted(os.listdir(var_log)) == ["syslog.log", "syslog.log.20200101-000000"]
            for canary in canaries:
                canary.unchanged()
            daemon.stop_ready()
        finally:
            if daemon.proc.poll() is None:
                daemon.kill()


# -- two managers on one directory -------------------------------------------------------


def test_a_second_daemon_on_the_same_directory_refuses_and_the_first_keeps_every_event(
    tmp_path: Path,
) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    (tmp_path / "alias").symlink_to(volume)
    port, port2 = free_port(), free_port()
    count = 3000
    cfg = write_config(
        tmp_path / "a.yaml",
        volume,
        listen=f"127.0.0.1:{port}",
        policy={"maxSize": "16Ki", "maxFiles": 0, "delimiter": "\n\n"},
        rescan="1s",
    )
    cfg2 = write_config(
        tmp_path / "b.yaml",
        tmp_path / "alias",
        listen=f"127.0.0.1:{port2}",
        policy={"maxSize": "4Ki", "maxFiles": 1, "delimiter": "\n\n"},
    )
    first = Served(["--config", str(cfg)], tmp_path / "first.log", port)
    try:
        proc = writer(volume / "app.log", count=count, rate=400, max_chunk=4096)
        wait_for(lambda: metric(port, "logvold_rotations_total") >= 1, 60, "a rotation")
        for args in (
            ["--config", str(cfg2)],
            ["--config", str(cfg2), "--once"],
            ["--config", str(cfg), "--once", "--listen", f"127.0.0.1:{port2}"],
            ["--logs-dir", str(volume), "--listen", f"127.0.0.1:{port2}"],
        ):
            second = subprocess.run(
                [sys.executable, "-m", "logvold", "serve", *args],
                capture_output=True,
                timeout=60,
                cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
            err = second.stderr.decode()
            assert second.returncode == 1, (args, err)
            assert f"is managed by another logvold (pid {first.proc.pid}); stop it first" in err, (
                err
            )
        assert proc.wait(120) == 0
        wait_for(lambda: metric(port, "logvold_rotations_total") >= 5, 60, "rotations")
        _, body = http_get(f"{first.base}/logs/default/p/app", 30)
        _exactly_once(body, count)
        segments, live = stream_bytes(volume, "app.log")
        _exactly_once(b"".join(segments) + live, count)
        first.stop_ready()
    finally:
        if first.proc.poll() is None:
            first.kill()
    # Stopped: the lock is free again and a `--once` runs.
    once = subprocess.run(
        [sys.executable, "-m", "logvold", "serve", "--config", str(cfg2), "--once"],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert once.returncode == 0, once.stderr.decode()


# -- one directory reached twice through a symlinked volume path ---------------------------


def test_a_volume_reached_twice_is_rejected_by_check_config_start_and_reload(
    tmp_path: Path,
) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    (tmp_path / "alias").symlink_to(volume)
    events = b"".join(event_stream(50, delimiter=b"\n\n"))
    (volume / "app.log").write_bytes(events)
    port = free_port()
    good = write_config(
        tmp_path / "cfg.yaml", volume, listen=f"127.0.0.1:{port}", policy={"delimiter": "\n\n"}
    )
    bad_text = good.read_text() + (
        f"  - name: w\n    pod: q\n    path: {json.dumps(str(tmp_path / 'alias'))}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(bad_text)
    line = bad_text.splitlines().index(f"    path: {json.dumps(str(tmp_path / 'alias'))}") + 1
    check = subprocess.run(
        [sys.executable, "-m", "logvold", "check-config", str(bad)],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert check.returncode == 1
    assert (
        f"{bad}:{line}: volumes[1].path: {tmp_path / 'alias'} is the same directory as"
        in check.stderr.decode()
    )
    start = subprocess.run(
        [sys.executable, "-m", "logvold", "serve", "--config", str(bad)],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert start.returncode == 2 and b"is the same directory as" in start.stderr
    daemon = Served(["--config", str(good)], tmp_path / "daemon.log", port)
    try:
        good.write_text(bad_text)  # the same file, now naming the directory twice
        daemon.signal(signal.SIGHUP)
        wait_for(
            lambda: metric(port, "logvold_config_reloads_total", {"result": "error"}) >= 1,
            60,
            "the reload rejected",
        )
        assert "is the same directory as" in daemon.log_text()
        assert metric(port, "logvold_streams") == 1
        code, body = http_get(f"{daemon.base}/logs/default/p/app")
        assert code == 200 and body == events
        assert http_get(f"{daemon.base}/logs/default/q/app")[0] == 404  # not applied
        daemon.stop_ready()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


# -- followers ---------------------------------------------------------------------------


class _Follower(threading.Thread):
    """A follow=true client reading chunks as they come (bounded: a replay is caught)."""

    LIMIT = 8 * 2**20

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.data = bytearray()
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=120) as resp:
                while not self.done.is_set() and len(self.data) < self.LIMIT:
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    self.data += chunk
        except BaseException as e:
            self.error = e


def test_writer_truncating_its_file_under_a_follower_gets_new_events_once(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    port = free_port()
    cfg = write_config(
        tmp_path / "cfg.yaml",
        volume,
        listen=f"127.0.0.1:{port}",
        policy={"maxSize": "16Ki", "maxFiles": 0, "delimiter": "\n\n"},
    )
    daemon = Served(["--config", str(cfg)], tmp_path / "daemon.log", port)
    try:
        first = 600
        assert writer(volume / "app.log", count=first, rate=500, max_chunk=4096).wait(120) == 0
        wait_for(lambda: metric(port, "logvold_rotations_total") >= 1, 30, "a rotation")
        follower = _Follower(f"{daemon.base}/logs/default/p/app?follow=true")
        follower.start()
        wait_for(
            lambda: verify(split_raw([bytes(follower.data)], b"\n\n")).seen == first,
            30,
            "the follower caught up",
        )
        # The application restarts with `> app.log`: O_TRUNC, then its new events.
        second = 300
        assert (
            writer(
                volume / "app.log",
                count=second,
                start=first,
                seed=2,
                mode="truncate",
                rate=500,
                max_chunk=4096,
            ).wait(120)
            == 0
        )
        wait_for(
            lambda: verify(split_raw([bytes(follower.data)], b"\n\n")).seen >= first + second,
            30,
            "the new events followed",
        )
        # More rotations of the new generation, and more events: still each once.
        third = 400
        assert (
            writer(
                volume / "app.log",
                count=third,
                start=first + second,
                seed=3,
                rate=500,
                max_chunk=4096,
            ).wait(120)
            == 0
        )
        total = first + second + third
        wait_for(
            lambda: verify(split_raw([bytes(follower.data)], b"\n\n")).seen >= total,
            30,
            "every event followed",
        )
        follower.done.set()
        assert follower.error is None
        _exactly_once(bytes(follower.data), total)
        daemon.stop_ready()
        follower.join(30)
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def test_a_read_without_follow_ends_while_a_step_marker_stays_pending(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    port = free_port()
    cfg = write_config(
        tmp_path / "cfg.yaml",
        volume,
        listen=f"127.0.0.1:{port}",
        policy={"maxSize": "16Ki", "maxFiles": 0, "delimiter": "\n\n"},
    )
    daemon = Served(["--config", str(cfg)], tmp_path / "daemon.log", port)
    try:
        count = 500
        assert writer(volume / "app.log", count=count, rate=500, max_chunk=4096).wait(120) == 0
        wait_for(lambda: metric(port, "logvold_rotations_total") >= 1, 30, "a rotation")
        wait_for(
            lambda: _get(f"{daemon.base}/logs/default/p/app")[1].count(b"E#") == count,
            30,
            "every event served",
        )
        # A step marker left behind (as a crash would): the daemon does not run a step
        # on an idle stream, so it stays pending.
        state_file = volume / ".logvold" / "app.log.state.json"
        tree = json.loads(state_file.read_bytes())
        tree["intent"] = {  # well formed: a forged one is dropped, not pending
            "op": "punch",
            "stem": "app.log.20261130-120000.0001",
            "start": tree["committed_offset"],
            "end": tree["committed_offset"] + 100,
        }
        tmp = state_file.with_name("planted.tmp")
        tmp.write_text(json.dumps(tree))
        tmp.replace(state_file)
        started = time.monotonic()
        code, body = _get(f"{daemon.base}/logs/default/p/app", timeout_s=120)
        assert time.monotonic() - started < 60
        assert code in (200, 503), code
        if code == 200:
            report = verify(split_raw([body], b"\n\n"))
            assert report.ok, report.summary()  # the committed events, each once, whole
        daemon.stop_ready()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    assert stat.S_ISREG((volume / "app.log").stat().st_mode)
