"""The daemon driven by inotify alone: the full rescan is an hour away and the
followers' fallback timeout is an hour, so every rotation and every delivery below
came from a file event (or a rotator commit), not from polling.

- writes far below maxSize cost no rotator step; crossing it fires one;
- a real writer, the real rotator and three HTTP followers: every event exactly once,
  across many rotations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from logvold.config.serve_settings import ServeOptions
from logvold.core.layout import segments_of
from logvold.core.policy import Config, LogPolicy, ServerConfig, VolumeSpec
from logvold.core.streams import StreamInfo, StreamKey
from logvold.daemon.lifecycle import Daemon
from logvold.daemon.steps import RotatorFactory
from logvold.server import logs as server_logs
from logvold.telemetry.metrics import Metrics
from tests.support.events import split_raw, verify

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600.0


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


@dataclass
class CountingRotator:
    """Counts steps; rotates by remembering the size (no files touched)."""

    info: StreamInfo
    calls: list[str] = field(default_factory=list)
    committed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _size(self) -> int:
        try:
            return os.lstat(self.info.active_path).st_size
        except FileNotFoundError:
            return 0

    def _note(self, call: str) -> None:
        with self.lock:
            self.calls.append(call)

    def recover(self) -> None:
        self._note("recover")

    def needs_rotation(self) -> str | None:
        self._note("needs_rotation")
        live = self._size() - self.committed
        return "size" if live >= self.info.policy.max_size_bytes > 0 else None

    def rotate(self, reason: str) -> object | None:
        self._note(f"rotate:{reason}")
        self.committed = self._size()
        return object()

    def enforce_retention(self, *, extra_budget_bytes: int | None = None) -> None:
        self._note("retention")

    def compress_pending(self, extra_budget_bytes: int | None = None) -> None:
        self._note("compress")


@contextlib.asynccontextmanager
async def daemon_for(
    config: Config, factory: RotatorFactory | None = None
) -> AsyncIterator[Daemon]:
    daemon = Daemon(
        config, ServeOptions(serve_http=True), metrics=Metrics(), rotator_factory=factory
    )
    await daemon.start()
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.request_stop()
        code = await task
        await daemon.stop()
        assert code == 0


def _config(vol: Path, **policy: object) -> Config:
    return Config(
        server=ServerConfig(listen="127.0.0.1:0"),
        volumes=(VolumeSpec(name="v", path=str(vol)),),
        defaults=LogPolicy(**policy),  # type: ignore[arg-type]
        rescan_interval_s=HOUR,
    )


@pytest.mark.asyncio
async def test_writes_below_max_size_cost_no_step_and_crossing_it_fires_one(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    active = vol / "a.log"
    active.write_bytes(b"")
    key = StreamKey("default", "v", "a")
    rotators: list[CountingRotator] = []

    def factory(
        info: StreamInfo, metrics: Metrics | None, clock: Callable[[], datetime]
    ) -> CountingRotator:
        rotators.append(CountingRotator(info))
        return rotators[-1]

    async with daemon_for(_config(vol, max_size_bytes=64 * 1024), factory) as daemon:
        await until(lambda: bool(rotators) and "needs_rotation" in rotators[0].calls)
        await daemon.wait_idle()
        rot = rotators[0]
        steps_before = rot.calls.count("needs_rotation")
        with active.open("ab") as f:
            for n in range(100):  # 100 writes, ~2 KiB in all: far below 64 KiB
                seen = daemon.changes.version(key)
                f.write(b"line %05d\n" % n)
                f.flush()

                # Each write's inotify event reached the daemon (it bumps the version).
                def bumped(seen: int = seen) -> bool:
                    return daemon.changes.version(key) != seen

                await until(bumped)
        await daemon.wait_idle()
        assert rot.calls.count("needs_rotation") == steps_before
        # Crossing maxSize: the write's event is enough (the rescan is an hour away).
        with active.open("ab") as f:
            f.write(b"x" * 64 * 1024 + b"\n")
        await until(lambda: "rotate:size" in rot.calls)


async def _follow(url: str, n: int) -> bytes:
    data = bytearray()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s,
        s.get(url) as r,
    ):
        assert r.status == 200
        async for chunk in r.content.iter_any():
            data += chunk
            if data.count(b"\n") >= n:
                break
    return bytes(data)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_followers_woken_by_events_get_every_event_once_across_rotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The follower's safety-net timeout is an hour: only change notices can wake it.
    monkeypatch.setattr(server_logs, "FALLBACK_S", HOUR)
    events = 6000
    vol = tmp_path / "vol"
    vol.mkdir()
    active = vol / "app.log"
    active.write_bytes(b"")

    async def main() -> tuple[list[bytes], int]:
        config = _config(
            vol, max_size_bytes=32 * 1024, max_files=0, compress="gzip", delay_compress=False
        )
        async with daemon_for(config) as daemon:
            assert daemon._runner is not None
            port = daemon._runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}/logs/default/v/app?follow=true"
            followers = [asyncio.create_task(_follow(url, events)) for _ in range(3)]
            await until(lambda: daemon.changes.waiting() == 3)
            writer = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.writer",
                "--path",
                str(active),
                "--mode",
                "append",
                "--count",
                str(events),
                "--rate",
                "1000",
                "--max-chunk",
                "2048",
                cwd=ROOT,
            )
            assert await writer.wait() == 0
            bodies = await asyncio.wait_for(asyncio.gather(*followers), 120)
            segments = segments_of("app.log", os.listdir(vol))
            return list(bodies), len(segments)

    bodies, segments = await main()
    # Rotations happened on size triggers from events alone (~1 MiB at 32 KiB each).
    assert segments >= 5, segments
    for body in bodies:
        report = verify(list(split_raw([body]))[:events])
        assert report.ok and report.seen == events, report.summary()
