"""The real `prometheus` binary scrapes a real `logvold serve` doing real work (rotations,
retention, a corrupt state file, a follower that hangs up, a rejected config reload, a pod
with a bad annotation, a reopen that fails) with the SHIPPED rule file loaded, and:

- every expression of the shipped rules (the part before its threshold) and of the
  shipped Grafana dashboard returns data;
- the failure alerts go pending (or firing, where they have no `for`) on the FIRST
  occurrence: their counters existed at 0 before, so `increase()` sees the step;
- a follower's hang-up is a 499, never a 5xx;
- LogvoldDown goes pending once the daemon is gone.

Pods come from the loopback API server of tests/support/fake_kube_api.py (no
kube-apiserver can be installed here; the `kubernetes` client logvold uses is real).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.serve_support import ROOT, free_port, http_get, metric, running, wait_for
from tests.support.fake_kube_api import make_pod, running_fake_api

pytestmark = pytest.mark.slow
NODE = "node-p"
RULES = ROOT / "manifests" / "rules" / "logvold.rules.yaml"
DASHBOARD = ROOT / "manifests" / "grafana-dashboard.json"
FAILURE_ALERTS = ("LogvoldReloadFailures", "LogvoldInvalidPodAnnotation", "LogvoldRotationFailures")


@contextmanager
def _prometheus(tmp_path: Path, target_port: int) -> Iterator[str]:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus is not installed (apt package prometheus)")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "logvold",
                        "honor_labels": True,
                        "scrape_timeout": "1s",
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{target_port}"], "labels": {"node": NODE}}
                        ],
                    }
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={cfg}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return http_get(base + "/-/ready", 2)[0] == 200
            except OSError:  # not listening yet
                return False

        wait_for(ready, 30, "prometheus to be ready", 0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    code, body = http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert code == 200, (expr, body[:500])
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def _alerts(base: str) -> dict[str, str]:
    _, body = http_get(f"{base}/api/v1/alerts")
    return {a["labels"]["alertname"]: a["state"] for a in json.loads(body)["data"]["alerts"]}


def _data_part(expr: str) -> str:
    """An alert's vector before its threshold (`X > 0`, `X == 0 or absent(...)`)."""
    return re.split(r"\s(?:>|==)\s*0(?:\s|$)", expr.strip(), maxsplit=1)[0]


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"].replace("$node", NODE))
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]


def _rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def _hang_up_follower(port: int) -> None:
    """A `kubectl logs -f` that reads a little and leaves."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /logs/default/p/app?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or len(got) < 200:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")


def test_prometheus_scrapes_alerts_and_every_panel_has_data(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    (volume / "app.log").write_bytes(b"")
    (volume / "reopen.log").write_bytes(b"")
    (volume / "old.log").write_bytes(b"x\n" * 10)
    (volume / ".logvold").mkdir()
    (volume / ".logvold" / "old.log.state.json").write_text("{not json")  # an I/O error
    scratch = tmp_path / "scratch"  # a volume without containers: its stream-cap gauge
    scratch.mkdir()
    kubelet = tmp_path / "kubelet"
    port = free_port()
    cfg = tmp_path / "cfg.yaml"
    with running_fake_api() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        good = f"""server: {{listen: '127.0.0.1:{port}'}}
rescanInterval: 1s
defaults: {{maxSize: 4Ki, maxFiles: 2, compress: gzip, delayCompress: false}}
kubernetes: {{enabled: true, nodeName: {NODE}, kubeletRoot: {json.dumps(str(kubelet))},
              kubeconfig: {json.dumps(str(kubeconfig))}}}
volumes:
  - name: v
    pod: p
    path: {json.dumps(str(volume))}
    containers:
      - name: app
      - name: old
      - name: reopen
        policy: {{logs: {{strategy: rename, reopen: {{signal: HUP, pidFile: /nonexistent/x.pid}}}}}}
  - name: scratch
    path: {json.dumps(str(scratch))}
"""
        cfg.write_text(good)
        with running(["--config", str(cfg)], tmp_path / "daemon.log") as daemon:
            wait_for(lambda: metric(port, "logvold_streams") == 3, 60, "three streams")
            with (volume / "app.log").open("ab") as f:  # rotations, gzip, retention
                for i in range(40):
                    f.write(b"event %05d %s\n" % (i, b"y" * 1000))
                    f.flush()
            wait_for(
                lambda: metric(port, "logvold_events_written_total", {"container": "app"}) >= 30,
                30,
                "rotations of app",
            )
            assert metric(port, "logvold_events_split_total", {"container": "app"}) == 0
            with _prometheus(tmp_path, port) as prom:
                # The failure counters were scraped at 0 before anything fails.
                zeros = (
                    'logvold_config_reloads_total{result="error"}',
                    'logvold_watch_errors_total{source="annotation"}',
                    'logvold_rotation_failures_total{container="reopen",error="reopen"}',
                )
                for expr in zeros:

                    def zero_samples(e: str = expr) -> list[dict[str, Any]]:
                        return [r for r in _query(prom, e) if r["value"][1] == "0"]

                    wait_for(
                        zero_samples,
                        30,
                        f"{expr} scraped at 0",
                        0.2,
                    )
                wait_for(
                    lambda: _query(prom, f"count_over_time({zeros[0]}[1m]) >= 2"),
                    30,
                    "two scrapes at 0",
                    0.2,
                )
                _hang_up_follower(port)
                cfg.write_text(good + "bogus: [\n")  # a rejected reload
                daemon.signal(signal.SIGHUP)
                api.add_pod(
                    make_pod(
                        "bad", node=NODE, uid="uid-bad", annotation="logs: [this is not a mapping\n"
                    )
                )
                with (volume / "reopen.log").open("ab") as f:  # rename, then reopen fails
                    f.write(b"r" * 5000 + b"\n")
                pending = wait_for(
                    lambda: (
                        lambda a: (
                            a
                            if all(a.get(n) in ("pending", "firing") for n in FAILURE_ALERTS)
                            else None
                        )
                    )(_alerts(prom)),
                    40,
                    f"{FAILURE_ALERTS} pending",
                    0.3,
                )
                assert pending["LogvoldRotationFailures"] == "pending"  # `for: 15m`
                assert "LogvoldDown" not in pending
                # Everything on the dashboard and under every rule has data.
                wait_for(
                    lambda: _query(prom, 'logvold_http_requests_total{code="499"}'),
                    60,
                    "the hang-up recorded as 499",
                    0.2,
                )
                exprs = [*_dashboard_exprs(), *((a, _data_part(e)) for a, e in _rule_exprs())]
                assert len(exprs) > 35

                def without_data() -> list[str]:
                    return [f"{what}: {expr}" for what, expr in exprs if not _query(prom, expr)]

                try:  # rates need two samples of a series: a few scrapes at most
                    wait_for(lambda: not without_data(), 60, "data for every expression", 0.5)
                except AssertionError:
                    raise AssertionError("no data:\n" + "\n".join(without_data())) from None
                codes = {r["metric"]["code"] for r in _query(prom, "logvold_http_requests_total")}
                assert not {c for c in codes if c.startswith("5")}, codes
                assert _query(prom, "process_resident_memory_bytes") and not _query(
                    prom, '{__name__=~"logvold_.*_created"}'
                )
                daemon.kill()
                wait_for(
                    lambda: _alerts(prom).get("LogvoldDown") == "pending",
                    30,
                    "LogvoldDown pending",
                    0.3,
                )
    assert os.path.exists(volume / "app.log")
