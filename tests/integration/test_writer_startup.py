"""`logvold run` and `logvold driver` start in a few tens of milliseconds because they
import only what they use: never the daemon's server, API client, metrics, watcher or
YAML libraries. Checked on real runs with `python -X importtime` (every module the
process imported, as it ran)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_driver_protocol import Shim, read_stream, shims, spawn_like_shim

__all__ = ["shims"]  # the fixture, imported for the test below

FORBIDDEN = ("aiohttp", "kubernetes", "prometheus_client", "watchdog", "yaml")


def imported(importtime_stderr: bytes) -> set[str]:
    """Top-level package names from `-X importtime` lines (`import time: a | b | name`)."""
    names = set()
    for line in importtime_stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("fmt", ["raw", "cri", "json-file"])
def test_run_imports_no_daemon_library(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "app.log"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "logvold", "run", f"-log-file={log}",
         "-log-file-size=1Ki", f"-format={fmt}", "-compress=gzip", "-max-files=2",
         "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i of twelve words; done"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    names = imported(done.stderr)
    assert "logvold" in names and "subprocess" in names  # the parse saw the real imports
    assert not names & set(FORBIDDEN), sorted(names & set(FORBIDDEN))
    assert b"line 10 of" in b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


def test_driver_imports_no_daemon_library(tmp_path: Path, shims: list[Shim]) -> None:
    shim = spawn_like_shim(
        ["format", "json-file", "log-path", str(tmp_path / "c.log"), "max-size", "1Ki"],
        container_id="c1",
        namespace="default",
        command=(sys.executable, "-X", "importtime", "-m", "logvold", "driver"),
    )
    shims.append(shim)
    shim.wait_ready()
    for i in range(50):
        assert os.write(shim.stdout_w, b"event %d\n" % i) > 0
    code, stderr = shim.delete_task()
    assert code == 0, stderr[-2000:]
    names = imported(stderr.encode())
    assert "logvold" in names
    # json-file's encoder is the C escaper; orjson is imported only where it is not built
    assert "logvold.core._json_lines" in stderr and "orjson" not in names
    assert not names & set(FORBIDDEN), sorted(names & set(FORBIDDEN))
    assert b"event 49" in read_stream(tmp_path / "c.log")[0]
