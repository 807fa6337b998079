"""The daemon in-process with a fake rotator and a real watchdog observer: hints,
runtime discovery, reloads, task failure, unsafe files. The real rotator is
exercised by the e2e tests; here we check what the daemon decides and when."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest

from logvold.config.serve_settings import ServeOptions
from logvold.core.policy import Config, LogPolicy, VolumeSpec
from logvold.core.streams import StreamInfo, StreamKey
from logvold.daemon.lifecycle import Daemon
from logvold.daemon.steps import StepRequest
from logvold.errors import ConfigError, ConfigProblem
from logvold.telemetry.metrics import Metrics


@dataclass
class FakeRotator:
    info: StreamInfo
    calls: list[str] = field(default_factory=list)
    committed: int = 0

    def _size(self) -> int:
        try:
            return os.lstat(self.info.active_path).st_size
        except FileNotFoundError:
            return 0

    def recover(self) -> None:
        self.calls.append("recover")

    def needs_rotation(self) -> str | None:
        self.calls.append("needs_rotation")
        live = self._size() - self.committed
        return "size" if live >= self.info.policy.max_size_bytes > 0 else None

    def rotate(self, reason: str) -> object | None:
        self.calls.append(f"rotate:{reason}")
        size = self._size()
        if size <= self.committed:
            return None
        self.committed = size
        return object()

    def enforce_retention(self, *, extra_budget_bytes: int | None = None) -> None:
        self.calls.append(f"retention:{extra_budget_bytes}")

    def compress_pending(self, extra_budget_bytes: int | None = None) -> None:
        self.calls.append("compress")


class Fakes:
    def __init__(self) -> None:
        self.rotators: dict[StreamKey, FakeRotator] = {}
        self.lock = threading.Lock()

    def factory(
        self, info: StreamInfo, metrics: Metrics | None, clock: Callable[[], datetime]
    ) -> FakeRotator:
        with self.lock:
            rot = self.rotators[info.key] = FakeRotator(info)
            return rot

    def calls(self, container: str) -> list[str]:
        with self.lock:
            rot = self.rotators.get(StreamKey("default", "v", container))
            return list(rot.calls) if rot else []


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> float:
    """Poll `predicate`; return the seconds it took, fail after `timeout_s`.

    The default deadline is generous for a loaded machine, yet half the daemon's 60 s rescan
    interval: what happens within it came from an inotify hint, not from a rescan."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@dataclass
class Running:
    daemon: Daemon
    fakes: Fakes
    vol: Path
    configs: list[Config | ConfigError]
    task: asyncio.Task[int]


def config_for(vol: Path, **policy: Any) -> Config:
    return Config(
        volumes=(VolumeSpec(name="v", path=str(vol)),),
        defaults=LogPolicy(**policy),
        rescan_interval_s=60.0,
    )


@contextlib.asynccontextmanager
async def running_daemon(tmp_path: Path) -> AsyncIterator[Running]:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "a.log").write_bytes(b"")
    fakes = Fakes()
    configs: list[Config | ConfigError] = []
    base = config_for(vol, max_size_bytes=1000)

    def load(_: ServeOptions) -> Config:
        item = configs.pop(0)
        if isinstance(item, ConfigError):
            raise item
        return item

    daemon = Daemon(
        base,
        ServeOptions(serve_http=False, config_path=None),
        metrics=Metrics(),
        rotator_factory=fakes.factory,
        load_config=load,
    )
    await daemon.start()
    task = asyncio.create_task(daemon.run())
    yield Running(daemon, fakes, vol, configs, task)
    daemon.request_stop()
    code = await task
    await daemon.stop()
    assert code == 0


async def _test_size_trigger_fires_within_a_second_of_the_write(running: Running) -> None:
    await until(lambda: "recover" in running.fakes.calls("a"))
    assert running.fakes.calls("a")[:2] == ["recover", "needs_rotation"]
    with (running.vol / "a.log").open("ab") as f:
        f.write(b"x" * 999 + b"\n")
    # Within until()'s deadline, well before the 60 s rescan: the write's hint triggered it.
    await until(lambda: "rotate:size" in running.fakes.calls("a"))
    # After the rotation, retention ran in the same step (no budget configured).
    calls = running.fakes.calls("a")
    assert calls[calls.index("rotate:size") + 1] == "retention:None"


