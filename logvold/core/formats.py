"""CRI log lines and docker json-file entries: encode, parse, and their RFC3339Nano timestamps.

Byte-compatible with what containerd and dockerd write, so a reader can serve
either, and a writer (`logvold run`/`driver`) can produce them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
#: containerd's default max_container_log_line_size: message bytes per CRI line.
CRI_MAX_LINE = 16384
_NS = 1_000_000_000
_EPOCH_DAYS = 719_163  # date(1970, 1, 1).toordinal()


# -- timestamps -------------------------------------------------------------


def timestamp_ns(ts: datetime | int) -> int:
    """Nanoseconds since the epoch from an int (taken as is) or a datetime (naive = UTC)."""
    if isinstance(ts, bool):
        raise TypeError("timestamp must be a datetime or an int of nanoseconds, not bool")
    if isinstance(ts, int):
        return ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    offset = ts.utcoffset() or timedelta(0)
    days = ts.toordinal() - _EPOCH_DAYS
    seconds = days * 86400 + ts.hour * 3600 + ts.minute * 60 + ts.second
    seconds -= offset.days * 86400 + offset.seconds
    return (seconds * 1_000_000 + ts.microsecond - offset.microseconds) * 1000


def format_rfc3339nano(ts: datetime | int) -> str:
    """UTC time as Go's time.RFC3339Nano: fraction without trailing zeros, none if zero.

    `2026-11-23T11:48:00.1234Z`, `2026-11-23T11:48:00Z` - what containerd and
    dockerd write (for a node whose clock is UTC).
    """
    ns = timestamp_ns(ts)
    seconds, frac = divmod(ns, _NS)
    days, rem = divmod(seconds, 86400)
    d = datetime.fromordinal(days + _EPOCH_DAYS)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}"
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def format_rfc3339nano_bytes(ts: datetime | int) -> bytes:
    return format_rfc3339nano(ts).encode("ascii")


_DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _digits(text: bytes, i: int, n: int) -> int:
    part = text[i : i + n]
    if len(part) != n or not part.isdigit():
        raise ValueError
    return int(part)


def parse_rfc3339nano(text: str | bytes) -> int:
    """Nanoseconds since the epoch (UTC) from an RFC 3339 timestamp as Go parses RFC3339Nano.

    Accepts `Z`/`z` or a `+hh:mm`/`-hh:mm` offset and any number of fraction
    digits (beyond nine are truncated, as Go does). Raises ValueError.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    try:
        year = _digits(raw, 0, 4)
        month = _digits(raw, 5, 2)
        day = _digits(raw, 8, 2)
        hour = _digits(raw, 11, 2)
        minute = _digits(raw, 14, 2)
        second = _digits(raw, 17, 2)
        if raw[4:5] != b"-" or raw[7:8] != b"-" or raw[10:11] not in (b"T", b"t"):
            raise ValueError
        if raw[13:14] != b":" or raw[16:17] != b":":
            raise ValueError
        i = 19
        frac_ns = 0
        if raw[i : i + 1] in (b".", b","):
            j = i + 1
            while j < len(raw) and 0x30 <= raw[j] <= 0x39:
                j += 1
            digits = raw[i + 1 : j]
            if not digits:
                raise ValueError
            frac_ns = int(digits[:9].ljust(9, b"0"))
            i = j
        zone = raw[i:]
        if zone in (b"Z", b"z"):
            offset_s = 0
        elif len(zone) == 6 and zone[0:1] in (b"+", b"-") and zone[3:4] == b":":
            oh = _digits(zone, 1, 2)
            om = _digits(zone, 4, 2)
            if oh > 23 or om > 59:
                raise ValueError
            offset_s = (oh * 3600 + om * 60) * (1 if zone[0:1] == b"+" else -1)
        else:
            raise ValueError
        if not (1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month]):
            raise ValueError
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError
        days = datetime(year, month, day).toordinal() - _EPOCH_DAYS  # checks Feb 29
    except ValueError:
        raise ValueError(f"not an RFC3339Nano timestamp: {text!r:.60}") from None
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset_s
    return seconds * _NS + frac_ns


