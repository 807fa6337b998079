"""The daemon's stream parts on their own, on real files: ManagedStreams (registry changes
-> locked, stepped, indexed streams; a gone pod's streams finalised), the Reconciler
(scan, survey, passes on request) and FileHints (a real inotify watcher). They are wired
here with only what they need, as Daemon.__init__ wires them; the real StreamRotator runs
the steps (files stay below maxSize: nothing here rotates, the rotator's event integrity
is tested with it in tests/integration/test_rotator*.py)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from logvold.core.clock import utcnow
from logvold.core.policy import Config, LogPolicy, VolumeSpec
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.daemon.activity import ActivityLog
from logvold.daemon.config_watch import ConfigFileWatch
from logvold.daemon.hints import FileHints
from logvold.daemon.locks import StreamDirectoryLocks
from logvold.daemon.reconcile import Reconciler
from logvold.daemon.scheduler import TriggerScheduler
from logvold.daemon.steps import Rotator
from logvold.daemon.streams import TERMINATED_SUFFIX, ManagedStreams
from logvold.daemon.workers import StreamWorkers
from logvold.fileio.rotator import StreamRotator
from logvold.sources.changes import StreamChanges
from logvold.sources.static import StaticSource
from logvold.telemetry.metrics import Metrics
from tests.integration.test_daemon_wiring import until

DEADLINE_S = 30.0  # generous: the machine may be loaded


def _rotator(info: StreamInfo, metrics: Metrics | None, clock: Callable[[], datetime]) -> Rotator:
    return StreamRotator(info, metrics, clock)


@dataclass
class Parts:
    """The parts as the daemon wires them, with what they ask of it recorded."""

    config: Config
    config_file: Path
    registry: StreamRegistry = field(default_factory=StreamRegistry)
    metrics: Metrics = field(default_factory=Metrics)
    rescans: list[bool] = field(default_factory=list)
    volume_rescans: list[set[str]] = field(default_factory=list)
    reloads: list[bool] = field(default_factory=list)
    refreshes: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.source = StaticSource(self.registry, self.metrics)
        self.locks = StreamDirectoryLocks(self.metrics)
        self.scheduler: TriggerScheduler[StreamKey] = TriggerScheduler(utcnow, time.monotonic)
        self.changes = StreamChanges()
        self.activity = ActivityLog(logging.getLogger("test"))
        self.config_watch = ConfigFileWatch(
            str(self.config_file), lambda: self.reloads.append(True)
        )
        self.streams = ManagedStreams(
            self.registry,
            self.source,
            self.locks,
            self.scheduler,
            self.changes,
            self.metrics,
            self.activity,
            clock=utcnow,
            config=lambda: self.config,
            stopping=self.stop.is_set,
            request_rescan=self.rescans.append,
        )
        self.hints = FileHints(
            self.source,
            self.streams,
            self.scheduler,
            self.changes,
            self.config_watch,
            self.metrics,
            config=lambda: self.config,
            wake=lambda: None,
            rescan=lambda volumes: self.volume_rescans.append(set(volumes)),
            rescan_all=lambda: None,
        )
        self.reconciler = Reconciler(
            self.source,
            self.streams,
            self.metrics,
            self.activity,
            clock=utcnow,
            config=lambda: self.config,
            refresh_watches=self._refresh,
        )

    def _refresh(self) -> None:
        self.refreshes += 1
        self.hints.refresh_watches()

    def managed(self) -> set[str]:
        return {str(k) for k in self.workers}

    async def start(self, *, watch: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.workers = StreamWorkers(loop, _rotator, self.metrics, utcnow)
        self.streams.attach(loop, self.workers)
        self.reconciler.attach(self.workers)
        self.hints.start(loop, self.workers, watch=watch)
        self.registry.subscribe(self.streams.listener)
        self.source.set_config(self.config)
        self.config_watch.remember(self.config_watch.read())


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    path = tmp_path / "vol"
    path.mkdir()
    (path / "a.log").write_bytes(b"one\ntwo\n")
    return path


def _parts(tmp_path: Path, vol: Path, budget_bytes: int = 0) -> Parts:
    config_file = tmp_path / "conf" / "logvold.yaml"
    config_file.parent.mkdir()
    config_file.write_text("# the content does not matter here\n")
    config = Config(
        volumes=(VolumeSpec(name="v", path=str(vol), max_total_size_bytes=budget_bytes),),
        rescan_interval_s=60,
    )
    return Parts(config, config_file)


async def _close(parts: Parts) -> None:
    parts.hints.stop()
    await parts.workers.close()
    parts.locks.release_all()


@pytest.mark.asyncio
async def test_a_full_pass_manages_what_is_on_disk_and_drops_what_went(
    tmp_path: Path, vol: Path
) -> None:
    parts = _parts(tmp_path, vol)
    await parts.start()
    key = StreamKey("default", "v", "a")
    try:
        await parts.reconciler.reconcile(full=True)
        await until(lambda: parts.managed() == {str(key)}, DEADLINE_S)
        assert parts.streams.active_paths == {str(vol / "a.log"): key}
        assert parts.locks.holds_stream(key)
        assert parts.reconciler.passes == 1 and parts.reconciler.running_since is None
        assert parts.refreshes == 1
        assert parts.metrics.registry.get_sample_value("logvold_streams") == 1.0
        # A pass on request (a hint named the volume) sees a new file.
        (vol / "b.log").write_bytes(b"three\n")
        loop_task = asyncio.create_task(parts.reconciler.run(parts.stop, lambda: None))
        parts.reconciler.request(["v"])
        await until(lambda: "default/v/b" in parts.managed(), DEADLINE_S)
        parts.stop.set()
        parts.reconciler.request()  # wakes the loop to see the stop
        await asyncio.wait_for(loop_task, DEADLINE_S)
        # A full pass sees a file gone: its stream, lock and index entry go too.
        (vol / "a.log").unlink()
        await parts.reconciler.reconcile(full=True)
        await until(lambda: parts.managed() == {"default/v/b"}, DEADLINE_S)
        assert not parts.locks.holds_stream(key)
        assert str(vol / "a.log") not in parts.streams.active_paths
    finally:
        await _close(parts)


@pytest.mark.asyncio
async def test_a_gone_pods_stream_is_served_until_its_directory_goes(
    tmp_path: Path, vol: Path
) -> None:
    parts = _parts(tmp_path, vol)
    await parts.start()
    pod_volume = tmp_path / "pods" / "uid" / "logs"
    pod_volume.mkdir(parents=True)
    (pod_volume / "app.log").write_bytes(b"last words\n")
    info = StreamInfo(
        key=StreamKey("team-a", "pod", "app"),
        directory=pod_volume,
        base="app.log",
        policy=LogPolicy(),
        volume="logs",
        source="kubernetes",
        root=pod_volume,
    )
    try:
        parts.registry.put(info)
        await until(lambda: parts.managed() == {"team-a/pod/app"}, DEADLINE_S)
        assert parts.rescans == [False]  # watch its directory soon
        parts.registry.remove(info.key)
        await until(
            lambda: (
                (i := parts.registry.get(info.key)) is not None
                and i.source == "kubernetes" + TERMINATED_SUFFIX
            ),
            DEADLINE_S,
        )
        terminated = parts.registry.get(info.key)
        assert terminated is not None and "logvold.io/terminated" in terminated.annotations
        assert "team-a/pod/app" in parts.managed()  # still served
        parts.streams.expire_terminated()  # maxAge unlimited, directory there: kept
        assert parts.registry.get(info.key) is not None
        await parts.workers.drain()
        shutil.rmtree(pod_volume)
        parts.streams.expire_terminated()
        assert parts.registry.get(info.key) is None
        await until(lambda: parts.managed() == set(), DEADLINE_S)
        assert not parts.locks.holds_stream(info.key)
    finally:
        await _close(parts)


@pytest.mark.asyncio
async def test_a_stream_under_a_budget_waits_for_its_share(tmp_path: Path, vol: Path) -> None:
    parts = _parts(tmp_path, vol, budget_bytes=1 << 20)
    await parts.start()
    try:
        parts.source.scan(None)  # on this thread: the listener hands changes to the loop
        await until(lambda: parts.managed() == {"default/v/a"}, DEADLINE_S)
        assert parts.rescans == [True]  # a pass with budget shares, soon
        assert parts.streams.take_unstarted() == {StreamKey("default", "v", "a")}
        assert parts.streams.take_unstarted() == set()
    finally:
        await _close(parts)


@pytest.mark.asyncio
async def test_hints_ask_for_a_volume_rescan_and_a_config_check(tmp_path: Path, vol: Path) -> None:
    parts = _parts(tmp_path, vol)
    await parts.start(watch=True)
    try:
        await parts.reconciler.reconcile(full=True)  # watches the volume and config dirs
        assert parts.hints.watcher is not None
        (vol / "new.log").write_bytes(b"x\n")
        await until(lambda: {"v"} in parts.volume_rescans, DEADLINE_S)
        parts.config_file.write_text("# changed\n")
        await until(lambda: parts.reloads == [True], DEADLINE_S)
    finally:
        await _close(parts)
