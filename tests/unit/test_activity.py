"""The daemon's rotated/truncated info lines: the first per stream is logged, later ones
within the interval are counted and reported with the next line or a flush."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from logvold.daemon.activity import ActivityLog


@dataclass(frozen=True)
class Rotation:
    segment: str
    logical_start: int
    logical_end: int
    strategy: str = "punch"


@dataclass(frozen=True)
class Retention:
    deleted: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)
    dropped_active_bytes: int = 0
    trimmed_segment: str | None = None
    bytes_freed: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("test.activity")
    handler = _Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)


def test_rotations_are_rate_limited_per_stream(logged: list[logging.LogRecord]) -> None:
    clock = Clock()
    activity = ActivityLog(logging.getLogger("test.activity"), interval_s=60, monotonic=clock)
    for i in range(5):
        activity.rotated("ns/a/c", Rotation(f"a.log.{i}", i * 100, i * 100 + 100), "size")
        clock.now += 1
    activity.rotated("ns/b/c", Rotation("b.log.0", 0, 7), "period")  # another stream: own line
    assert [(r.getMessage(), r.__dict__["stream"]) for r in logged] == [
        ("stream rotated", "ns/a/c"),
        ("stream rotated", "ns/b/c"),
    ]
    first = logged[0].__dict__
    assert (first["segment"], first["bytes"], first["reason"], first["strategy"]) == (
        "a.log.0",
        100,
        "size",
        "punch",
    )
    clock.now += 60
    activity.rotated("ns/a/c", Rotation("a.log.5", 500, 650), "size")
    assert logged[-1].__dict__["suppressed"] == 4
    assert logged[-1].__dict__["segment"] == "a.log.5"


def test_a_stream_gone_quiet_gets_its_count_at_the_next_flush(
    logged: list[logging.LogRecord],
) -> None:
    clock = Clock()
    activity = ActivityLog(logging.getLogger("test.activity"), interval_s=60, monotonic=clock)
    activity.rotated("ns/a/c", Rotation("s0", 0, 10), "size")
    activity.rotated("ns/a/c", Rotation("s1", 10, 30), "size")
    activity.rotated("ns/a/c", Rotation("s2", 30, 60), "size")
    activity.flush()  # too early: nothing
    assert len(logged) == 1
    clock.now += 61
    activity.flush()
    assert logged[-1].getMessage() == "stream rotated (summary)"
    assert (logged[-1].__dict__["times"], logged[-1].__dict__["bytes"]) == (2, 50)
    clock.now += 61
    activity.flush()  # quiet for a whole interval: entry dropped, no line
    assert len(logged) == 2 and len(activity) == 0


def test_truncation_lines_say_what_was_removed_and_why(logged: list[logging.LogRecord]) -> None:
    activity = ActivityLog(logging.getLogger("test.activity"), monotonic=Clock())
    activity.truncated("ns/a/c", Retention())  # retention that did nothing: no line
    assert logged == []
    activity.truncated(
        "ns/a/c",
        Retention(
            deleted=("a.log.1", "a.log.2"),
            reasons={"a.log.1": "maxFiles", "a.log.2": "maxAge"},
            bytes_freed=4096,
        ),
    )
    (line,) = logged
    assert line.getMessage() == "stream truncated"
    assert (
        line.__dict__["deleted_segments"],
        line.__dict__["why"],
        line.__dict__["freed_bytes"],
    ) == (2, "maxAge,maxFiles", 4096)


def test_forget_reports_pending_counts_and_drops_the_stream(
    logged: list[logging.LogRecord],
) -> None:
    activity = ActivityLog(logging.getLogger("test.activity"), monotonic=Clock())
    activity.rotated("ns/a/c", Rotation("s0", 0, 10), "size")
    activity.rotated("ns/a/c", Rotation("s1", 10, 20), "size")
    activity.forget("ns/a/c")
    assert logged[-1].getMessage() == "stream rotated (summary)"
    assert logged[-1].__dict__["times"] == 1
    assert len(activity) == 0