def datetime_from_ns(ns: int) -> datetime:
    """Aware UTC datetime (microsecond precision) from nanoseconds since the epoch."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


# -- CRI --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CriLine:
    """One parsed CRI log line."""

    timestamp_ns: int
    """Nanoseconds since the epoch, UTC."""
    stream: Stream
    partial: bool
    """True for a `P` line: the message continues in the next line of the same stream."""
    message: bytes
    """The message without the line's trailing newline."""
    timestamp: bytes
    """The timestamp exactly as written (for `timestamps=true` output)."""


def _check_stream(stream: str) -> Stream:
    if stream == "stdout":
        return "stdout"
    if stream == "stderr":
        return "stderr"
    raise ValueError(f"stream must be stdout or stderr, got {stream!r}")


def encode_cri_line(
    stream: str, ts: datetime | int, message: bytes, *, partial: bool = False
) -> bytes:
    """`<RFC3339Nano> <stream> <P|F> <message>\\n`; `message` must not contain a newline."""
    _check_stream(stream)
    if b"\n" in message:
        raise ValueError("a CRI line message must not contain a newline")
    tag = b" P " if partial else b" F "
    return format_rfc3339nano_bytes(ts) + b" " + stream.encode() + tag + message + b"\n"


def encode_cri_event(
    stream: str, ts: datetime | int, message: bytes, max_line: int = CRI_MAX_LINE
) -> bytes:
    """One event as containerd writes it: `P` lines of `max_line` message bytes, then an `F` line.

    `message` is the event without its newline. Like containerd, a message of
    exactly k * max_line bytes ends with a full `F` line of max_line bytes (no
    empty line), and an empty message is one `F` line with an empty message.
    """
    if max_line < 1:
        raise ValueError(f"max_line must be at least 1, got {max_line}")
    _check_stream(stream)
    if b"\n" in message:
        raise ValueError("a CRI event message must not contain a newline (one event per line)")
    head = format_rfc3339nano_bytes(ts) + b" " + stream.encode()
    if len(message) <= max_line:
        return head + b" F " + message + b"\n"
    parts: list[bytes] = []
    last = (len(message) - 1) // max_line * max_line
    for i in range(0, last, max_line):
        parts.append(head + b" P " + message[i : i + max_line] + b"\n")
    parts.append(head + b" F " + message[last:] + b"\n")
    return b"".join(parts)


def parse_cri_line(line: bytes) -> CriLine:
    """Parse `<RFC3339Nano> <stdout|stderr> <tag> <message>` with or without its trailing newline.

    The tag is `:`-separated; its first part `P` means partial, anything else
    full (the kubelet's reading). Raises ValueError saying what is wrong.
    """
    body = line[:-1] if line.endswith(b"\n") else line
    sp1 = body.find(b" ")
    if sp1 < 0:
        raise ValueError(f"CRI line without a timestamp: {body[:80]!r}")
    ts_text = body[:sp1]
    sp2 = body.find(b" ", sp1 + 1)
    if sp2 < 0:
        raise ValueError(f"CRI line without a stream: {body[:80]!r}")
    stream_text = body[sp1 + 1 : sp2]
    if stream_text == b"stdout":
        stream: Stream = "stdout"
    elif stream_text == b"stderr":
        stream = "stderr"
    else:
        raise ValueError(f"CRI line with unexpected stream {stream_text[:20]!r}")
    sp3 = body.find(b" ", sp2 + 1)
    if sp3 < 0:
        raise ValueError(f"CRI line without a tag: {body[:80]!r}")
    tag = body[sp2 + 1 : sp3]
    ns = parse_rfc3339nano(ts_text)
    partial = tag.split(b":", 1)[0] == b"P"
    return CriLine(ns, stream, partial, body[sp3 + 1 :], ts_text)


# -- docker json-file -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JsonFileEntry:
    """One parsed docker json-file entry."""

    timestamp_ns: int
    stream: Stream
    log: bytes
    """The `log` value as bytes, its trailing newline included when present."""
    timestamp: bytes
    """The `time` value exactly as written."""

    @property
    def partial(self) -> bool:
        """True when `log` lacks a trailing newline: the event continues in the next entry."""
        return not self.log.endswith(b"\n")


