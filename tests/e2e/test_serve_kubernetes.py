"""`logvold serve` with pod discovery on: streams declared by a pod annotation
(via a loopback API server speaking the real wire format) are rotated by the
daemon like static ones, and leave when the pod goes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from tests.e2e.serve_support import free_port, http_get, metric, running, wait_for
from tests.support.events import event_stream
from tests.support.fake_kube_api import make_pod, running_fake_api

pytestmark = pytest.mark.slow
NODE = "node-a"


def test_annotated_pod_streams_are_rotated_and_removed(tmp_path: Path) -> None:
    kubelet = tmp_path / "kubelet"
    port = free_port()
    with running_fake_api() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.add_pod(make_pod("web", node=NODE, uid="uid-web",
                             annotation="logs:\n  app: {maxSize: 16Ki, subDir: app}\n"))
        directory = kubelet / "pods/uid-web/volumes/kubernetes.io~empty-dir/logs/app"
        directory.mkdir(parents=True)
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(f"server: {{listen: '127.0.0.1:{port}'}}\n"
                       f"kubernetes: {{enabled: true, nodeName: {NODE}, "
                       f"kubeletRoot: {json.dumps(str(kubelet))}, "
                       f"kubeconfig: {json.dumps(str(kubeconfig))}}}\n")
        with running(["--config", str(cfg)], tmp_path / "daemon.log") as daemon:
            wait_for(lambda: metric(port, "logvold_streams") == 1, 10, "the pod's stream")
            (directory / "app.log").write_bytes(b"".join(event_stream(300)))  # ~50 KB
            wait_for(lambda: segments_of("app.log", os.listdir(directory)), 10, "a rotation")
            code, body = http_get(f"http://127.0.0.1:{port}/logs/default/web/app")
            assert code == 200 and body == b"".join(event_stream(300))
            api.delete_pod("uid-web")
            wait_for(lambda: metric(port, "logvold_streams") == 0, 10, "the stream removed")
            assert daemon.stop() == 0
        assert "Traceback" not in daemon.log_text()
