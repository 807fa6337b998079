"""Helpers for tests that run `logvold serve` as a real process with real writers.

The stream is read back independently of logvold's reader: segments oldest
first (decompressed), then the active file from the committed offset in the
state file, so a bug in the reader cannot hide a bug in the rotator/daemon.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from logvold.core.layout import segments_of
from logvold.fileio.state import load_state

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.02,
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def policy_yaml(policy: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in policy.items()) + "}"


def write_config(
    path: Path,
    volume: Path,
    *,
    listen: str,
    policy: dict[str, Any] | None = None,
    extra: str = "",
    rescan: str = "30s",
    containers: list[str] | None = None,
    volume_extra: str = "",
) -> Path:
    """A config with one volume `v` (pod `p`): every *.log, or the named containers."""
    defaults = policy_yaml(policy or {})
    lines = [
        f"server: {{listen: {json.dumps(listen)}}}",
        f"defaults: {defaults}",
        f"rescanInterval: {rescan}",
        "volumes:",
        f"  - name: v\n    pod: p\n    path: {json.dumps(str(volume))}{volume_extra}",
    ]
    if containers:
        lines.append("    containers:")
        lines += [f"      - name: {c}" for c in containers]
    text = "\n".join(lines) + "\n" + extra
    path.write_text(text)
    return path


class Daemon:
    """A `logvold serve` child process with its stderr captured to a file."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "logvold", "serve", *args],
            cwd=cwd,
            stdout=self._log,
            stderr=self._log,
            env=env,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout_s: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            return "logvold serving" in self.log_text()

        wait_for(ready, timeout_s, "the daemon to serve")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def wait(self, timeout_s: float = 60.0) -> int:
        """Wait for the process to exit by itself (e.g. `--once`)."""
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def running(args: list[str], log_path: Path, cwd: Path | None = None) -> Iterator[Daemon]:
    daemon = Daemon(args, log_path, cwd)
    try:
        daemon.wait_serving()
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def http_get(url: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the daemon's /metrics samples named `name` whose labels include `labels`
    (0 when absent): label values exist at 0 from the start, so the first sample of a
    family is not the one that moved."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                total += float(sample.value)
    return total


def read_segment(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        with path.open("rb") as f:
            return zstandard.ZstdDecompressor().stream_reader(f).read()
    return path.read_bytes()


def stream_bytes(directory: Path, base: str) -> tuple[list[bytes], bytes]:
    """(segment contents oldest first, live part of the active file)."""
    segments = [
        read_segment(directory / s.filename) for s in segments_of(base, os.listdir(directory))
    ]
    active = directory / base
    live = b""
    if active.exists():
        data = active.read_bytes()
        state = load_state(directory, base)
        start = 0
        if state is not None:
            st = active.stat()
            if (state.device, state.inode) == (st.st_dev, st.st_ino):
                start = state.physical_committed
        live = data[start:]
    return segments, live


def writer(
    path: Path,
    *,
    count: int,
    rate: float = 0.0,
    mode: str = "append",
    delimiter: str = "\\n\\n",
    max_chunk: int = 8192,
    seed: int = 1,
    start: int = 0,
) -> subprocess.Popen[bytes]:
    """The sequence-numbered event writer (tests/support/writer.py) as a child process."""
    from tests.integration.rotator_kit import start_writer

    return start_writer(
        path,
        mode=mode,
        count=count,
        delimiter=delimiter,
        rate=rate,
        max_chunk=max_chunk,
        seed=seed,
        extra=("--start", str(start)),
    )
