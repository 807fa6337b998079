"""Event framing: boundaries independent of chunking, fast paths, backward search, bounds."""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logvold.core import framing
from logvold.core.formats import (
    CRI_HEAD_BYTES,
    encode_cri_event,
    encode_cri_line,
    encode_json_entry,
    encode_json_event,
    rfc3339nano_ns,
)
from logvold.core.framing import (
    LineFramer,
    RawFramer,
    event_boundaries_in,
    iter_events,
    last_boundary_backward,
    make_framer,
)
from tests.support.events import chunked, decode_cri, decode_json_file, event_stream, verify

#: Raise for a long soak: LOGVOLD_HYPOTHESIS_EXAMPLES=5000 pytest tests/unit/test_framing.py
MAX_EXAMPLES = int(os.environ.get("LOGVOLD_HYPOTHESIS_EXAMPLES", "200"))
PROPS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- an independent reference model --------------------------------------------------


def reference_raw(data: bytes, d: bytes, m: int) -> list[int]:
    """bytes.split semantics event by event, with a cut when an event reaches m bytes."""
    s = 0
    out: list[int] = []
    while True:
        i = data.find(d, s, s + m)
        if i >= 0:
            s = i + len(d)
        elif len(data) - s >= m:
            s += m
        else:
            return out
        out.append(s)


def _reference_class(line: bytes, fmt: str, m: int) -> tuple[str, bool] | None:
    """(stream, partial) of a whole line; None if malformed.

    The framer's contract (the one codec's grammar): a cri line needs `<ts> <stream>
    <tag> ` within its first 64 bytes with an RFC3339Nano `ts`; a json-file line is a
    JSON object with a string `log`, `stream` stdout or stderr and an RFC3339Nano
    `time`, at most m bytes. Anything else is malformed: an event of its own.
    """
    if fmt == "cri":
        fields = line[:64].split(b" ", 3)
        if len(fields) < 4 or not fields[0] or fields[1] not in (b"stdout", b"stderr"):
            return None
        if rfc3339nano_ns(fields[0]) is None:
            return None
        return fields[1].decode(), fields[2].split(b":")[0] == b"P"
    if len(line) > m:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("log"), str):
        return None
    if entry.get("stream") not in ("stdout", "stderr"):
        return None
    time_text = entry.get("time")
    if not isinstance(time_text, str) or rfc3339nano_ns(time_text.encode()) is None:
        return None
    return entry["stream"], not entry["log"].endswith("\n")


def reference_lines(data: bytes, fmt: str, m: int) -> list[int]:
    """cri / json-file: boundary after a line when no stream is open; a cut closes all."""
    s, out, line_start = 0, [], 0
    opened: set[str] = set()
    while (nl := data.find(b"\n", line_start)) >= 0:
        e = nl + 1
        while s + m < e:
            s += m
            out.append(s)
            opened.clear()
        cls = _reference_class(data[line_start:e], fmt, m)
        if cls is not None:
            (opened.add if cls[1] else opened.discard)(cls[0])
        if not opened or s + m == e:
            s = e
            out.append(e)
            opened.clear()
        line_start = e
    while s + m <= len(data):
        s += m
        out.append(s)
    return out


def reference(data: bytes, fmt: str, d: bytes, m: int) -> list[int]:
    return reference_raw(data, d, m) if fmt == "raw" else reference_lines(data, fmt, m)


# -- generators -------------------------------------------------------------------------

DELIMITERS = [b"\n", b"\x1e", b"\n\n", b"aa", b"aba", b"\r\n", b"abab"]


@st.composite
def raw_streams(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    d = draw(st.sampled_from(DELIMITERS))
    alphabet = sorted(set(d) | {ord("x")})
    data = bytes(draw(st.lists(st.sampled_from(alphabet), max_size=200)))
    m = draw(st.integers(len(d), 40))
    return data, d, m


def _cri_lines(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["line", "line", "line", "event", "garbage"]))
        stream = draw(st.sampled_from(["stdout", "stderr"]))
        msg = draw(st.binary(max_size=30)).replace(b"\n", b" ")
        ts = draw(st.integers(0, 2**62))
        if kind == "line":
            parts.append(encode_cri_line(stream, ts, msg, partial=draw(st.booleans())))
        elif kind == "event":
            parts.append(encode_cri_event(stream, ts, msg, max_line=draw(st.integers(1, 8))))
        else:
            parts.append(msg + b"\n")
    return b"".join(parts)


