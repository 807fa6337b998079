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


# What a raw `logvold run` with a size trigger and no retention leaves out besides the
# daemon's libraries: the line encoders, the config model, the retention planner and
# the standard modules only they need. Measured with -S (no site: an editable install's
# finder imports pathlib and re itself), from the source tree.
RAW_RUN_FORBIDDEN = (
    "logging",
    "pathlib",
    "zoneinfo",
    "decimal",
    "json",
    "logvold.core.policy",
    "logvold.core.formats",
    "logvold.core.framing",
    "logvold.core.chunk_encoding",
    "logvold.core.retention",
    "logvold.fileio.compress",
)


def imported_modules(importtime_stderr: bytes) -> set[str]:
    """Full module names from `-X importtime` lines."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.decode(errors="replace").splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_raw_run_imports_only_the_raw_writer(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-m", "logvold", "run", f"-log-file={log}",
         "-log-file-size=1Ki", "sh", "-c", "for i in $(seq 300); do echo line $i; done"],
        capture_output=True, timeout=60, cwd=repo,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    names = imported_modules(done.stderr)
    # the parse saw the real imports: the writer and its raw framer were loaded
    assert {"logvold.fileio.rotating_writer", "logvold.core.raw_framing"} <= names
    assert not names & set(RAW_RUN_FORBIDDEN), sorted(names & set(RAW_RUN_FORBIDDEN))
    assert not {n.split(".")[0] for n in names} & set(FORBIDDEN)
    pieces = [p.read_bytes() for p in tmp_path.iterdir() if p.is_file()]
    assert len(pieces) > 1 and b"line 300\n" in b"".join(pieces)


def test_run_without_a_log_file_imports_no_writer(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-m", "logvold", "run", "true"],
        capture_output=True, timeout=60, cwd=repo,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    names = imported_modules(done.stderr)
    assert "logvold.runner.process" in names
    assert "logvold.fileio.rotating_writer" not in names
    assert not names & set(RAW_RUN_FORBIDDEN), sorted(names & set(RAW_RUN_FORBIDDEN))
