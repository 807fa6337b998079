"""follow=true over HTTP while a real writer process appends and the real rotator
punches (and collapses), compresses and rotates every ~64 KiB: three followers each
receive every event exactly once, in order."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from logvold.core.policy import Collapse, Compress, LogPolicy
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from tests.support.api_server import fetch, serving
from tests.support.events import split_raw, verify

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 12_000
ROTATE_EVERY = 64 * 1024


def rotate_loop(info: StreamInfo, done: threading.Event, counts: dict[str, int]) -> None:
    rot = StreamRotator(info, collapse_min_bytes=ROTATE_EVERY)
    active = info.active_path
    while True:
        finished = done.is_set()
        state = load_state(info.directory, info.base)
        committed = state.committed_offset if state else 0
        if (
            active.stat().st_size + (state.collapsed_bytes if state else 0) - committed
            >= ROTATE_EVERY
            or finished
        ):
            if rot.rotate("size") is not None:
                counts["rotations"] += 1
            rot.enforce_retention()
            counts["compressed"] += len(rot.compress_pending())
        if finished:
            return
        time.sleep(0.005)


async def follow(base: str, n: int) -> bytes:
    data = bytearray()
    timeout = aiohttp.ClientTimeout(total=90)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.get(base + "/logs/default/writer/app?follow=true") as r,
    ):
        assert r.status == 200
        async for chunk in r.content.iter_any():
            data += chunk
            if data.count(b"\n") >= n:
                break
    return bytes(data)


async def _until_followers(base: str, n: int) -> None:
    """Poll the server's own follower gauge (generous deadline for a loaded machine)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, text, _ = await fetch(base + "/metrics")
        if f"logvold_followers {n}.0".encode() in text.splitlines():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} followers never attached")


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize(("compress", "collapse"), [("gzip", "never"), ("zstd", "always")])
async def test_three_followers_get_every_event_once_through_rotations(
    tmp_path: Path, compress: Compress, collapse: Collapse
) -> None:
    info = StreamInfo(
        key=StreamKey("default", "writer", "app"),
        directory=tmp_path,
        base="app.log",
        volume="logs",
        policy=LogPolicy(
            compress=compress,
            delay_compress=False,
            max_files=0,
            collapse=collapse,
            max_size_bytes=ROTATE_EVERY,
        ),
    )
    info.active_path.touch()
    registry = StreamRegistry()
    registry.put(info)
    counts = {"rotations": 0, "compressed": 0}
    done = threading.Event()
    async with serving(registry) as srv:
        followers = [asyncio.create_task(follow(srv.base, EVENTS)) for _ in range(3)]
        await _until_followers(srv.base, 3)  # attached before the first byte
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.writer",
            "--path",
            str(info.active_path),
            "--mode",
            "append",
            "--count",
            str(EVENTS),
            "--rate",
            "1500",
            "--max-chunk",
            "4096",
            cwd=ROOT,
        )
        # The rotator is blocking file work, as in the daemon's worker threads.
        rotator = threading.Thread(target=rotate_loop, args=(info, done, counts))
        rotator.start()
        try:
            assert await writer.wait() == 0
        finally:
            done.set()
            await asyncio.to_thread(rotator.join, 30)
        results = await asyncio.wait_for(asyncio.gather(*followers), 60)
    assert counts["rotations"] >= 10 and counts["compressed"] >= 5, counts
    for data in results:
        report = verify(split_raw([data]))
        assert report.ok and report.seen == EVENTS, report.summary()
    state = load_state(tmp_path, "app.log")
    assert state is not None
    if collapse == "always":  # the head really moved under the followers
        assert state.collapsed_bytes > 0
    assert info.active_path.stat().st_blocks * 512 < state.committed_offset  # punched
    segments = list(tmp_path.glob("app.log.*"))
    assert any(p.suffix in (".gz", ".zst") for p in segments)


def test_writer_module_is_importable() -> None:
    # The follow test needs the writer as a module run from the repository root.
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.writer", "--count", "2"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    assert verify(split_raw([done.stdout])).seen == 2
