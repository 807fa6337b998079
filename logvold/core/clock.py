"""The wall clock as components take it: injectable, so tests can use a fake one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""


def utcnow() -> datetime:
    """The default Clock."""
    return datetime.now(UTC)
