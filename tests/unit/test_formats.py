"""CRI lines, docker json-file entries and RFC3339Nano timestamps: what containerd/dockerd write."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logvold.core.formats import (
    datetime_from_ns,
    decode_json_bytes,
    encode_cri_event,
    encode_cri_line,
    encode_json_entry,
    encode_json_event,
    event_timestamp_ns,
    format_rfc3339nano,
    parse_cri_line,
    parse_json_entry,
    parse_rfc3339nano,
    timestamp_ns,
)
from logvold.core.framing import classify_cri_line, classify_json_line, make_framer
from tests.support.events import decode_cri, decode_json_file

PROPS = settings(max_examples=200, deadline=None)


def lines_of(data: bytes) -> list[bytes]:
    """Lines split at b"\\n" only (bytes.splitlines also splits at \\r and friends)."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


NS_2026 = 1_795_434_480_000_000_000  # 2026-11-23T11:48:00Z

# -- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        pytest.param(NS_2026, "2026-11-23T11:48:00Z", id="whole-second-no-fraction"),
        pytest.param(NS_2026 + 100_000_000, "2026-11-23T11:48:00.1Z", id="trailing-zeros-trimmed"),
        pytest.param(NS_2026 + 123_456_789, "2026-11-23T11:48:00.123456789Z", id="nine-digits"),
        pytest.param(NS_2026 + 1, "2026-11-23T11:48:00.000000001Z", id="one-ns"),
        pytest.param(0, "1970-01-01T00:00:00Z", id="epoch"),
        pytest.param(951_782_400_500_000_000, "2000-02-29T00:00:00.5Z", id="leap-day"),
    ],
)
def test_format_rfc3339nano_like_go(ns: int, text: str) -> None:
    assert format_rfc3339nano(ns) == text
    assert parse_rfc3339nano(text) == ns
    assert parse_rfc3339nano(text.encode()) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        pytest.param("2026-11-23T13:48:00+02:00", NS_2026, id="positive-offset"),
        pytest.param("2026-11-23T06:18:00.5-05:30", NS_2026 + 500_000_000, id="negative-offset"),
        pytest.param("2026-11-23T11:48:00.1234567891Z", NS_2026 + 123_456_789, id="truncate-ns"),
    ],
)
def test_parse_rfc3339nano_variants(text: str, ns: int) -> None:
    assert parse_rfc3339nano(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("2026-11-23 11:48:00Z", id="space-separator"),
        pytest.param("2026-11-23T11:48:00", id="no-zone"),
        pytest.param("2026-11-23T11:48:00.Z", id="empty-fraction"),
        pytest.param("2026-02-29T00:00:00Z", id="not-a-leap-year"),
        pytest.param("2026-13-01T00:00:00Z", id="month-13"),
        pytest.param("2026-11-23T24:00:00Z", id="hour-24"),
        pytest.param("2026-11-23T11:48:60Z", id="second-60"),
        pytest.param("2026-11-23T11:48:00+0200", id="offset-without-colon"),
        pytest.param("2026-11-23T11:48:00Zjunk", id="trailing-junk"),
        pytest.param("2026-11-23t11:48:00z", id="lowercase-like-go"),
        pytest.param("2026-11-23T11:48:00,5Z", id="comma-fraction"),
        pytest.param("2026-11-23T11:48:00+24:00", id="offset-hour-24"),
        pytest.param("\uff12\uff10\uff12\uff16-11-23T11:48:00Z", id="non-ascii-digits"),
    ],
)
def test_parse_rfc3339nano_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="RFC3339Nano"):
        parse_rfc3339nano(text)


@PROPS
@given(st.integers(-(10**18), 2**63 - 1))
def test_rfc3339nano_round_trip(ns: int) -> None:
    text = format_rfc3339nano(ns)
    assert parse_rfc3339nano(text) == ns
    assert not text.endswith("0Z") or "." not in text  # fraction never ends in 0


@PROPS
@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_timestamp_ns_of_datetimes(dt: datetime) -> None:
    ns = timestamp_ns(dt)
    assert ns // 1000 == int((dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    assert datetime_from_ns(ns) == dt
    assert timestamp_ns(dt.replace(tzinfo=None)) == timestamp_ns(dt.replace(tzinfo=UTC))


def test_timestamp_ns_rejects_bool() -> None:
    with pytest.raises(TypeError):
        timestamp_ns(True)


# -- CRI --------------------------------------------------------------------------------


