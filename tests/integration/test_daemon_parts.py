"""The daemon's composed parts on their own: the directory locks registry (real flocks on
real directories), the HTTP server holder (a real aiohttp server on 127.0.0.1) and the
config-file watch (a real file). Each is built with only what it needs; the daemon
that wires them is tested in test_daemon_wiring.py and test_directory_lock.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import aiohttp
import pytest

from logvold.core.policy import Config, LogPolicy, ServerConfig, VolumeSpec
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.daemon.config_watch import CONFIG_DEBOUNCE_S, ConfigFileWatch
from logvold.daemon.http_server import HttpServer
from logvold.daemon.locks import StreamDirectoryLocks
from logvold.daemon.logger import LOGGER_NAME
from logvold.fileio.dirlock import DirectoryLocked, lock_directory
from logvold.sources.changes import StreamChanges
from logvold.telemetry.metrics import Metrics
from tests.integration.test_daemon_wiring import until

# -- directory locks -----------------------------------------------------------------------


def _stream(root: Path, directory: Path, container: str = "app") -> StreamInfo:
    return StreamInfo(
        key=StreamKey("team-a", "pod", container),
        directory=directory,
        base="app.log",
        policy=LogPolicy(),
        volume="logs",
        source="kubernetes",
        root=root,
    )


def _refused(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("logvold_unsafe_files_refused_total", {"kind": kind})
    return value or 0.0


def _lock_lines(caplog: pytest.LogCaptureFixture, owner: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == LOGGER_NAME and getattr(r, "owner", None) == owner
    ]


def test_a_stream_directory_has_one_keeper_and_a_drop_hands_it_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER_NAME)
    root = tmp_path / "vol"
    root.mkdir()
    info = _stream(root, root)
    first, second = StreamDirectoryLocks(Metrics()), StreamDirectoryLocks(Metrics())
    assert first.lock_stream(info, root)
    assert first.holds_stream(info.key)
    # Another keeper (another logvold as far as flock is concerned) is refused, and says
    # so once however often the reconcile asks again.
    assert not second.lock_stream(info, root)
    assert not second.lock_stream(info, root)
    assert not second.holds_stream(info.key)
    lines = _lock_lines(caplog, f"stream:{info.key}")
    assert [r.levelname for r in lines] == ["ERROR"]
    assert "managed by another logvold" in lines[0].getMessage()
    first.drop_stream(info.key)
    assert not first.holds_stream(info.key)
    assert second.lock_stream(info, root)
    second.release_all()
    held = lock_directory(root, root)  # nothing left behind
    os.close(held.fd)


def test_a_symlinked_stream_directory_is_refused_and_counted_once(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "evil").symlink_to(elsewhere)
    metrics = Metrics()
    locks = StreamDirectoryLocks(metrics)
    info = _stream(root, root / "evil")
    assert not locks.lock_stream(info, root)
    assert not locks.lock_stream(info, root)
    assert _refused(metrics, "symlink") == 1.0
    assert not (elsewhere / ".logvold").exists()  # nothing created through the link


def test_a_missing_stream_directory_is_managed_and_locked_when_it_appears(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    root.mkdir()
    info = _stream(root, root / "later")
    locks = StreamDirectoryLocks(Metrics())
    assert locks.lock_stream(info, root)  # nothing to rotate yet: managed, not locked
    assert not locks.holds_stream(info.key)
    (root / "later").mkdir()
    assert locks.lock_stream(info, root)
    assert locks.holds_stream(info.key)
    with pytest.raises(DirectoryLocked):
        lock_directory(root, root / "later")
    locks.release_all()


def test_a_volume_held_elsewhere_rejects_the_whole_config_and_leaves_no_lock(
    tmp_path: Path,
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    config = Config(
        volumes=(VolumeSpec(name="one", path=str(one)), VolumeSpec(name="two", path=str(two)))
    )
    other = StreamDirectoryLocks(Metrics())
    assert other.lock_stream(_stream(two, two), two)
    mine = StreamDirectoryLocks(Metrics())
    with pytest.raises(DirectoryLocked):
        mine.lock_volumes(config)
    assert mine.owners() == []  # `one`, taken first, was given back
    other.lock_volumes(Config(volumes=(VolumeSpec(name="one", path=str(one)),)))
    assert sorted(other.owners()) == [f"stream:{_stream(two, two).key}", f"volume:one:{one}"]
    # A config without the volume drops its lock; streams' locks stay.
    other.lock_volumes(Config(volumes=()))
    assert other.owners() == [f"stream:{_stream(two, two).key}"]
    mine.lock_volumes(Config(volumes=(VolumeSpec(name="one", path=str(one)),)))
    assert mine.owners() == [f"volume:one:{one}"]
    mine.release_all()
    other.release_all()


# -- HTTP server holder ----------------------------------------------------------------------


def _server(ready: list[bool]) -> HttpServer:
    return HttpServer(
        StreamRegistry(),
        Metrics(),
        StreamChanges(),
        is_ready=lambda: ready[0],
        is_live=lambda: None,
    )


def _port(server: HttpServer) -> int:
    assert server.runner is not None
    return int(server.runner.addresses[0][1])


async def _status(port: int, path: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status


@pytest.mark.asyncio
async def test_the_server_answers_for_the_daemon_and_closes(tmp_path: Path) -> None:
    ready = [False]
    server = _server(ready)
    await server.start(Config(server=ServerConfig(listen="127.0.0.1:0")))
    port = _port(server)
    try:
        assert await _status(port, "/readyz") == 503
        ready[0] = True
        assert await _status(port, "/readyz") == 200
        assert await _status(port, "/livez") == 200
    finally:
        await server.close()
    assert server.runner is None
    with pytest.raises(aiohttp.ClientConnectionError):
        await _status(port, "/healthz")
    await server.close()  # closing twice is harmless (stop after a failed start)


@pytest.mark.asyncio
async def test_a_restart_onto_a_taken_address_keeps_serving_on_the_old_config(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER_NAME)
    server = _server([True])
    old = Config(server=ServerConfig(listen="127.0.0.1:0"))
    await server.start(old)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        try:
            await server.restart(old, Config(server=ServerConfig(listen=busy)))
            assert await _status(_port(server), "/readyz") == 200
            errors = [r for r in caplog.records if r.levelname == "ERROR"]
            assert [r.getMessage() for r in errors] == [
                "cannot start the HTTP server with the new config; restoring the old listener"
            ]
            assert "address already in use" in str(errors[0].__dict__["error"])
            # A restart onto a free address moves the listener there.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                free = probe.getsockname()[1]
            before = _port(server)
            await server.restart(old, Config(server=ServerConfig(listen=f"127.0.0.1:{free}")))
            assert _port(server) == free
            assert await _status(free, "/readyz") == 200
            with pytest.raises(aiohttp.ClientConnectionError):
                await _status(before, "/healthz")
        finally:
            await server.close()


# -- config file watch -----------------------------------------------------------------------


def test_the_watch_compares_content_not_events(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "logvold.yaml"
    path.parent.mkdir()
    path.write_text("logLevel: info\n")
    watch = ConfigFileWatch(str(path), lambda: None)
    assert watch.directory() == path.parent
    assert not watch.changed()  # before start nothing counts as changed
    assert not watch.is_config(str(path))  # known once read
    watch.remember(watch.read())
    assert watch.is_config(str(path))
    path.write_text("logLevel: info\n")  # rewritten, same content
    assert not watch.changed()
    path.write_text("logLevel: debug\n")
    assert watch.changed()
    watch.remember(watch.read())  # e.g. rejected: not retried while unchanged
    assert not watch.changed()
    path.unlink()  # unreadable content differs from any loaded one
    assert watch.read() == b"" and watch.changed()


def test_without_a_config_file_nothing_is_watched() -> None:
    watch = ConfigFileWatch(None, lambda: None)
    watch.remember(watch.read())
    assert watch.directory() is None and watch.read() is None and not watch.changed()


@pytest.mark.asyncio
async def test_a_burst_of_events_is_one_debounced_check(tmp_path: Path) -> None:
    path = tmp_path / "logvold.yaml"
    path.write_text("a: 1\n")
    calls: list[bytes | None] = []
    watch = ConfigFileWatch(str(path), lambda: calls.append(watch.read()))
    watch.remember(watch.read())
    loop = asyncio.get_running_loop()
    # Unchanged content: the check runs (timers fire in deadline order, so the marker
    # scheduled after it fires after it) and asks for nothing.
    watch.schedule_check(loop)
    marker = loop.create_future()
    loop.call_later(CONFIG_DEBOUNCE_S * 2, marker.set_result, None)
    await marker
    assert calls == []
    # An editor's several writes: checks scheduled during the debounce are one check,
    # which sees the last content.
    for n in range(5):
        path.write_text(f"a: {n + 2}\n")
        watch.schedule_check(loop)
    marker = loop.create_future()
    loop.call_later(CONFIG_DEBOUNCE_S * 2, marker.set_result, None)
    await until(lambda: len(calls) >= 1, 30.0)
    await marker
    assert calls == [watch.read()]
