"""Whole unfiltered raw reads send plain segments with sendfile(2): the bytes served
are exactly the whole events written (segments, then the active file's live range up
to its last whole event; the punched head and an unfinished event are not served),
also while a writer appends and the real rotator punches, collapses and rotates under
the reads. Filtered reads keep the per-event path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.fileio.reader import FileRegion
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from logvold.server import logs as server_logs
from tests.support.api_server import serving
from tests.support.events import event_stream, split_raw, verify

ROOT = Path(__file__).resolve().parents[2]
URL = "/logs/default/writer/app"


def _info(directory: Path, **policy: Any) -> StreamInfo:
    return StreamInfo(
        key=StreamKey("default", "writer", "app"),
        directory=directory,
        base="app.log",
        volume="logs",
        policy=LogPolicy(**policy),
    )


class _RegionSpy:
    """Counts the regions the server sends (then sends them for real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.regions = 0
        self.bytes = 0
        real = server_logs._send_region

        async def spy(request: Any, response: Any, region: FileRegion) -> None:
            self.regions += 1
            self.bytes += region.count
            await real(request, response, region)

        monkeypatch.setattr(server_logs, "_send_region", spy)


async def _get(url: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        return await r.read()


@pytest.mark.asyncio
async def test_whole_stream_segments_by_sendfile_exact_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _RegionSpy(monkeypatch)
    info = _info(tmp_path, max_size_bytes=16 * 1024, max_files=0)
    events = list(event_stream(3000, seed=7))
    rot = StreamRotator(info)
    per_rotation = 400
    with info.active_path.open("ab") as f:
        for n, ev in enumerate(events):
            f.write(ev)
            if n % per_rotation == per_rotation - 1:
                f.flush()
                assert rot.rotate("size") is not None  # punch: the head becomes a hole
        f.write(b"E#unfinished event without its delimiter")
    state = load_state(tmp_path, "app.log")
    assert state is not None and state.committed_offset > 0
    registry = StreamRegistry()
    registry.put(info)
    async with serving(registry) as srv:
        bodies = [await _get(srv.base + URL) for _ in range(2)]
        filtered = await _get(srv.base + URL + "?pattern=E%23")
    want = b"".join(events)
    for body in bodies:
        assert body == want
    # One region per plain segment (each rotation cut its backlog in 16 KiB pieces).
    nseg = len([n for n in os.listdir(tmp_path) if n.startswith("app.log.")])
    assert nseg > 7
    assert spy.regions == 2 * nseg and spy.bytes == 2 * state.committed_offset
    assert filtered == want  # a pattern matching every event: same bytes, per-event path
    assert spy.regions == 2 * nseg  # ... and no region for it
    report = verify(split_raw([bodies[0]]))
    assert report.ok and report.seen == len(events), report.summary()


def rotate_loop(info: StreamInfo, done: threading.Event, counts: dict[str, int]) -> None:
    rot = StreamRotator(info, collapse_min_bytes=32 * 1024)
    while not done.is_set():
        if rot.needs_rotation() is not None and rot.rotate("size") is not None:
            counts["rotations"] += 1
        rot.enforce_retention()
        done.wait(0.005)


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("collapse", ["never", "always"])
async def test_whole_stream_reads_under_rotation_are_whole_and_gapless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collapse: str
) -> None:
    spy = _RegionSpy(monkeypatch)
    info = _info(tmp_path, max_size_bytes=32 * 1024, max_files=0, collapse=collapse)
    info.active_path.touch()
    registry = StreamRegistry()
    registry.put(info)
    total = 8000
    counts = {"rotations": 0}
    done = threading.Event()
    async with serving(registry) as srv:
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.writer",
            "--path",
            str(info.active_path),
            "--mode",
            "append",
            "--count",
            str(total),
            "--rate",
            "1500",
            "--max-chunk",
            "4096",
            cwd=ROOT,
        )
        # The rotator is blocking file work, as in the daemon's worker threads.
        rotator = threading.Thread(target=rotate_loop, args=(info, done, counts))
        rotator.start()
        reads: list[bytes] = []
        try:
            while writer.returncode is None:
                reads.append(await _get(srv.base + URL))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writer.wait(), 0.05)
        finally:
            done.set()
            await asyncio.to_thread(rotator.join, 30)
            await writer.wait()
        reads.append(await _get(srv.base + URL))
    assert counts["rotations"] >= 10, counts
    assert spy.regions > 0
    for n, body in enumerate(reads):
        report = verify(split_raw([body]))  # from seq 0, no gap, no dup, none cut
        assert report.ok, f"read {n}: {report.summary()}"
    assert verify(split_raw([reads[-1]])).seen == total
