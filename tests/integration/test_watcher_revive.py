"""A watchdog thread that dies is noticed at the next set_directories() (every full
reconcile): reported through on_error and replaced, so file hints come back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from logvold.watcher import DirectoryWatcher, Hint


def test_dead_emitter_is_reported_and_replaced(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[Hint]]:
        loop = asyncio.get_running_loop()
        hints: list[Hint] = []
        errors: list[str] = []
        got = asyncio.Event()

        def sink(hint: Hint) -> None:
            hints.append(hint)
            got.set()

        watcher = DirectoryWatcher(loop, sink, on_error=lambda path, exc: errors.append(str(exc)))
        watcher.start()
        try:
            assert watcher.set_directories([tmp_path]) == {}
            assert errors == []
            for emitter in list(watcher._observer.emitters):  # kill the inotify thread
                emitter.stop()
                emitter.join(5)
            assert watcher.set_directories([tmp_path]) == {}
            (tmp_path / "new.log").write_bytes(b"x\n")
            await asyncio.wait_for(got.wait(), 10)
            return errors, hints
        finally:
            watcher.stop()

    errors, hints = asyncio.run(scenario())
    assert errors == ["a watchdog thread died; restarting the observer"]
    assert any(h.path.endswith("new.log") for h in hints)


def test_deleted_directory_is_no_error_and_is_watched_again_when_back(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[Hint]]:
        loop = asyncio.get_running_loop()
        hints: list[Hint] = []
        errors: list[str] = []
        got = asyncio.Event()

        def sink(hint: Hint) -> None:
            hints.append(hint)
            got.set()

        watched = tmp_path / "pod"
        watched.mkdir()
        watcher = DirectoryWatcher(loop, sink, on_error=lambda path, exc: errors.append(str(exc)))
        watcher.start()
        try:
            assert watcher.set_directories([watched]) == {}
            watched.rmdir()  # the kubelet removes a pod's emptyDir
            # watchdog ends that directory's emitter by itself, at its own pace; end it
            # here so the test does not depend on that timing.
            for emitter in list(watcher._observer.emitters):
                emitter.stop()
                emitter.join(5)
            assert watcher.set_directories([watched])  # missing: reported as failed, retried
            watched.mkdir()
            assert watcher.set_directories([watched]) == {}
            (watched / "again.log").write_bytes(b"x\n")
            for _ in range(200):  # other hints (the deletion) may arrive first
                if any(h.path.endswith("again.log") for h in hints):
                    break
                await asyncio.sleep(0.05)
            return errors, hints
        finally:
            watcher.stop()

    errors, hints = asyncio.run(scenario())
    assert errors == []
    assert any(h.path.endswith("again.log") for h in hints)