def _json_lines(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["entry", "entry", "event", "garbage", "truncated"]))
        stream = draw(st.sampled_from(["stdout", "stderr"]))
        msg = draw(st.binary(max_size=20))
        ts = draw(st.integers(0, 2**62))
        if kind == "entry":
            parts.append(encode_json_entry(stream, ts, msg))
        elif kind == "event":
            msg = msg.replace(b"\n", b" ")
            parts.append(encode_json_event(stream, ts, msg, max_line=draw(st.integers(1, 8))))
        elif kind == "truncated":  # a writer that died mid-entry, then a newline
            entry = encode_json_entry(stream, ts, msg)
            parts.append(entry[: draw(st.integers(0, len(entry) - 1))] + b"\n")
        else:
            parts.append(b'{"log":"x' + msg.replace(b"\n", b" ") + b"\n")
    return b"".join(parts)


@st.composite
def any_streams(draw: st.DrawFn) -> tuple[str, bytes, bytes, int]:
    fmt = draw(st.sampled_from(["raw", "cri", "json-file"]))
    if fmt == "raw":
        data, d, m = draw(raw_streams())
        return fmt, data, d, m
    data = _cri_lines(draw) if fmt == "cri" else _json_lines(draw)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return fmt, data, b"\n", draw(st.integers(1, 400))


def cut_points(data: st.DataObject, n: int) -> list[int]:
    points = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=12))) | {0, n})
    return points


