"""Hourly/Daily/fixed-period rotation in the daemon with an injected clock and the real rotator:
nothing before the boundary, one period rotation at it, in the policy's timezone."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logvold.config.serve_settings import ServeOptions
from logvold.core.layout import segments_of
from logvold.core.policy import Config, LogPolicy, VolumeSpec
from logvold.daemon.lifecycle import Daemon
from tests.support.events import event_stream, split_raw, verify


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def until(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("rotate", "tz", "start", "boundary"),
    [
        (
            "Hourly",
            "UTC",
            datetime(2026, 11, 23, 10, 59, 30, tzinfo=UTC),
            datetime(2026, 11, 23, 11, 0, tzinfo=UTC),
        ),
        (
            "Daily",
            "Europe/Berlin",
            datetime(2026, 11, 23, 22, 59, 30, tzinfo=UTC),
            datetime(2026, 11, 23, 23, 0, tzinfo=UTC),
        ),
        # rotate: 15m in Kathmandu (UTC+5:45): local quarter hours, 12:00 UTC = 17:45 local.
        (
            "900s",
            "Asia/Kathmandu",
            datetime(2026, 11, 23, 11, 59, 30, tzinfo=UTC),
            datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        ),
    ],
    ids=["hourly-utc", "daily-berlin", "15m-kathmandu"],
)
@pytest.mark.asyncio
async def test_period_boundary_rotates_once(
    tmp_path: Path, rotate: str, tz: str, start: datetime, boundary: datetime
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    data = b"".join(event_stream(50))
    (vol / "app.log").write_bytes(data)
    clock = FakeClock(start)
    config = Config(
        volumes=(VolumeSpec(name="v", path=str(vol)),),
        defaults=LogPolicy(rotate=rotate, timezone=tz, max_size_bytes=0),
    )

    daemon = Daemon(config, ServeOptions(serve_http=False), clock=clock)
    await daemon.start(watch=False)
    task = asyncio.create_task(daemon.run())
    await daemon.wait_idle()
    assert daemon.scheduler.next_boundary(next(iter(daemon.registry.snapshot())).key) == boundary
    assert segments_of("app.log", os.listdir(vol)) == []
    clock.now = boundary - timedelta(seconds=1)
    daemon._wake.set()
    await asyncio.sleep(0.2)
    await daemon.wait_idle()
    assert segments_of("app.log", os.listdir(vol)) == []
    clock.now = boundary + timedelta(milliseconds=5)
    daemon._wake.set()
    await until(lambda: len(segments_of("app.log", os.listdir(vol))) == 1)
    await daemon.wait_idle()
    assert (
        daemon.metrics.registry.get_sample_value(
            "logvold_rotations_total",
            {
                "namespace": "default",
                "pod": "v",
                "container": "app",
                "reason": "period",
                "strategy": "punch",
            },
        )
        == 1
    )
    daemon.request_stop()
    assert await task == 0
    await daemon.stop()
    seg = segments_of("app.log", os.listdir(vol))[0]
    assert seg.stamp == boundary.replace(microsecond=0)  # named by the (fake) rotation time
    report = verify(split_raw([(vol / seg.filename).read_bytes()]))
    assert report.ok and report.seen == 50
