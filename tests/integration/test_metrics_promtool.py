"""Scrape /metrics after real traffic and lint it with the real `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from logvold.core.streams import StreamKey, StreamRegistry
from tests.support.api_server import RunningServer, get
from tests.support.streams import build_stream, make_events


def test_metrics_scrape_is_promtool_clean(tmp_path: Path) -> None:
    registry = StreamRegistry()
    registry.put(
        build_stream(
            tmp_path / "s",
            make_events(50, "cri"),
            fmt="cri",
            layout=(),
            key=StreamKey("default", "web", "app"),
        )
    )
    with RunningServer(registry) as srv:
        for path in (
            "/logs/default/web/app?tailLines=3",
            "/logs/default/web/app?tailLines=x",
            "/logs/default/web/nope",
            "/api/v1/namespaces/default/pods/web/log",
            "/healthz",
            "/no/such/path",
        ):
            get(srv.base + path)
        status, text, headers = get(
            srv.base + "/metrics", headers={"Accept": "text/plain; version=0.0.4"}
        )
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE logvold_http_requests_total counter" in text
    assert b'logvold_http_requests_total{code="404",handler="unmatched"} 1.0' in text
    assert b'logvold_events_served_total{handler="logs"} 3.0' in text
    assert b'logvold_events_served_total{handler="pod_log"} 50.0' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        print("SKIP promtool lint: promtool not installed (apt package `prometheus`)")
        pytest.skip("promtool not installed (apt package `prometheus`; .ci/run installs it)")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