def chunks_of(data: bytes, points: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- table-driven cases -----------------------------------------------------------------

T0 = "2026-11-23T11:48:00.1Z"
JSON_A = b'{"log":"a","stream":"stdout","time":"' + T0.encode() + b'"}\n'
JSON_B = b'{"log":"b\\n","stream":"stdout","time":"' + T0.encode() + b'"}\n'


def cri(*specs: str) -> bytes:
    """CRI lines from specs like "oPa": o/e = stdout/stderr, then tag, then message."""
    names = {"o": "stdout", "e": "stderr"}
    out = b""
    for spec in specs:
        tag, msg = (spec[1:4], spec[4:]) if spec[2:3] == ":" else (spec[1], spec[2:])
        out += f"{T0} {names[spec[0]]} {tag} {msg}\n".encode()
    return out


def ends(*parts: bytes) -> list[int]:
    """Cumulative end offsets of `parts` laid end to end."""
    out, pos = [], 0
    for part in parts:
        pos += len(part)
        out.append(pos)
    return out


CASES = [
    pytest.param("raw", b"\n", 100, b"a\nbb\n\nc", [2, 5, 6], id="raw-newline"),
    pytest.param("raw", b"\n\n", 100, b"a\n\n\nb\n\n", [3, 7], id="raw-double-newline-leftmost"),
    pytest.param("raw", b"aa", 100, b"aaa", [2], id="raw-overlap-aaa"),
    pytest.param("raw", b"aa", 100, b"aaaa", [2, 4], id="raw-overlap-aaaa"),
    pytest.param("raw", b"\x1e", 100, b"r1\nx\x1er2\x1e", [5, 8], id="raw-record-separator"),
    pytest.param("raw", b"\n", 4, b"abcdefghij\n", [4, 8, 11], id="raw-cut-at-max"),
    pytest.param("raw", b"\n", 4, b"abc\n", [4], id="raw-exactly-max-not-cut"),
    pytest.param("raw", b"ab", 5, b"xxxxab", [5], id="raw-cut-inside-delimiter"),
    pytest.param(
        "cri", b"\n", 1000, cri("oPa", "oFb"), ends(cri("oPa", "oFb")), id="cri-partial-then-full"
    ),
    pytest.param(
        "cri",
        b"\n",
        1000,
        cri("oPa", "eFe", "oFb"),
        ends(cri("oPa", "eFe", "oFb")),
        id="cri-interleaved-other-stream-full-inside",
    ),
    pytest.param(
        "cri",
        b"\n",
        1000,
        cri("oPa", "ePe", "oFb", "eFf"),
        ends(cri("oPa", "ePe", "oFb", "eFf")),
        id="cri-interleaved-both-open",
    ),
    pytest.param(
        "cri",
        b"\n",
        1000,
        cri("oFa", "ePe", "oFb"),
        ends(cri("oFa")),
        id="cri-stderr-open-holds-the-event",
    ),
    pytest.param(
        "cri",
        b"\n",
        1000,
        cri("oFa") + b"garbage\n" + cri("eF:xe"),
        ends(cri("oFa"), b"garbage\n", cri("eF:xe")),
        id="cri-malformed-line-and-tag-suffix",
    ),
    pytest.param(
        "json-file",
        b"\n",
        1000,
        JSON_A + JSON_B,
        ends(JSON_A + JSON_B),
        id="json-partial-then-full",
    ),
    pytest.param(
        "json-file",
        b"\n",
        1000,
        b'{"stream":"stderr","log":"x\\n","time":"' + T0.encode() + b'"}\n',
        [64],
        id="json-other-key-order",
    ),
    pytest.param(
        "json-file",
        b"\n",
        1000,
        b'{"log":"a\\\\n","stream":"stdout","time":"' + T0.encode() + b'"}\n',
        [],
        id="json-escaped-backslash-n-is-partial",
    ),
]


@pytest.mark.parametrize(("fmt", "delimiter", "max_event_size", "data", "expected"), CASES)
def test_boundaries_table(
    fmt: str, delimiter: bytes, max_event_size: int, data: bytes, expected: list[int]
) -> None:
    assert make_framer(fmt, delimiter, max_event_size).feed(data) == expected
    assert reference(data, fmt, delimiter, max_event_size) == expected
    for size in (1, 2, 3, 7):
        framer = make_framer(fmt, delimiter, max_event_size)
        got = [e for i in range(0, len(data), size) for e in framer.feed(data[i : i + size])]
        assert got == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"fmt": "raw", "delimiter": b""}, "delimiter", id="empty-delimiter"),
        pytest.param(
            {"fmt": "raw", "delimiter": b"\n\n", "max_event_size": 1}, "max_event_size", id="m<d"
        ),
        pytest.param({"fmt": "cri", "max_event_size": 0}, "max_event_size", id="cri-zero-max"),
        pytest.param({"fmt": "syslog"}, "unknown log format", id="unknown-format"),
    ],
)
def test_make_framer_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_framer(**kwargs)  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------


@PROPS
@given(st.data())
def test_any_chunking_same_boundaries_and_events(data_strategy: st.DataObject) -> None:
    fmt, data, d, m = data_strategy.draw(any_streams())
    expected = reference(data, fmt, d, m)
    chunks = chunks_of(data, cut_points(data_strategy, len(data)))
    framer = make_framer(fmt, d, m)
    got: list[int] = []
    for chunk in chunks:
        got += framer.feed(chunk)
    assert got == expected
    last = expected[-1] if expected else 0
    assert framer.pending == len(data) - last
    assert framer.offset == len(data)
    events = list(iter_events(chunks, make_framer(fmt, d, m)))
    assert b"".join(events) == data[:last]
    assert [len(e) for e in events] == [b - a for a, b in itertools.pairwise([0, *expected])]
    assert event_boundaries_in(data, fmt, d, m) == expected


@PROPS
@given(st.data())
def test_last_boundary_of_a_slice_is_that_of_the_sliced_bytes(data_strategy: st.DataObject) -> None:
    """A writer frames buffer[start:stop] in place (no slice copied): same answers and
    state as feeding the slice itself, whatever surrounds it in the buffer."""
    data, d, m = data_strategy.draw(raw_streams())
    chunks = chunks_of(data, cut_points(data_strategy, len(data)))
    sliced, in_place = RawFramer(d, m), RawFramer(d, m)
    for chunk in chunks:
        head = data_strategy.draw(st.binary(max_size=8))
        tail = data_strategy.draw(st.binary(max_size=8))
        buffer = bytearray(head + chunk + tail)
        expected = sliced.last_boundary(chunk)
        assert in_place.last_boundary(buffer, len(head) + len(chunk), len(head)) == expected
        assert (in_place.pending, in_place.offset, in_place.split_count) == (
            sliced.pending,
            sliced.offset,
            sliced.split_count,
        )


