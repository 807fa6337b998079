"""CRI log lines and docker json-file entries: encode, parse, and their RFC3339Nano timestamps.

The one codec of the three: every writer, reader, framer and HTTP/CLI path reads and
writes them here, so one line or time means the same everywhere. Byte-compatible with
what containerd and dockerd write, so a reader can serve either, and a writer
(`logvold run`/`driver`) can produce them.

Parsing is as strict as the Go programs on the other side (kubelet, containerd, the
API server): `T` and `Z` upper case, `.` before the fraction, a valid date, offsets
within +-23:59. Each parser has a raising form (`parse_*`, the reason in the message)
and a form for hot loops that answers None (`rfc3339nano_ns`, `split_cri_line`,
`split_json_entry`); both apply the same grammar.
"""

from __future__ import annotations

import json
import re
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


def _date_time_text(seconds: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` (UTC) of seconds since the epoch."""
    days, rem = divmod(seconds, 86400)
    d = datetime.fromordinal(days + _EPOCH_DAYS)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}"


def format_rfc3339nano(ts: datetime | int) -> str:
    """UTC time as Go's time.RFC3339Nano: fraction without trailing zeros, none if zero.

    `2026-11-23T11:48:00.1234Z`, `2026-11-23T11:48:00Z` - what containerd and
    dockerd write (for a node whose clock is UTC).
    """
    seconds, frac = divmod(timestamp_ns(ts), _NS)
    text = _date_time_text(seconds)
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def format_rfc3339nano_fixed(ns: int) -> str:
    """UTC time with always nine fraction digits: the kubelet's `timestamps=true` prefix
    (its RFC3339NanoFixed), so the columns of a `kubectl logs --timestamps` line up."""
    seconds, frac = divmod(ns, _NS)
    return f"{_date_time_text(seconds)}.{frac:09d}Z"


def format_rfc3339nano_bytes(ts: datetime | int) -> bytes:
    return format_rfc3339nano(ts).encode("ascii")


_TIME_PATTERN = (
    rb"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})"
    rb"(?:\.([0-9]+))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
"""The RFC3339Nano grammar of every time read (files, query parameters, flags); ranges
(a real date, hours, offsets) are checked by _seconds_of."""
_TIME = re.compile(_TIME_PATTERN)
_seconds_cache: dict[bytes, int] = {}
_SECONDS_CACHE_MAX = 4096


def _epoch_seconds(head: bytes) -> int | None:
    """Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS` (digits already matched, UTC);
    None if it is not a real date and time.

    Cached (the caller looks first): the lines of a log share their seconds, so a read
    checks each once.
    """
    hour, minute, second = int(head[11:13]), int(head[14:16]), int(head[17:19])
    if hour > 23 or minute > 59 or second > 59:  # Go refuses a leap second too
        return None
    try:  # checks the month, the day and Feb 29
        days = datetime(int(head[0:4]), int(head[5:7]), int(head[8:10])).toordinal()
    except ValueError:
        return None
    seconds = (days - _EPOCH_DAYS) * 86400 + hour * 3600 + minute * 60 + second
    if len(_seconds_cache) >= _SECONDS_CACHE_MAX:
        _seconds_cache.clear()
    _seconds_cache[head] = seconds
    return seconds


def _seconds_of(head: bytes, sign: bytes | None, off_h: bytes, off_m: bytes) -> int | None:
    """Whole seconds since the epoch (UTC) of the groups of _TIME_PATTERN; None if a
    range is wrong (the date, the time of day, the offset)."""
    seconds = _seconds_cache.get(head)
    if seconds is None:
        seconds = _epoch_seconds(head)
        if seconds is None:
            return None
    if sign is not None:
        hours, minutes = int(off_h), int(off_m)
        if hours > 23 or minutes > 59:
            return None
        offset = hours * 3600 + minutes * 60
        seconds += -offset if sign == b"+" else offset
    return seconds


def rfc3339nano_ns(text: bytes) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time as Go's time.Parse reads
    RFC3339Nano; None if `text` is not one. The grammar of every timestamp logvold reads.

    `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)`: ASCII digits, `T` and `Z` upper
    case (Go and the kubelet refuse `t`/`z`), `.` before the fraction (not `,`), any
    number of fraction digits (beyond nine truncated, as Go does), a real date (years
    0001-9999), hours 00-23, offsets within +-23:59.
    """
    if text[-1:] == b"Z":  # what containerd and dockerd write: a cache look, no regex
        seconds = _seconds_cache.get(text[:19])
        if seconds is not None:
            if len(text) == 20:
                return seconds * _NS
            digits = text[20:-1]
            if text[19:20] == b"." and digits.isdigit():  # bytes.isdigit: ASCII only
                return seconds * _NS + int(digits[:9].ljust(9, b"0"))
    m = _TIME.fullmatch(text)
    if m is None:
        return None
    head, digits, sign, off_h, off_m = m.groups()
    seconds = _seconds_of(head, sign, off_h, off_m)
    if seconds is None:
        return None
    return seconds * _NS + (int(digits[:9].ljust(9, b"0")) if digits else 0)


def _valid_time(text: bytes) -> bool:
    """rfc3339nano_ns(text) is not None, without computing the nanoseconds."""
    if text[-1:] == b"Z" and text[:19] in _seconds_cache:
        # The cache holds only checked `YYYY-MM-DDTHH:MM:SS`: the fast path accepts a
        # subset of what the pattern does, and anything else goes to the pattern.
        digits = text[20:-1]
        if len(text) == 20 or (text[19:20] == b"." and digits.isdigit()):
            return True
    m = _TIME.fullmatch(text)
    return m is not None and _seconds_of(m[1], m[3], m[4], m[5]) is not None


def parse_rfc3339nano(text: str | bytes) -> int:
    """Nanoseconds since the epoch (UTC) of an RFC3339Nano time (see rfc3339nano_ns);
    ValueError naming the text otherwise."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    ns = rfc3339nano_ns(raw)
    if ns is None:
        raise ValueError(f"not an RFC3339Nano timestamp: {text!r:.60}")
    return ns


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


CRI_HEAD_BYTES = 64
"""`<timestamp> <stream> <tag> ` must fit in this many bytes of a CRI line (containerd's
is at most 45): readers and framers look no further, so a longer head is malformed
for all of them alike, and a hostile line costs a bounded look."""


_STREAM_FIELDS: dict[bytes, Stream] = {b"stdout ": "stdout", b"stderr ": "stderr"}
_P, _COLON = ord("P"), ord(":")


def split_cri_line(line: bytes) -> tuple[bytes, Stream, bool, int] | None:
    """(timestamp text, stream, partial, message start) of a CRI line; None if malformed.

    `<RFC3339Nano> <stdout|stderr> <tag> <message>`, the head up to the message within
    CRI_HEAD_BYTES, so a line's head is enough (the framer keeps no more). The tag is
    `:`-separated and only its first part counts: `P` = partial, anything else full
    (the kubelet's reading, forward compatible). Few steps: every line read goes here.
    """
    sp1 = line.find(b" ", 0, CRI_HEAD_BYTES)
    stream = _STREAM_FIELDS.get(line[sp1 + 1 : sp1 + 8])  # no space at all: never a key
    if stream is None:
        return None
    tag = sp1 + 8
    sp3 = line.find(b" ", tag, CRI_HEAD_BYTES)
    if sp3 < 0:
        return None
    ts = line[:sp1]
    if not _valid_time(ts):
        return None
    partial = line[tag] == _P and (sp3 == tag + 1 or line[tag + 1] == _COLON)
    return ts, stream, partial, sp3 + 1


def _cri_problem(line: bytes) -> str:
    """Why split_cri_line refused `line`, for parse_cri_line's message."""
    sp1 = line.find(b" ", 0, CRI_HEAD_BYTES)
    if sp1 <= 0:
        return "CRI line without a timestamp"
    sp2 = line.find(b" ", sp1 + 1, CRI_HEAD_BYTES)
    if sp2 < 0:
        return "CRI line without a stream"
    if line[sp1 + 1 : sp2] not in (b"stdout", b"stderr"):
        return f"CRI line with unexpected stream {line[sp1 + 1 : sp2][:20]!r}"
    if line.find(b" ", sp2 + 1, CRI_HEAD_BYTES) < 0:
        return f"CRI line without a tag (or a head longer than {CRI_HEAD_BYTES} bytes)"
    return f"CRI line with a time that is not RFC3339Nano: {line[:sp1][:40]!r}"


def parse_cri_line(line: bytes) -> CriLine:
    """Parse `<RFC3339Nano> <stdout|stderr> <tag> <message>` with or without its trailing newline.

    The tag is `:`-separated; its first part `P` means partial, anything else
    full (the kubelet's reading). Raises ValueError saying what is wrong.
    """
    body = line[:-1] if line.endswith(b"\n") else line
    fields = split_cri_line(body)
    if fields is None:
        raise ValueError(f"{_cri_problem(body)}: {body[:80]!r}")
    ts_text, stream, partial, at = fields
    return CriLine(parse_rfc3339nano(ts_text), stream, partial, body[at:], ts_text)


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


def _json_fields(line: bytes) -> tuple[bytes, Stream, bytes] | str:
    """(time text, stream, log bytes) of a json-file line, or why it is not one."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return f"json-file entry is not valid JSON: {exc}"
    if not isinstance(entry, dict):
        return "json-file entry is not a JSON object"
    log = entry.get("log")
    stream = entry.get("stream")
    time_text = entry.get("time")
    if not isinstance(log, str):
        return 'json-file entry without a string "log"'
    if stream == "stdout":
        checked: Stream = "stdout"
    elif stream == "stderr":
        checked = "stderr"
    else:
        return f'json-file entry with unexpected "stream" {stream!r:.20}'
    if not isinstance(time_text, str):
        return 'json-file entry without a string "time"'
    time_bytes = time_text.encode("utf-8", "replace")
    if not _valid_time(time_bytes):
        return f'json-file entry with a "time" that is not RFC3339Nano: {time_text!r:.60}'
    return time_bytes, checked, decode_json_bytes(log)


def split_json_entry(line: bytes) -> tuple[bytes, Stream, bytes] | None:
    """(time text, stream, log bytes) of one json-file line; None if malformed. The same
    grammar as parse_json_entry (a `log` string, stream stdout or stderr, an RFC3339Nano
    `time`), without an exception."""
    fields = _json_fields(line)
    return None if isinstance(fields, str) else fields


def parse_json_entry(line: bytes) -> JsonFileEntry:
    """Parse one json-file line (with or without its newline). Raises ValueError."""
    fields = _json_fields(line)
    if isinstance(fields, str):
        raise ValueError(fields)
    time_text, stream, log = fields
    return JsonFileEntry(parse_rfc3339nano(time_text), stream, log, time_text)


# -- the time of a line -------------------------------------------------------------


def event_timestamp_ns(line: bytes, fmt: str) -> int | None:
    """Time of a CRI line or json-file entry (its event's time when it is the first
    piece); None for a malformed line and for `raw` (no timestamps).

    A CRI line needs only its first CRI_HEAD_BYTES bytes. The line is checked as a
    whole, so a line the reader would serve as malformed has no time here either.
    """
    if fmt == "cri":
        fields = split_cri_line(line)
        return None if fields is None else rfc3339nano_ns(fields[0])
    if fmt == "json-file":
        entry = split_json_entry(line)
        return None if entry is None else rfc3339nano_ns(entry[0])
    return None
