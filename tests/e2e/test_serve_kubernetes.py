"""`logvold serve` with pod discovery on: streams declared by a pod annotation
(via a loopback API server speaking the real wire format; no kube-apiserver can
be installed here, the `kubernetes` client is real) are rotated by the daemon
like static ones, read back whole by `logvold logs` and the real kubectl, and
finalised when the pod goes: a last rotation, still served (marked terminated)
until the kubelet deletes the emptyDir, then removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from logvold.fileio.state import load_state
from tests.e2e.serve_support import ROOT, free_port, http_get, metric, running, wait_for, writer
from tests.support.events import split_raw, verify
from tests.support.fake_kube_api import make_pod, running_fake_api

pytestmark = pytest.mark.slow
NODE = "node-a"
KUBECTL = Path(sys.executable).parent / "kubectl"
COUNT = 600
MAX_SIZE = 16 * 1024  # the pod's maxSize: 16Ki


def _logvold_logs(port: int) -> bytes:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "logvold",
            "logs",
            "default/web/app",
            "--url",
            f"http://127.0.0.1:{port}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
        cwd=ROOT,
    ).stdout


def _kubectl_logs(port: int) -> bytes:
    return subprocess.run(
        [str(KUBECTL), "--server", f"http://127.0.0.1:{port}", "logs", "web", "-c", "app"],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout


def _live_bytes(directory: Path, after_s: float = 0.0) -> int:
    """Bytes of the active file not yet cut into segments (logical size - committed)."""
    time.sleep(after_s)
    state = load_state(directory, "app.log")
    size = (directory / "app.log").stat().st_size
    if state is None:
        return size
    return size + state.collapsed_bytes - state.committed_offset


def _listing(port: int) -> list[dict[str, object]]:
    code, body = http_get(f"http://127.0.0.1:{port}/logs/")
    assert code == 200
    items: list[dict[str, object]] = json.loads(body)["items"]
    return items


def test_annotated_pod_streams_are_rotated_served_and_finalised(tmp_path: Path) -> None:
    kubelet = tmp_path / "kubelet"
    port = free_port()
    with running_fake_api() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.add_pod(
            make_pod(
                "web",
                node=NODE,
                uid="uid-web",
                annotation="logs:\n  app: {maxSize: 16Ki, maxFiles: 0, "
                "delimiter: '\\n\\n', subDir: app}\n",
            )
        )
        pod_dir = kubelet / "pods/uid-web"
        directory = pod_dir / "volumes/kubernetes.io~empty-dir/logs/app"
        directory.mkdir(parents=True)
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(
            f"server: {{listen: '127.0.0.1:{port}'}}\n"
            "rescanInterval: 1s\n"
            f"kubernetes: {{enabled: true, nodeName: {NODE}, "
            f"kubeletRoot: {json.dumps(str(kubelet))}, "
            f"kubeconfig: {json.dumps(str(kubeconfig))}}}\n"
        )
        with running(["--config", str(cfg)], tmp_path / "daemon.log") as daemon:
            wait_for(lambda: metric(port, "logvold_streams") == 1, 60, "the pod's stream")
            proc = writer(directory / "app.log", count=COUNT, rate=400, max_chunk=4096)
            assert proc.wait(60) == 0
            wait_for(
                lambda: segments_of("app.log", os.listdir(directory)),
                60,
                "rotations by the pod's policy",
            )
            for read in (_logvold_logs, _kubectl_logs):
                report = verify(split_raw([read(port)], b"\n\n"), expected=range(COUNT))
                assert report.ok and report.seen == COUNT, (read.__name__, report.summary())

            # A tail below maxSize: only the final rotation puts it in a segment.
            assert writer(directory / "app.log", count=20, start=COUNT, seed=2).wait(60) == 0
            wait_for(
                lambda: verify(split_raw([_logvold_logs(port)], b"\n\n")).seen == COUNT + 20,
                60,
                "the tail served",
            )

            # Whatever a size rotation did not take is what the final rotation must cut:
            # settled = below maxSize (no size rotation can still come) and unchanged, with
            # the rotation count, over a second. Generous deadlines: the CPUs may be busy.
            def snapshot() -> tuple[int, float, int]:
                return (
                    _live_bytes(directory),
                    metric(port, "logvold_rotations_total"),
                    len(segments_of("app.log", os.listdir(directory))),
                )

            def settled() -> bool:
                before = snapshot()
                return before[0] < MAX_SIZE and before == (
                    _live_bytes(directory, after_s=1.0),
                    *snapshot()[1:],
                )

            wait_for(settled, 60, "the daemon to settle")
            live_before, _, segments_before = snapshot()
            api.delete_pod("uid-web")
            wait_for(
                lambda: any(i["source"] == "kubernetes-terminated" for i in _listing(port)),
                60,
                "the stream marked terminated",
            )
            # The last rotation leaves no whole event behind in the active file; its segment
            # and its count follow the state file's commit, so poll them too.
            new_segments = 1 if live_before else 0
            wait_for(lambda: _live_bytes(directory) == 0, 60, "the final rotation")
            wait_for(
                lambda: (
                    metric(port, "logvold_rotations_total", {"reason": "final"}) == new_segments
                ),
                60,
                "the final rotation counted",
            )
            wait_for(
                lambda: (
                    len(segments_of("app.log", os.listdir(directory)))
                    == segments_before + new_segments
                ),
                60,
                "the final segment listed",
            )
            report = verify(split_raw([_logvold_logs(port)], b"\n\n"), expected=range(COUNT + 20))
            assert report.ok and report.seen == COUNT + 20, report.summary()
            [item] = _listing(port)
            assert "logvold.io/terminated" in item["annotations"]  # type: ignore[operator]

            shutil.rmtree(pod_dir)  # what the kubelet does with the pod's emptyDirs
            wait_for(lambda: metric(port, "logvold_streams") == 0, 60, "the stream removed")
            assert _listing(port) == []
            # ... and so are its series (a node's series count follows its pods).
            _, scrape = http_get(f"http://127.0.0.1:{port}/metrics")
            assert b'pod="web"' not in scrape
            assert daemon.stop() == 0
        assert "Traceback" not in daemon.log_text()