@pytest.mark.asyncio
async def test_size_trigger_fires_within_a_second_of_the_write(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as running:
        await _test_size_trigger_fires_within_a_second_of_the_write(running)


async def _test_idle_streams_are_not_polled(running: Running) -> None:
    await until(lambda: "needs_rotation" in running.fakes.calls("a"))
    await running.daemon.wait_idle()
    before = len(running.fakes.calls("a"))
    await asyncio.sleep(1.0)  # a window in which nothing is written
    assert len(running.fakes.calls("a")) == before


@pytest.mark.asyncio
async def test_idle_streams_are_not_polled(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as running:
        await _test_idle_streams_are_not_polled(running)


async def _test_new_and_removed_files_are_discovered_without_waiting_for_rescan(
    running: Running,
) -> None:
    registry = running.daemon.registry
    (running.vol / "b.log").write_bytes(b"hello\n")
    # rescan interval is 60 s, until() gives up at 30 s: this came from the inotify hint
    await until(lambda: registry.get(StreamKey("default", "v", "b")) is not None)
    await until(lambda: "recover" in running.fakes.calls("b"))
    (running.vol / "b.log").unlink()
    await until(lambda: registry.get(StreamKey("default", "v", "b")) is None)
    assert running.daemon.metrics.registry.get_sample_value("logvold_streams") == 1


@pytest.mark.asyncio
async def test_new_and_removed_files_are_discovered_without_waiting_for_rescan(
    tmp_path: Path,
) -> None:
    async with running_daemon(tmp_path) as running:
        await _test_new_and_removed_files_are_discovered_without_waiting_for_rescan(running)


async def _test_reload_applies_valid_and_rejects_invalid(running: Running) -> None:
    daemon = running.daemon
    running.configs.append(
        ConfigError([ConfigProblem("cfg.yaml", 7, "defaults.maxSize", "not a size")])
    )
    assert not await daemon.reload()
    assert daemon.config.defaults.max_size_bytes == 1000
    assert (
        daemon.metrics.registry.get_sample_value(
            "logvold_config_reloads_total", {"result": "error"}
        )
        == 1
    )
    running.configs.append(config_for(running.vol, max_size_bytes=10))
    assert await daemon.reload()
    info = daemon.registry.get(StreamKey("default", "v", "a"))
    assert info is not None and info.policy.max_size_bytes == 10
    # The new policy takes effect: 10 bytes now trigger a rotation.
    with (running.vol / "a.log").open("ab") as f:
        f.write(b"0123456789\n")
    await until(lambda: "rotate:size" in running.fakes.calls("a"))
    assert (
        daemon.metrics.registry.get_sample_value(
            "logvold_config_reloads_total", {"result": "success"}
        )
        == 1
    )


@pytest.mark.asyncio
async def test_reload_applies_valid_and_rejects_invalid(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as running:
        await _test_reload_applies_valid_and_rejects_invalid(running)


async def _test_symlink_in_place_of_active_file_is_never_followed(
    running: Running, tmp_path: Path
) -> None:
    await until(lambda: "recover" in running.fakes.calls("a"))
    await running.daemon.wait_idle()
    outside = tmp_path / "outside.log"
    outside.write_bytes(b"y" * 5000)
    (running.vol / "a.log").unlink()
    (running.vol / "a.log").symlink_to(outside)
    key = StreamKey("default", "v", "a")
    assert running.daemon.workers is not None
    calls_before = len(running.fakes.calls("a"))
    running.daemon.workers.submit(key, StepRequest(check=True, retention=True))
    await running.daemon.wait_idle()
    assert len(running.fakes.calls("a")) == calls_before  # the rotator was not called
    assert (
        running.daemon.metrics.registry.get_sample_value(
            "logvold_rotation_failures_total",
            {"namespace": "default", "pod": "v", "container": "a", "error": "unsafe"},
        )
        == 1
    )
    assert outside.read_bytes() == b"y" * 5000


@pytest.mark.asyncio
async def test_symlink_in_place_of_active_file_is_never_followed(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as running:
        await _test_symlink_in_place_of_active_file_is_never_followed(running, tmp_path)


@pytest.mark.asyncio
async def test_budget_share_reaches_retention(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    for name, size in (("old", 600), ("new", 600)):
        (vol / f"{name}.log").write_bytes(b"z" * (size - 1) + b"\n")
    (vol / "old.log.20261123-100000").write_bytes(b"q" * 400)
    fakes = Fakes()
    config = replace(
        config_for(vol, max_size_bytes=0),
        volumes=(VolumeSpec(name="v", path=str(vol), max_total_size_bytes=1000),),
    )
    daemon = Daemon(config, ServeOptions(serve_http=False), rotator_factory=fakes.factory)
    await daemon.start(watch=False)
    await daemon.wait_idle()
    await daemon.stop()
    # Both active files (600 each, newest) share 1000 bytes; the old segment gets nothing.
    shares = {c: [x for x in fakes.calls(c) if x.startswith("retention:")] for c in ("old", "new")}
    assert shares == {"old": ["retention:400"], "new": ["retention:600"]} or shares == {
        "old": ["retention:600"],
        "new": ["retention:400"],
    }


@pytest.mark.asyncio
async def test_a_dying_task_stops_the_daemon_with_exit_1(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    daemon = Daemon(
        config_for(vol), ServeOptions(serve_http=False), rotator_factory=Fakes().factory
    )
    await daemon.start(watch=False)

    def boom() -> NoReturn:
        raise RuntimeError("scheduler bug")

    daemon.scheduler.due = boom  # type: ignore[method-assign]
    code = await asyncio.wait_for(daemon.run(), timeout=5)
    await daemon.stop()
    assert code == 1