@PROPS
@given(st.data())
def test_feed_and_last_boundary_agree(data_strategy: st.DataObject) -> None:
    fmt, data, d, m = data_strategy.draw(any_streams())
    chunks = chunks_of(data, cut_points(data_strategy, len(data)))
    slow, fast = make_framer(fmt, d, m), make_framer(fmt, d, m)
    for chunk in chunks:
        ends = slow.feed(chunk)
        assert fast.last_boundary(chunk) == (ends[-1] if ends else None)
        assert (fast.pending, fast.offset, fast.split_count) == (
            slow.pending,
            slow.offset,
            slow.split_count,
        )


@contextmanager
def small_blocks(size: int) -> Iterator[None]:
    saved = framing.BACKWARD_BLOCK
    framing.BACKWARD_BLOCK = size
    try:
        yield
    finally:
        framing.BACKWARD_BLOCK = saved


@PROPS
@given(st.data(), st.sampled_from([3, 16, 1 << 16]))
def test_backward_agrees_with_forward(data_strategy: st.DataObject, block: int) -> None:
    fmt, data, d, m = data_strategy.draw(any_streams())
    boundaries = [0, *reference(data, fmt, d, m)]
    start = data_strategy.draw(st.sampled_from(boundaries))
    end = data_strategy.draw(st.integers(start, len(data)))
    forward = reference(data[start:end], fmt, d, m)
    expected = start + forward[-1] if forward else None

    def read_at(offset: int, size: int) -> bytes:
        assert start <= offset and offset + size <= end, "read outside [start, end)"
        return data[offset : offset + size]

    with small_blocks(block):
        assert last_boundary_backward(read_at, start, end, fmt, d, m) == expected


@pytest.mark.parametrize("fmt", ["raw", "cri", "json-file"])
def test_backward_short_read_is_an_error(fmt: str) -> None:
    with pytest.raises(ValueError, match="short read"):
        last_boundary_backward(lambda _o, _n: b"", 0, 10, fmt)


def test_backward_reads_little_of_a_big_file() -> None:
    data = b"".join(event_stream(2000))  # ~330 KB of newline events
    read = []

    def read_at(offset: int, size: int) -> bytes:
        read.append(size)
        return data[offset : offset + size]

    end = len(data) - 5
    assert last_boundary_backward(read_at, 0, end, "raw") == data.rfind(b"\n", 0, end) + 1
    assert sum(read) <= 2 * framing.BACKWARD_BLOCK


# -- oversized events and bounded memory ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", "cri", "json-file"])
@pytest.mark.parametrize("use_fast_path", [False, True], ids=["feed", "last_boundary"])
def test_oversized_event_is_cut_counted_and_memory_bounded(fmt: str, use_fast_path: bool) -> None:
    m = 1000
    if fmt == "raw":
        data = b"x" * 10_500 + b"\n"
    elif fmt == "cri":
        data = encode_cri_event("stdout", 0, b"y" * 9_000, max_line=300)
    else:
        data = encode_json_event("stderr", 0, b"z" * 9_000, max_line=300)
    framer = make_framer(fmt, b"\n", m)
    bound = {"raw": 0, "cri": CRI_HEAD_BYTES, "json-file": m}[fmt]
    ends: list[int] = []
    rng = random.Random(4)
    for chunk in chunked([data], rng, max_chunk=700):
        if use_fast_path:
            last = framer.last_boundary(chunk)
            ends += [last] if last is not None else []
        else:
            ends += framer.feed(chunk)
        assert framer.buffered_bytes <= bound
        assert framer.pending < m
    assert ends[-1] == len(data)
    expected_cuts = len(reference(data, fmt, b"\n", m)) - 1
    assert framer.split_count == expected_cuts >= len(data) // m - 1


