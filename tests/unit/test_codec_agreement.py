"""One codec, one meaning: every path that reads an RFC3339 time, a CRI line or a
docker json-file line reads it through core.formats, so they all agree.

Tables, each row checked through every consumer. Rows marked `was:` are where the
copies used to disagree; the comment says who read it differently before, and the
row shows the behaviour chosen (the strictest correct one: what the Go programs on the
other side - kubelet, containerd, dockerd, the API server - do).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from logvold.client.cli import parse_time
from logvold.core import formats
from logvold.core.formats import (
    CRI_HEAD_BYTES,
    event_timestamp_ns,
    parse_cri_line,
    parse_json_entry,
    parse_rfc3339nano,
    rfc3339nano_ns,
    split_cri_line,
    split_json_entry,
)
from logvold.core.framing import classify_cri_line, classify_json_line, make_framer
from logvold.core.nodelog_query import parse_node_log_query
from logvold.errors import BadRequest, NodeLogQueryError, UsageError
from logvold.fileio.reader_events import parse_cri, parse_json_file
from logvold.server.logs import parse_read_options

T0 = 1_795_434_480_000_000_000  # 2026-11-23T11:48:00Z

TIMES = [
    pytest.param("2026-11-23T11:48:00Z", T0, id="plain"),
    pytest.param("2026-11-23T11:48:00.5Z", T0 + 500_000_000, id="fraction"),
    pytest.param("2026-11-23T13:48:00.000000001+02:00", T0 + 1, id="offset-ns"),
    # was: the node log query refused more than nine digits; Go (and the kubelet's
    # query) truncates them, as the other copies did.
    pytest.param("2026-11-23T11:48:00.1234567891Z", T0 + 123_456_789, id="ten-digits"),
    # was: accepted by the reader, /containerLogs sinceTime and the client; refused by
    # the node log query, as by Go's time.Parse and the kubelet's CRI reader.
    pytest.param("2026-11-23t11:48:00z", None, id="lowercase"),
    # was: accepted by the reader, sinceTime and the client; RFC 3339 and Go's strict
    # parser (json-file `time`) have only `.`.
    pytest.param("2026-11-23T11:48:00,5Z", None, id="comma"),
    # was: accepted by the reader and sinceTime (offset hours unchecked).
    pytest.param("2026-11-23T11:48:00+24:00", None, id="offset-24h"),
    # was: accepted by the node log query (a regex \d matches any Unicode digit).
    pytest.param("\u0662\u0660\u0662\u0666-11-23T11:48:00Z", None, id="arabic-digits"),
    # was: accepted by the client (Python's fromisoformat), refused everywhere else.
    pytest.param("2026-11-23T11:48Z", None, id="no-seconds"),
    pytest.param("2026-11-23 11:48:00Z", None, id="space"),
    pytest.param("2026-11-23", None, id="date-only"),
    pytest.param("2026-02-29T00:00:00Z", None, id="no-leap-day"),
    pytest.param("2026-11-23T11:48:60Z", None, id="leap-second"),
    pytest.param("2026-11-23T11:48:00.Z", None, id="empty-fraction"),
]


@pytest.mark.parametrize(("text", "ns"), TIMES)
def test_every_reader_of_a_time_agrees(text: str, ns: int | None) -> None:
    raw = text.encode()
    assert rfc3339nano_ns(raw) == ns
    cri = raw + b" stdout F message"
    entry = json.dumps({"log": "message\n", "stream": "stdout", "time": text}).encode()
    assert event_timestamp_ns(cri, "cri") == ns
    assert event_timestamp_ns(entry, "json-file") == ns
    since = (
        parse_node_log_query({"query": ["kubelet"], "sinceTime": [text]}).since
        if ns is not None
        else None
    )
    if ns is None:
        with pytest.raises(ValueError, match="not an RFC3339Nano timestamp"):
            parse_rfc3339nano(text)
        with pytest.raises(BadRequest, match="sinceTime must be an RFC3339 time"):
            parse_read_options(MultiDict({"sinceTime": text}))
        with pytest.raises(NodeLogQueryError, match="sinceTime: Invalid value"):
            parse_node_log_query({"query": ["kubelet"], "sinceTime": [text]})
        with pytest.raises(UsageError, match="--since-time"):
            parse_time(text, option="--since-time")
        assert split_cri_line(cri) is None and classify_cri_line(cri[:CRI_HEAD_BYTES]) == 0
        assert split_json_entry(entry) is None and classify_json_line(entry) == 0
        assert parse_cri(cri).stream is None and parse_json_file(entry).stream is None
        return
    assert parse_rfc3339nano(text) == ns
    assert parse_read_options(MultiDict({"sinceTime": text})).since_ns == ns
    # The journal has microseconds: a lower bound rounds up.
    assert since == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=-(-ns // 1000))
    # The client sends what the server reads back to the same nanosecond.
    assert rfc3339nano_ns(parse_time(text, option="--since-time").encode()) == ns
    assert classify_cri_line(cri[:CRI_HEAD_BYTES]) == 1 and classify_json_line(entry) == 1
    assert parse_cri(cri).ts == raw and parse_json_file(entry).ts == raw


def test_client_keeps_nanoseconds_and_names_a_missing_zone() -> None:
    # was: the client rounded to microseconds, so sinceTime .123456789 became .123456
    # and took in events the server was asked to leave out.
    assert parse_time("2026-11-23T11:48:00.123456789Z", option="--since") == (
        "2026-11-23T11:48:00.123456789Z"
    )
    with pytest.raises(UsageError, match="has no time zone; add Z"):
        parse_time("2026-11-23T11:48:00", option="--since")


LONG_TS = b"2026-11-23T11:48:00." + b"1" * 40 + b"Z"

CRI_LINES = [
    pytest.param(b"2026-11-23T11:48:00Z stdout F hello", ("stdout", False, b"hello"), id="F"),
    pytest.param(b"2026-11-23T11:48:00Z stderr P he", ("stderr", True, b"he"), id="P"),
    pytest.param(b"2026-11-23T11:48:00Z stdout P:x y", ("stdout", True, b"y"), id="P-tag-list"),
    pytest.param(b"2026-11-23T11:48:00Z stdout Q y", ("stdout", False, b"y"), id="other-tag"),
    # was: the reader served this as an empty stdout message; the framer and the
    # parser (and the kubelet: "log tag is not found") took it as malformed.
    pytest.param(b"2026-11-23T11:48:00Z stdout F", None, id="no-space-after-tag"),
    # was: the framer opened a stdout partial here (it never read the time), the reader
    # served the line as an event of its own: they disagreed on where events end.
    pytest.param(b"yesterday stdout P half", None, id="bad-time-partial"),
    pytest.param(b"2026-11-23t11:48:00z stdout P half", None, id="lowercase-time"),
    # was: the reader and the parser read any head length, the framer only 64 bytes.
    pytest.param(LONG_TS + b" stdout P half", None, id="head-over-64-bytes"),
    pytest.param(b"2026-11-23T11:48:00Z stdin F x", None, id="stdin"),
    pytest.param(b"garbage", None, id="garbage"),
]


@pytest.mark.parametrize(("line", "expected"), CRI_LINES)
def test_every_reader_of_a_cri_line_agrees(
    line: bytes, expected: tuple[str, bool, bytes] | None
) -> None:
    cls = classify_cri_line(line[:CRI_HEAD_BYTES])
    served = parse_cri(line + b"\n")
    if expected is None:
        with pytest.raises(ValueError, match="CRI line"):
            parse_cri_line(line)
        assert split_cri_line(line) is None and cls == 0
        assert (served.stream, served.complete, served.message) == (None, True, line + b"\n")
        assert event_timestamp_ns(line, "cri") is None
        return
    stream, partial, message = expected
    parsed = parse_cri_line(line + b"\n")
    assert (parsed.stream, parsed.partial, parsed.message) == expected
    assert cls == {"stdout": 1, "stderr": 2}[stream] | (4 if partial else 0)
    assert (served.stream, served.complete) == (stream, not partial)
    assert served.message == message + (b"" if partial else b"\n")


def test_framer_and_reader_agree_on_a_bad_time_partial() -> None:
    """The row `bad-time-partial` in a stream: the framer ends an event after every
    line (nothing is left open), as the reader serves them."""
    good = b"2026-11-23T11:48:00Z stdout F a\n"
    data = good + b"yesterday stdout P half\n" + good
    assert make_framer("cri").feed(data) == [len(good), len(data) - len(good), len(data)]


def _entry(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


JSON_LINES = [
    pytest.param(
        _entry(log="hi\n", stream="stdout", time="2026-11-23T11:48:00Z"),
        ("stdout", b"hi\n"),
        id="dockerd",
    ),
    pytest.param(
        _entry(time="2026-11-23T11:48:00Z", stream="stderr", log="pa"),
        ("stderr", b"pa"),
        id="other-key-order-partial",
    ),
    # was: the reader served these as their `log`, the framer and the parser refused
    # them (the kubelet refuses a time it cannot parse).
    pytest.param(_entry(log="hi\n", stream="stdout"), None, id="no-time"),
    pytest.param(_entry(log="hi\n", stream="stdout", time="now"), None, id="bad-time"),
    pytest.param(_entry(log="hi\n", stream="fd3", time="2026-11-23T11:48:00Z"), None, id="fd3"),
    pytest.param(_entry(log="hi\n", time="2026-11-23T11:48:00Z"), None, id="no-stream"),
    pytest.param(_entry(log=3, stream="stdout", time="2026-11-23T11:48:00Z"), None, id="log-int"),
    pytest.param(b"[1, 2]\n", None, id="not-an-object"),
    pytest.param(b'{"log":"x\\n","stream":"stdout","time":"2026-11-23T11:48:00Z"', None, id="cut"),
]


@pytest.mark.parametrize(("line", "expected"), JSON_LINES)
def test_every_reader_of_a_json_file_line_agrees(
    line: bytes, expected: tuple[str, bytes] | None
) -> None:
    cls = classify_json_line(line)
    served = parse_json_file(line)
    if expected is None:
        with pytest.raises(ValueError, match="json-file entry"):
            parse_json_entry(line)
        assert split_json_entry(line) is None and cls == 0
        assert (served.stream, served.complete) == (None, True)
        assert served.message == line.rstrip(b"\n") + b"\n"
        assert event_timestamp_ns(line, "json-file") is None
        return
    stream, log = expected
    entry = parse_json_entry(line)
    assert (entry.stream, entry.log, entry.timestamp_ns) == (stream, log, T0)
    partial = not log.endswith(b"\n")
    assert cls == {"stdout": 1, "stderr": 2}[stream] | (4 if partial else 0)
    assert (served.stream, served.complete, served.message) == (stream, not partial, log)


_TIME_PIECES = st.lists(
    st.sampled_from(
        [
            "2026-11-23T11:48:00",
            "2026-02-29T00:00:00",
            "2026-11-23T24:00:00",
            "2026-11-23T11:48",
            ".",
            ".5",
            ".123456789",
            ".1234567891",
            "Z",
            "z",
            "+02:00",
            "-24:00",
            ",5",
            " ",
            "0",
        ]
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(_TIME_PIECES)
def test_the_seconds_cache_never_changes_an_answer(pieces: list[str]) -> None:
    """The cached fast paths (a known `YYYY-MM-DDTHH:MM:SS`, then `Z`) accept only what
    the pattern accepts: the answer with an empty cache (pattern only) and with a warm
    one (fast path) is the same, for the time, a CRI line and a json-file entry."""
    text = "".join(pieces).encode()
    line = text + b" stderr P:x m"
    entry = _entry(log="m", stream="stderr", time=text.decode())

    def answers() -> tuple[object, ...]:
        return rfc3339nano_ns(text), split_cri_line(line), split_json_entry(entry)

    formats._seconds_cache.clear()
    cold = answers()
    for head in (b"2026-11-23T11:48:00", b"2026-02-29T00:00:00", b"2026-11-23T24:00:00"):
        rfc3339nano_ns(head + b"Z")  # warms the cache with the heads that are valid
    assert answers() == cold
