"""A watchdog thread that dies is noticed at the next set_directories() (every full
reconcile): reported through on_error and replaced, so file hints come back. An
emitter that ended because its directory was deleted is no error."""

from __future__ import annotations

import asyncio
from pathlib import Path

from logvold.watcher import DirectoryWatcher, Hint


def _recording_watcher(loop: asyncio.AbstractEventLoop) -> tuple[DirectoryWatcher, list[Hint],
                                                                  list[str]]:
    """A started watcher whose hints and reported errors land in the returned lists."""
    hints: list[Hint] = []
    errors: list[str] = []
    watcher = DirectoryWatcher(loop, hints.append,
                               on_error=lambda path, exc: errors.append(str(exc)))
    watcher.start()
    return watcher, hints, errors


async def _hint_for(hints: list[Hint], suffix: str, timeout_s: float = 10.0) -> bool:
    """Wait for a hint about a path ending in `suffix` (other hints may come first)."""
    for _ in range(int(timeout_s / 0.05)):
        if any(h.path.endswith(suffix) for h in hints):
            return True
        await asyncio.sleep(0.05)
    return False


def _end_emitters(watcher: DirectoryWatcher) -> None:
    for emitter in list(watcher._observer.emitters):
        emitter.stop()
        emitter.join(5)


def test_dead_emitter_is_reported_and_replaced(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], bool]:
        watcher, hints, errors = _recording_watcher(asyncio.get_running_loop())
        try:
            assert watcher.set_directories([tmp_path]) == {}
            assert errors == []
            _end_emitters(watcher)  # as if the inotify thread had died
            assert watcher.set_directories([tmp_path]) == {}
            (tmp_path / "new.log").write_bytes(b"x\n")
            return errors, await _hint_for(hints, "new.log")
        finally:
            watcher.stop()

    errors, hinted = asyncio.run(scenario())
    assert errors == ["a watchdog thread died; restarting the observer"]
    assert hinted


def test_deleted_directory_is_no_error_and_is_watched_again_when_back(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], bool]:
        watcher, hints, errors = _recording_watcher(asyncio.get_running_loop())
        watched = tmp_path / "pod"
        watched.mkdir()
        try:
            assert watcher.set_directories([watched]) == {}
            watched.rmdir()  # the kubelet removes a pod's emptyDir
            # watchdog ends that directory's emitter by itself, at its own pace; end it
            # here so the test does not depend on that timing.
            _end_emitters(watcher)
            assert watcher.set_directories([watched])  # missing: reported as failed, retried
            watched.mkdir()
            assert watcher.set_directories([watched]) == {}
            (watched / "again.log").write_bytes(b"x\n")
            return errors, await _hint_for(hints, "again.log")
        finally:
            watcher.stop()

    errors, hinted = asyncio.run(scenario())
    assert errors == []
    assert hinted
