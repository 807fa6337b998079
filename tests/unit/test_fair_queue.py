"""The rotation queue serves volumes in turn: a volume with hundreds of due streams
never holds another volume's step back by more than one step per busy volume."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logvold.core.clock import utcnow
from logvold.core.fair_queue import RoundRobinQueue
from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.daemon.steps import StepRequest
from logvold.daemon.workers import StreamWorkers


def test_groups_take_turns() -> None:
    q: RoundRobinQueue[str, str] = RoundRobinQueue()
    for i in range(5):
        q.push("big", f"big-{i}")
    q.push("small", "small-0")
    q.push("other", "other-0")
    order = [q.pop() for _ in range(7)]
    assert order[:3] == ["big-0", "small-0", "other-0"]
    assert order[3:] == ["big-1", "big-2", "big-3", "big-4"]
    assert q.pop() is None and len(q) == 0


def test_a_key_waits_once_and_discard_removes_it() -> None:
    q: RoundRobinQueue[str, str] = RoundRobinQueue()
    assert q.push("a", "k1") is True
    assert q.push("a", "k1") is False
    q.push("a", "k2")
    q.discard("k1")
    assert "k1" not in q and len(q) == 1
    assert q.pop() == "k2"
    assert q.pop() is None


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 30)), max_size=200))
def test_every_key_once_and_no_group_starves(pushes: list[tuple[str, int]]) -> None:
    q: RoundRobinQueue[str, tuple[str, int]] = RoundRobinQueue()
    wanted: list[tuple[str, int]] = []
    for group, n in pushes:
        if q.push(group, (group, n)):
            wanted.append((group, n))
    popped: list[tuple[str, int]] = []
    while (key := q.pop()) is not None:
        popped.append(key)
    assert sorted(popped) == sorted(wanted)
    # Round-robin: while k groups still have keys, any window of k pops holds each once.
    for group in "abcd":
        first = next((i for i, k in enumerate(popped) if k[0] == group), None)
        if first is not None:
            assert first < len({k[0] for k in wanted})


class _RecordingRotator:
    """A rotator that records which stream ran; the first step blocks until released so
    every submission below is queued before any choice is made."""

    def __init__(self, info: StreamInfo, order: list[str], gate: threading.Event) -> None:
        self.info = info
        self.order = order
        self.gate = gate

    def recover(self) -> None:
        self.gate.wait(30)
        self.order.append(self.info.volume)

    def needs_rotation(self) -> str | None:
        return None

    def rotate(self, reason: str) -> Any:
        return None

    def enforce_retention(self, *, extra_budget_bytes: int | None = None) -> Any:
        return None

    def compress_pending(self, extra_budget_bytes: int | None = None) -> Any:
        return None


def _info(tmp_path: Path, volume: str, name: str) -> StreamInfo:
    directory = tmp_path / volume
    directory.mkdir(exist_ok=True)
    return StreamInfo(
        key=StreamKey("default", volume, name),
        directory=directory,
        base=f"{name}.log",
        policy=LogPolicy(max_size_bytes=0),
        volume=volume,
        source="static",
        root=directory,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 3])
async def test_a_small_volume_runs_within_one_turn_of_a_big_one(
    tmp_path: Path, workers: int
) -> None:
    order: list[str] = []
    gate = threading.Event()
    # Past the first `free` big steps, a big step waits (30 s at most, all told) until
    # the small one has started: so the order recorded cannot depend on how late a
    # descheduled thread records (a loaded machine), only on what the pool chose. A FIFO
    # pool would never hand out the small step in time and fail below after 30 s.
    free = 4 * workers + 1
    small_started = threading.Event()
    deadline = time.monotonic() + 30
    started = itertools.count()

    class _Gated(_RecordingRotator):
        def recover(self) -> None:
            self.gate.wait(30)
            if self.info.volume == "small":
                self.order.append("small")
                small_started.set()
                return
            if next(started) >= free:
                small_started.wait(max(0.0, deadline - time.monotonic()))
            self.order.append(self.info.volume)

    def factory(info: StreamInfo, metrics: Any, clock: Any) -> _RecordingRotator:
        return _Gated(info, order, gate)

    loop = asyncio.get_running_loop()
    pool = StreamWorkers(
        loop, factory, None, utcnow, rotation_workers=workers, compression_workers=1
    )
    big = [_info(tmp_path, "big", f"c{i:03d}") for i in range(300)]
    small = _info(tmp_path, "small", "app")
    for info in [*big, small]:
        pool.put(info, info.root)
    for info in big:
        pool.submit(info.key, StepRequest(check=True, retention=True))
    pool.submit(small.key, StepRequest(check=True))
    gate.set()
    await pool.drain()
    await pool.close()
    assert len(order) == 301
    # In one FIFO the small volume would run 301st. In turns it starts right after the
    # steps already running and one more of the big volume (two rounds allowed).
    assert small_started.is_set(), "the small step was not handed out in time"
    assert order.index("small") <= free


@pytest.mark.asyncio
async def test_requests_to_a_waiting_stream_merge_into_one_step(tmp_path: Path) -> None:
    order: list[str] = []
    gate = threading.Event()

    def factory(info: StreamInfo, metrics: Any, clock: datetime | Any) -> _RecordingRotator:
        return _RecordingRotator(info, order, gate)

    loop = asyncio.get_running_loop()
    pool = StreamWorkers(loop, factory, None, utcnow, rotation_workers=1, compression_workers=1)
    first, second = _info(tmp_path, "a", "one"), _info(tmp_path, "b", "two")
    for info in (first, second):
        pool.put(info, info.root)
    pool.submit(first.key, StepRequest(check=True))
    for _ in range(50):  # second waits for its turn: 50 requests, one step
        pool.submit(second.key, StepRequest(check=True))
    gate.set()
    await pool.drain()
    await pool.close()
    assert len(order) == 2
