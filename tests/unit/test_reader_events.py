"""Timestamps (the codec's, as the reader uses them) and record splitting (table-driven)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logvold.core.formats import format_rfc3339nano_fixed, parse_rfc3339nano, rfc3339nano_ns
from logvold.fileio.reader_events import Splitter

BASE = int(datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC).timestamp()) * 10**9


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        (b"2026-11-23T12:00:00Z", BASE),
        (b"2026-11-23T12:00:00z", None),  # Go and the kubelet refuse lower case
        (b"2026-11-23T12:00:00,5Z", None),
        (b"2026-11-23T12:00:00+24:00", None),
        (b"2026-11-23T12:00:00.5Z", BASE + 500_000_000),
        (b"2026-11-23T12:00:00.123456789Z", BASE + 123_456_789),
        (b"2026-11-23T12:00:00.1234567891234Z", BASE + 123_456_789),
        (b"2026-11-23T14:00:00+02:00", BASE),
        (b"2026-11-23T11:30:00.000000001-00:30", BASE + 1),
        (b"2026-11-23T12:00:00", None),
        (b"2026-13-23T12:00:00Z", None),
        (b"2026-02-30T12:00:00Z", None),
        (b"2026-11-23T12:00:00.Z", None),
        (b"2026-11-23T12:00:00.12aZ", None),
        (b"2026-11-23T12:00:00+2:00", None),
        (b"2026-11-23 12:00:00Z", None),
        (b" 2026-11-23T12:00:00Z", None),
        (b"", None),
        (b"yesterday", None),
    ],
    ids=lambda v: v.decode() if isinstance(v, bytes) else str(v),
)
def test_rfc3339nano_ns(text: bytes, ns: int | None) -> None:
    assert rfc3339nano_ns(text) == ns


@given(st.integers(0, 2**62 // 4))
def test_fixed_format_round_trip(ns: int) -> None:
    text = format_rfc3339nano_fixed(ns).encode()
    assert len(text) == 30  # nine fraction digits always: kubectl --timestamps columns
    assert rfc3339nano_ns(text) == ns == parse_rfc3339nano(text)


@given(
    st.lists(st.binary(max_size=50), max_size=20),
    st.sampled_from([b"\n", b"\n\n", b"\x1e"]),
    st.data(),
)
def test_splitter_yields_whole_records_with_offsets(
    parts: list[bytes], delim: bytes, data: st.DataObject
) -> None:
    stream = b"".join(p.replace(delim[:1], b"") + delim for p in parts) + b"tail"
    splitter = Splitter(delim, 100, 1 << 20)
    pos, got = 0, []
    while pos < len(stream):
        n = data.draw(st.integers(1, 17))
        got += splitter.feed(stream[pos : pos + n])
        pos += n
    records = [r for r, _ in got]
    assert b"".join(records) + bytes(splitter.carry) == stream
    assert all(r.endswith(delim) for r in records)
    ends = [100 + len(b"".join(records[: i + 1])) for i in range(len(records))]
    assert [e for _, e in got] == ends
    assert splitter.emitted == 100 + len(b"".join(records))
