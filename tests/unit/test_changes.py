"""Per-stream change notices: a waiter wakes on its own stream's notice only, a notice
between taking the version and waiting is not missed, and no waiter is left behind."""

from __future__ import annotations

import asyncio

import pytest

from logvold.sources.changes import StreamChanges


@pytest.mark.asyncio
async def test_waiter_wakes_on_its_stream_only() -> None:
    changes = StreamChanges()
    seen_a, seen_b = changes.version("a"), changes.version("b")
    wait_a = asyncio.create_task(changes.wait("a", seen_a, 60))
    wait_b = asyncio.create_task(changes.wait("b", seen_b, 60))
    await asyncio.sleep(0)
    assert changes.waiting() == 2
    changes.notify("a")
    assert await asyncio.wait_for(wait_a, 60) is True
    assert not wait_b.done()
    changes.notify_all()
    assert await asyncio.wait_for(wait_b, 60) is True
    assert changes.waiting() == 0


@pytest.mark.asyncio
async def test_notice_before_the_wait_is_not_missed() -> None:
    changes = StreamChanges()
    seen = changes.version("a")
    changes.notify("a")  # the stream changed while the caller was looking at it
    assert await changes.wait("a", seen, 60) is True
    assert changes.waiting() == 0


@pytest.mark.asyncio
async def test_timeout_and_cancellation_leave_no_waiter() -> None:
    changes = StreamChanges()
    assert await changes.wait("a", changes.version("a"), 0.01) is False
    task = asyncio.create_task(changes.wait("a", changes.version("a"), 60))
    await asyncio.sleep(0)
    assert changes.waiting() == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert changes.waiting() == 0


@pytest.mark.asyncio
async def test_forget_wakes_and_drops_the_counter() -> None:
    changes = StreamChanges()
    changes.notify("a")
    seen = changes.version("a")
    task = asyncio.create_task(changes.wait("a", seen, 60))
    await asyncio.sleep(0)
    changes.forget("a")
    assert await asyncio.wait_for(task, 60) is True
    assert changes.version("a") == 0
