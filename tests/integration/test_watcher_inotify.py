"""The watcher with real inotify: one instance and no thread however many directories
are watched, hints handed over in batches on the loop, deleted and symlinked
directories, and a queue overflow reported (the daemon then rescans everything)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from logvold.sources.watcher import DirectoryWatcher, Hint


def _recording_watcher(
    loop: asyncio.AbstractEventLoop,
) -> tuple[DirectoryWatcher, list[Hint], list[BaseException]]:
    hints: list[Hint] = []
    errors: list[BaseException] = []
    watcher = DirectoryWatcher(loop, hints.append, on_error=lambda path, exc: errors.append(exc))
    watcher.start()
    return watcher, hints, errors


async def _until(predicate: object, timeout_s: float = 20.0) -> bool:
    assert callable(predicate)
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def _inotify_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.asyncio
async def test_500_directories_one_instance_no_thread(tmp_path: Path) -> None:
    dirs = [tmp_path / f"pod{i:03d}" for i in range(500)]
    for d in dirs:
        d.mkdir()
    threads_before = threading.active_count()
    inotify_before = _inotify_fds()
    watcher, hints, errors = _recording_watcher(asyncio.get_running_loop())
    try:
        assert watcher.set_directories(dirs) == {}
        assert len(watcher.directories) == 500
        assert threading.active_count() == threads_before
        assert _inotify_fds() == inotify_before + 1
        chosen = dirs[::25]
        for d in chosen:
            (d / "app.log").write_bytes(b"created\n")
        for d in chosen:
            with (d / "app.log").open("ab") as f:
                f.write(b"appended\n")
        wanted = {Hint("modified", f"{d}/app.log") for d in chosen} | {
            Hint("changed", f"{d}/app.log") for d in chosen
        }
        assert await _until(lambda: wanted <= set(hints)), sorted(wanted - set(hints), key=str)[:3]
        assert threading.active_count() == threads_before
        assert errors == []
        # Fewer directories: the others are no longer watched.
        assert watcher.set_directories(dirs[:10]) == {}
        assert watcher.directories == sorted(str(d) for d in dirs[:10])
        hints.clear()
        (dirs[400] / "late.log").write_bytes(b"x\n")
        (dirs[5] / "kept.log").write_bytes(b"x\n")
        assert await _until(lambda: Hint("changed", f"{dirs[5]}/kept.log") in hints)
        assert not any("late.log" in h.path for h in hints)
    finally:
        watcher.stop()
    assert _inotify_fds() == inotify_before


@pytest.mark.asyncio
async def test_writes_queued_together_arrive_as_one_batch_one_hint_per_file(tmp_path: Path) -> None:
    watcher, hints, _ = _recording_watcher(asyncio.get_running_loop())
    try:
        files = [tmp_path / f"s{i}.log" for i in range(10)]
        for f in files:
            f.write_bytes(b"")
        assert watcher.set_directories([tmp_path]) == {}
        # The loop cannot run while these 1,000 writes happen: all of them are queued
        # in the kernel when the watcher reads, so they make one batch.
        fds = [os.open(f, os.O_WRONLY | os.O_APPEND) for f in files]
        try:
            for n in range(1000):
                os.write(fds[n % 10], b"line\n")
        finally:
            for fd in fds:
                os.close(fd)
        assert await _until(lambda: len(hints) >= 10)
        await asyncio.sleep(0.1)  # let any straggling batch in, to count it
        assert sorted(h.path for h in hints) == sorted(str(f) for f in files)
        assert {h.kind for h in hints} == {"modified"}
        assert watcher.batches == 1
    finally:
        watcher.stop()


@pytest.mark.asyncio
async def test_deleted_directory_is_dropped_and_watched_again_when_back(tmp_path: Path) -> None:
    watcher, hints, errors = _recording_watcher(asyncio.get_running_loop())
    watched = tmp_path / "pod"
    watched.mkdir()
    try:
        assert watcher.set_directories([watched]) == {}
        watched.rmdir()  # the kubelet removes a pod's emptyDir
        assert await _until(lambda: watcher.directories == [])
        failed = watcher.set_directories([watched])
        assert list(failed) == [str(watched)]  # missing: reported, retried next time
        watched.mkdir()
        assert watcher.set_directories([watched]) == {}
        (watched / "again.log").write_bytes(b"x\n")
        assert await _until(lambda: Hint("changed", f"{watched}/again.log") in hints)
        assert errors == []
    finally:
        watcher.stop()


@pytest.mark.asyncio
async def test_symlinked_directory_is_refused_not_followed(tmp_path: Path) -> None:
    watcher, hints, _ = _recording_watcher(asyncio.get_running_loop())
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tmp_path / "pod"
    link.symlink_to(outside)  # a pod planted a link where its directory was
    real = tmp_path / "real"
    real.mkdir()
    try:
        failed = watcher.set_directories([link, real])
        assert list(failed) == [str(link)]
        (outside / "secret.log").write_bytes(b"x\n")
        (real / "marker.log").write_bytes(b"x\n")
        assert await _until(lambda: Hint("changed", f"{real}/marker.log") in hints)
        assert not any("secret" in h.path for h in hints)
    finally:
        watcher.stop()


@pytest.mark.asyncio
async def test_queue_overflow_is_reported(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert limit <= 200_000, "max_queued_events is too large to overflow in a test"

    async def scenario() -> list[BaseException]:
        watcher, _, errors = _recording_watcher(asyncio.get_running_loop())
        try:
            assert watcher.set_directories([tmp_path]) == {}
            # Distinct names never merge: limit + 100 creations overflow the queue before
            # the loop (blocked here) reads any of them.
            fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for n in range(limit + 100):
                    os.close(os.open(f"f{n}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
            finally:
                os.close(fd)
            assert await _until(lambda: bool(errors))
            return errors
        finally:
            watcher.stop()

    errors = await scenario()
    assert any(isinstance(e, OverflowError) for e in errors)