def test_encode_cri_line_bytes() -> None:
    assert encode_cri_line("stderr", NS_2026 + 5, b"hi there") == (
        b"2026-11-23T11:48:00.000000005Z stderr F hi there\n"
    )
    assert encode_cri_line("stdout", NS_2026, b"", partial=True) == (
        b"2026-11-23T11:48:00Z stdout P \n"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            b"2026-11-23T11:48:00Z stdout F hello world\n",
            ("stdout", False, b"hello world"),
            id="full",
        ),
        pytest.param(b"2026-11-23T11:48:00.5Z stderr P a b\n", ("stderr", True, b"a b"), id="P"),
        pytest.param(b"2026-11-23T11:48:00Z stdout F \n", ("stdout", False, b""), id="empty-msg"),
        pytest.param(b"2026-11-23T11:48:00Z stdout P:x y", ("stdout", True, b"y"), id="tag-list"),
        pytest.param(b"2026-11-23T11:48:00Z stdout Q y", ("stdout", False, b"y"), id="unknown-tag"),
        pytest.param(b"2026-11-23T11:48:00Z stdout F  a\r", ("stdout", False, b" a\r"), id="keep"),
    ],
)
def test_parse_cri_line(line: bytes, expected: tuple[str, bool, bytes]) -> None:
    parsed = parse_cri_line(line)
    assert (parsed.stream, parsed.partial, parsed.message) == expected
    assert parsed.timestamp_ns == parse_rfc3339nano(parsed.timestamp)
    expected_class = {"stdout": 1, "stderr": 2}[expected[0]] | (4 if expected[1] else 0)
    assert classify_cri_line(line[:64]) == expected_class


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        pytest.param(b"garbage\n", "timestamp", id="no-spaces"),
        pytest.param(b"2026-11-23T11:48:00Z stdout\n", "stream", id="no-tag"),
        pytest.param(b"2026-11-23T11:48:00Z stdout F\n", "tag", id="no-space-after-tag"),
        pytest.param(b"2026-11-23T11:48:00Z stdin F x\n", "stream", id="bad-stream"),
        pytest.param(b"yesterday stdout F x\n", "RFC3339Nano", id="bad-timestamp"),
    ],
)
def test_parse_cri_line_rejects(line: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cri_line(line)


@PROPS
@given(
    st.sampled_from(["stdout", "stderr"]),
    st.integers(0, 2**63 - 1),
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")),
    st.booleans(),
)
def test_cri_line_round_trip(stream: str, ns: int, message: bytes, partial: bool) -> None:
    parsed = parse_cri_line(encode_cri_line(stream, ns, message, partial=partial))
    assert (parsed.stream, parsed.timestamp_ns, parsed.message, parsed.partial) == (
        stream,
        ns,
        message,
        partial,
    )


@PROPS
@given(
    st.sampled_from(["stdout", "stderr"]),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
    st.integers(1, 50),
)
def test_cri_event_split_like_containerd(stream: str, message: bytes, max_line: int) -> None:
    data = encode_cri_event(stream, NS_2026, message, max_line=max_line)
    lines = [parse_cri_line(line) for line in lines_of(data)]
    assert all(len(line.message) <= max_line for line in lines)
    assert [line.partial for line in lines] == [True] * (len(lines) - 1) + [False]
    assert all(line.message for line in lines[:-1])
    assert len(lines) == max(1, -(-len(message) // max_line))
    assert b"".join(line.message for line in lines) == message
    assert list(decode_cri(data.split(b"\n"))) == [(stream, message)]
    assert make_framer("cri").feed(data) == [len(data)]


def test_cri_event_16k_default() -> None:
    message = b"m" * (16384 * 2 + 1)
    lines = encode_cri_event("stdout", NS_2026, message).splitlines()
    assert [len(parse_cri_line(line).message) for line in lines] == [16384, 16384, 1]
    exact = encode_cri_event("stdout", NS_2026, b"m" * 16384).splitlines()
    assert len(exact) == 1 and b" F " in exact[0]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: encode_cri_line("stdin", 0, b"x"), id="bad-stream"),
        pytest.param(lambda: encode_cri_line("stdout", 0, b"a\nb"), id="newline-in-line"),
        pytest.param(lambda: encode_cri_event("stdout", 0, b"a\nb"), id="newline-in-event"),
        pytest.param(lambda: encode_cri_event("stdout", 0, b"a", max_line=0), id="max-line-0"),
        pytest.param(lambda: encode_json_entry("both", 0, b"a"), id="json-bad-stream"),
        pytest.param(lambda: encode_json_event("stdout", 0, b"a\n"), id="json-newline"),
    ],
)
def test_encoders_reject(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


# -- docker json-file ------------------------------------------------------------------------


def test_json_entry_matches_dockerd_layout() -> None:
    line = encode_json_entry("stdout", NS_2026 + 120_000_000, b'say "hi" <b> & \xc3\xa9\t\n')
    assert line == (
        b'{"log":"say \\"hi\\" \\u003cb\\u003e \\u0026 \xc3\xa9\\t\\n",'
        b'"stream":"stdout","time":"2026-11-23T11:48:00.12Z"}\n'
    )
    assert json.loads(line) == {
        "log": 'say "hi" <b> & \u00e9\t\n',
        "stream": "stdout",
        "time": "2026-11-23T11:48:00.12Z",
    }


@PROPS
@given(st.sampled_from(["stdout", "stderr"]), st.integers(0, 2**63 - 1), st.binary(max_size=300))
def test_json_entry_round_trip_is_lossless_for_any_bytes(stream: str, ns: int, log: bytes) -> None:
    line = encode_json_entry(stream, ns, log)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    json.loads(line)  # valid JSON for any reader
    line.decode("utf-8")  # valid UTF-8 even when `log` is not
    entry = parse_json_entry(line)
    assert (entry.stream, entry.timestamp_ns, entry.log) == (stream, ns, log)
    assert entry.partial == (not log.endswith(b"\n"))
    expected_class = {"stdout": 1, "stderr": 2}[stream] | (4 if entry.partial else 0)
    assert classify_json_line(line) == expected_class
    assert event_timestamp_ns(line, "json-file") == ns


@PROPS
@given(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
    st.integers(1, 40),
)
def test_json_event_split_and_support_decoder(message: bytes, max_line: int) -> None:
    data = encode_json_event("stderr", NS_2026, message, max_line=max_line)
    entries = [parse_json_entry(line) for line in lines_of(data)]
    assert [e.partial for e in entries] == [True] * (len(entries) - 1) + [False]
    assert b"".join(e.log for e in entries) == message + b"\n"
    assert list(decode_json_file(lines_of(data))) == [("stderr", message)]
    assert make_framer("json-file").feed(data) == [len(data)]


def test_decode_json_bytes_replaces_foreign_surrogates() -> None:
    assert decode_json_bytes("a\udc80") == b"a\x80"
    assert decode_json_bytes("a\ud800") == b"a?"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        pytest.param(b"{not json}\n", "not valid JSON", id="not-json"),
        pytest.param(b"[1]\n", "object", id="array"),
        pytest.param(b'{"log":1,"stream":"stdout","time":"x"}\n', "log", id="log-not-string"),
        pytest.param(b'{"log":"a","stream":"x","time":"x"}\n', "stream", id="bad-stream"),
        pytest.param(b'{"log":"a","stream":"stdout"}\n', "time", id="no-time"),
        pytest.param(b'{"log":"a","stream":"stdout","time":"now"}\n', "RFC3339", id="bad-time"),
        pytest.param(
            b'{"log":"\xff","stream":"stdout","time":"x"}\n', "JSON", id="raw-invalid-utf8"
        ),
    ],
)
def test_parse_json_entry_rejects(line: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_json_entry(line)


# -- event_timestamp_ns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fmt", "expected"),
    [
        pytest.param(b"2026-11-23T11:48:00Z stdout F x\n", "cri", NS_2026, id="cri"),
        pytest.param(b"2026-11-23T11:48:00Z", "cri", None, id="cri-no-space"),
        pytest.param(b"garbage line\n", "cri", None, id="cri-garbage"),
        pytest.param(
            b'{"log":"\\"time\\":\\"x\\"","stream":"stdout","time":"2026-11-23T11:48:00Z"}\n',
            "json-file",
            NS_2026,
            id="json-time-key-inside-log-is-escaped",
        ),
        pytest.param(b'{"log":"x"}\n', "json-file", None, id="json-no-time"),
        pytest.param(b"2026-11-23T11:48:00Z stdout F x\n", "raw", None, id="raw-has-no-time"),
    ],
)
def test_event_timestamp_ns(line: bytes, fmt: str, expected: int | None) -> None:
    assert event_timestamp_ns(line, fmt) == expected