def test_huge_single_line_keeps_only_the_line_head() -> None:
    framer = LineFramer(framing.classify_json_line, whole_line=True, max_event_size=4096)
    for i in range(100):
        framer.feed(b'{"log":"' + b"q" * 1000)
        assert framer.buffered_bytes == (0 if i >= 4 else 1008 * (i + 1))
    assert framer.split_count == 100_800 // 4096
    assert framer.feed(b'","stream":"stdout","time":"x"}\n')  # malformed (too long) ends cleanly


def test_events_below_max_are_never_split() -> None:
    rng = random.Random(1)
    data = b"".join(b"x" * rng.randint(0, 2047) + b"\n" for _ in range(3000))
    framer = RawFramer(b"\n", 2048)
    for chunk in chunked([data], rng, max_chunk=65536):
        framer.last_boundary(chunk)
    assert framer.split_count == 0
    assert framer.pending == 0


# -- realistic streams from tests/support/events.py ---------------------------------------


@pytest.mark.parametrize("delimiter", [b"\n", b"\n\n", b"\x1e", b"\r\n"], ids=repr)
def test_iter_events_sequence_numbered(delimiter: bytes) -> None:
    events = list(event_stream(2000, seed=3, delimiter=delimiter))
    rng = random.Random(9)
    got = list(iter_events(chunked(events, rng, max_chunk=5000), make_framer("raw", delimiter)))
    assert got == events
    report = verify(e[: -len(delimiter)] for e in got)
    assert report.ok, report.summary()


def test_cri_interleaved_partials_yield_whole_events() -> None:
    rng = random.Random(5)
    out = list(event_stream(300, seed=5, tag="O", max_len=200))
    err = list(event_stream(300, seed=6, tag="R", max_len=200))
    pending = {"stdout": [line for e in out for line in _cri(e, "stdout")]}
    pending["stderr"] = [line for e in err for line in _cri(e, "stderr")]
    lines = []
    while pending["stdout"] or pending["stderr"]:
        name = rng.choice([k for k, v in pending.items() if v])
        lines.append(pending[name].pop(0))
    data = b"".join(lines)
    got = list(iter_events(chunked([data], rng, max_chunk=3000), make_framer("cri")))
    assert b"".join(got) == data  # every line ends in some event; nothing lost
    decoded = [m for ev in got for m in decode_cri(ev.split(b"\n"))]
    for tag, name in (("O", "stdout"), ("R", "stderr")):
        report = verify((msg for s, msg in decoded if s == name), tag=tag)
        assert report.ok and report.seen == 300, report.summary()


def test_cri_bulk_path_with_p_lookalikes_and_straddling_heads() -> None:
    lines = [cri("oFstdout P not a tag"), cri("eFx"), cri("oPa"), cri("oFb"), cri("eFstderr P")]
    data = b"".join(lines * 50)
    expected = reference(data, "cri", b"\n", 1 << 20)
    for size in (5, 30, 64, 65, 1000, len(data)):
        for use_fast_path in (False, True):
            framer = make_framer("cri")
            got: list[int] = []
            for i in range(0, len(data), size):
                if use_fast_path:
                    last = framer.last_boundary(data[i : i + size])
                    got += [] if last is None else [last]
                else:
                    got += framer.feed(data[i : i + size])
            assert set(got) <= set(expected) and got[-1] == expected[-1] == len(data)
            if not use_fast_path:
                assert got == expected


def _cri(event: bytes, stream: str) -> list[bytes]:
    return encode_cri_event(stream, 1, event[:-1], max_line=64).splitlines(keepends=True)


def test_json_file_events_decode() -> None:
    events = list(event_stream(500, seed=8, max_len=100))
    data = b"".join(encode_json_event("stdout", 7, e[:-1], max_line=40) for e in events)
    got = list(
        iter_events(chunked([data], random.Random(2), max_chunk=999), make_framer("json-file"))
    )
    assert len(got) == 500
    bodies = [msg for ev in got for _, msg in decode_json_file(ev.splitlines(keepends=True))]
    assert verify(bodies).ok


def test_iter_events_rejects_framer_mid_event() -> None:
    framer = make_framer("raw")
    framer.feed(b"partial")
    with pytest.raises(ValueError, match="boundary"):
        list(iter_events([b"x\n"], framer))