# Go's encoding/json escapes these for HTML safety; dockerd's output has them.
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _json_string(data: bytes) -> bytes:
    """JSON string for arbitrary bytes, lossless via surrogateescape.

    Valid UTF-8 is written as UTF-8 (like dockerd). Each byte that is not
    valid UTF-8 becomes a lone-surrogate escape `\\udcXX` (Python's
    surrogateescape); decode_json_bytes() turns it back into the same byte.
    Go readers see U+FFFD there, which is what dockerd itself would have
    written for such bytes.
    """
    text = data.decode("utf-8", "surrogateescape")
    dumped = json.dumps(text, ensure_ascii=False).translate(_GO_ESCAPES)
    return dumped.encode("utf-8", "backslashreplace")


def decode_json_bytes(value: str) -> bytes:
    """Bytes of a decoded JSON string value, inverting _json_string's surrogateescape.

    A lone surrogate that is not in U+DC80..U+DCFF (never written by us) is
    replaced with U+FFFD rather than failing.
    """
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


def encode_json_entry(stream: str, ts: datetime | int, log: bytes) -> bytes:
    """`{"log":"...","stream":"...","time":"..."}\\n` in dockerd's key order and spacing.

    `log` carries its trailing newline when the event is complete; without it
    the entry is partial and continues in the next entry of the same stream.
    """
    _check_stream(stream)
    return (
        b'{"log":'
        + _json_string(log)
        + b',"stream":"'
        + stream.encode()
        + b'","time":"'
        + format_rfc3339nano_bytes(ts)
        + b'"}\n'
    )


def encode_json_event(
    stream: str, ts: datetime | int, message: bytes, max_line: int = CRI_MAX_LINE
) -> bytes:
    """One event (`message` without newline) as dockerd writes it: partial entries of
    `max_line` bytes without newline, then the last with the newline."""
    if max_line < 1:
        raise ValueError(f"max_line must be at least 1, got {max_line}")
    if b"\n" in message:
        raise ValueError("a json-file event message must not contain a newline")
    if len(message) <= max_line:
        return encode_json_entry(stream, ts, message + b"\n")
    last = (len(message) - 1) // max_line * max_line
    parts = [
        encode_json_entry(stream, ts, message[i : i + max_line]) for i in range(0, last, max_line)
    ]
    parts.append(encode_json_entry(stream, ts, message[last:] + b"\n"))
    return b"".join(parts)


def parse_json_entry(line: bytes) -> JsonFileEntry:
    """Parse one json-file line (with or without its newline). Raises ValueError."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"json-file entry is not valid JSON: {exc}") from None
    if not isinstance(entry, dict):
        raise ValueError("json-file entry is not a JSON object")
    log = entry.get("log")
    stream = entry.get("stream")
    time_text = entry.get("time")
    if not isinstance(log, str):
        raise ValueError('json-file entry without a string "log"')
    if not isinstance(stream, str) or stream not in STREAMS:
        raise ValueError(f'json-file entry with unexpected "stream" {stream!r:.20}')
    if not isinstance(time_text, str):
        raise ValueError('json-file entry without a string "time"')
    ns = parse_rfc3339nano(time_text)
    return JsonFileEntry(ns, _check_stream(stream), decode_json_bytes(log), time_text.encode())


# -- cheap timestamp extraction for binary search ----------------------------

_JSON_TIME_KEY = b'"time":"'


def event_timestamp_ns(line: bytes, fmt: str) -> int | None:
    """Timestamp of a CRI line or json-file entry without parsing the rest; None if unknown.

    `raw` has no timestamps (always None). For json-file, the last `"time":"`
    is used: dockerd writes `time` last, and a key inside a string value would
    have escaped quotes.
    """
    if fmt == "cri":
        sp = line.find(b" ", 0, 64)
        if sp <= 0:
            return None
        ts = line[:sp]
    elif fmt == "json-file":
        k = line.rfind(_JSON_TIME_KEY)
        if k < 0:
            return None
        k += len(_JSON_TIME_KEY)
        q = line.find(b'"', k, k + 64)
        if q < 0:
            return None
        ts = line[k:q]
    else:
        return None
    try:
        return parse_rfc3339nano(ts)
    except ValueError:
        return None
