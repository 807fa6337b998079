"""Whole-chunk cri / json-file encoding writes exactly the bytes the per-event encoder
wrote: the old `_write_lines` is kept below as the oracle and both writers get the
same generated chunks (quotes, tabs, backslashes, control bytes, DEL, invalid UTF-8,
U+2028, HTML characters, lines longer than the line limit and than maxEventSize),
the same clock and the same policy; every segment must be byte-identical."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logvold.core.chunk_encoding import (
    ChunkEncoder,
    LineFormat,
    long_lines,
    native_escaper,
    native_escaper_into,
)
from logvold.core.formats import encode_cri_line, encode_json_entry, timestamp_ns
from logvold.core.layout import segments_of
from logvold.core.policy import LogPolicy
from logvold.fileio.rotating_writer import RotatingWriter

T0 = datetime(2026, 11, 23, 11, 58, 0, tzinfo=UTC)
NATIVE = native_escaper()
NATIVE_INTO = native_escaper_into()
LINE_FORMATS: tuple[LineFormat, ...] = ("cri", "json-file")


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class PerEventWriter(RotatingWriter):
    """The writer as it was before whole-chunk encoding: every line in Python (oracle)."""

    def _write_lines(self, stream: str, data: bytes) -> None:
        held = self._held.get(stream)
        if held is None:
            raise ValueError(f"unknown stream {stream!r}: use stdout or stderr")
        if self._due is not None:
            self._maybe_cut_now()
        ts = timestamp_ns(self._clock())
        out = bytearray()
        limit = self._max_event
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl < 0:
                held += data[pos:]
                while len(held) > limit:
                    self._split_base += 1
                    self._old_emit(out, stream, bytes(held[:limit]), ts, full=False)
                    del held[:limit]
                break
            if held:
                msg = bytes(held) + data[pos:nl]
                held.clear()
            else:
                msg = data[pos:nl]
            pos = nl + 1
            while len(msg) > limit:
                self._split_base += 1
                self._old_emit(out, stream, msg[:limit], ts, full=False)
                msg = msg[limit:]
            self._old_emit(out, stream, msg, ts, full=True)
        if out:
            self._append(out)

    def _old_emit(self, out: bytearray, stream: str, msg: bytes, ts: int, *, full: bool) -> None:
        line = self._max_line
        last = len(msg) - line if full else len(msg)
        start = 0
        while start < last:
            out += self._old_encode(stream, msg[start : start + line], full=False, ts=ts)
            start += line
        if full:
            out += self._old_encode(stream, msg[start:], full=True, ts=ts)
        if self._due is None and self._max_size and self._size + len(out) >= self._max_size:
            self._due = "size"
        if self._due is not None:
            self._append(out)
            out.clear()
            self._cut(self._due)

    def _old_encode(self, stream: str, msg: bytes, *, full: bool, ts: int) -> bytes:
        if self.policy.format == "cri":
            return encode_cri_line(stream, ts, msg, partial=not full)
        return encode_json_entry(stream, ts, msg + b"\n" if full else msg)


class OrjsonWriter(RotatingWriter):
    """The writer with json-file's pure-Python fast path (orjson), as installed without
    a C compiler: it must write the same bytes as the C escaper and the oracle."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.policy.format == "json-file":
            self._chunks = ChunkEncoder("json-file", orjson.dumps)


# Bytes that each need their own escape, and the multi-byte ones that do or break UTF-8.
_PIECES = [
    b"a", b"word ", b'"', b"\\", b"\\n", b"\t", b"\r", b"\x00", b"\x01", b"\x08", b"\x0c",
    b"\x1b[31m", b"\x1f", b"\x7f", b"<", b">", b"&", "\u00e9".encode(), "\u2028".encode(),
    "\u2029".encode(), "\U0001f600".encode(), b"\xc3", b"\xa9", b"\xe2\x80", b"\xff",
    b"\xed\xa0\x80", b"\n", b"\n", b"\n", b"\n",
]  # fmt: skip


@st.composite
def chunk_lists(draw: st.DrawFn) -> list[tuple[str, bytes, int]]:
    """(stream, chunk, clock step in µs) triples; some lines long enough to be cut."""
    chunks = []
    for _ in range(draw(st.integers(1, 12))):
        parts = draw(st.lists(st.sampled_from(_PIECES), max_size=60))
        if draw(st.integers(0, 5)) == 0:
            parts.insert(draw(st.integers(0, len(parts))), b"L" * draw(st.integers(1, 300)))
        stream = draw(st.sampled_from(["stdout", "stderr"]))
        chunks.append((stream, b"".join(parts), draw(st.sampled_from([0, 0, 1, 1_000_000]))))
    return chunks


def pieces(path: Path) -> list[bytes]:
    segs = segments_of(path.name, os.listdir(path.parent))
    return [(path.parent / s.filename).read_bytes() for s in segs] + [path.read_bytes()]


def run_writer(
    cls: type[RotatingWriter],
    path: Path,
    policy: LogPolicy,
    chunks: list[tuple[str, bytes, int]],
    max_line: int | None,
    *,
    write_behind: bool = True,
) -> tuple[list[bytes], int, int]:
    clock = FakeClock()
    w = cls(
        str(path),
        policy,
        clock=clock,
        background=False,
        max_line_bytes=max_line,
        write_behind=write_behind,
    )
    for stream, data, step_us in chunks:
        clock.now += timedelta(microseconds=step_us)
        w.write(stream, data)
    w.close()
    return pieces(path), w.split_count, w.rotations


@pytest.mark.parametrize("fmt", ["cri", "json-file"])
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunks=chunk_lists(),
    max_size=st.sampled_from([0, 1, 60, 200, 1000]),
    max_event=st.sampled_from([8, 50, 1 << 20]),
    max_line=st.sampled_from([None, 3, 16, 64]),
)
def test_chunk_output_is_byte_identical_to_per_event(
    tmp_path: Path,
    fmt: str,
    chunks: list[tuple[str, bytes, int]],
    max_size: int,
    max_event: int,
    max_line: int | None,
) -> None:
    policy = LogPolicy(
        format=fmt,  # type: ignore[arg-type]
        max_size_bytes=max_size,
        max_files=0,
        max_event_size_bytes=max_event,
    )
    results = []
    writers = (("old", PerEventWriter), ("new", RotatingWriter), ("orjson", OrjsonWriter))
    for name, cls in writers[: 3 if fmt == "json-file" else 2]:
        d = tmp_path / f"{name}-{os.urandom(4).hex()}"
        d.mkdir()
        # The oracle writes in place; the others through the write-behind thread.
        behind = cls is not PerEventWriter
        results.append(
            run_writer(cls, d / "app.log", policy, chunks, max_line, write_behind=behind)
        )
    old, *news = results
    for new in news:
        assert new[0] == old[0]  # every segment and the active file
        assert new[1:] == old[1:]  # split count, rotations


def test_one_mebibyte_chunks_of_typical_lines_are_identical(tmp_path: Path) -> None:
    """Big reads as the driver gets them: many lines, a 16 KiB line limit, and 100 KiB
    rotation (several cuts per chunk), chunk ends inside lines."""
    import random

    rng = random.Random(7)
    words = [b"GET", b'"q"', b"\t", b"\\", "\u00e9t\u00e9".encode(), b"<a&b>", b"x" * 40]
    lines = [b" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(40_000)]
    lines[500] = b"y" * 40_000  # > 16 KiB: P pieces
    stream = b"\n".join(lines) + b"\n"
    chunks = []
    pos = 0
    while pos < len(stream):
        size = rng.randint(1 << 18, 1 << 20)
        chunks.append((rng.choice(["stdout", "stderr"]), stream[pos : pos + size], 1000))
        pos += size
    for fmt in LINE_FORMATS:
        policy = LogPolicy(format=fmt, max_size_bytes=100 << 10, max_files=0)
        results = []
        for name, cls in (("old", PerEventWriter), ("new", RotatingWriter)):
            d = tmp_path / f"{fmt}-{name}"
            d.mkdir()
            behind = cls is RotatingWriter  # the oracle writes in place
            results.append(
                run_writer(cls, d / "app.log", policy, chunks, 16 << 10, write_behind=behind)
            )
        assert results[0][0] == results[1][0]
        assert results[0][2] == results[1][2] > 10


def encoders() -> list[ChunkEncoder]:
    """Every path: cri; json-file by the stdlib, by orjson and by the C escaper."""
    assert NATIVE is not None
    return [
        ChunkEncoder("cri"),
        ChunkEncoder("json-file"),
        ChunkEncoder("json-file", orjson.dumps),
        ChunkEncoder("json-file", native=NATIVE),
        ChunkEncoder("json-file", native=NATIVE, native_into=NATIVE_INTO),
    ]


# Runs of plain bytes that shift the pieces against the C escaper's 16-byte blocks.
_FILLERS = [b"y" * 15, b"z" * 16, b"w" * 33]


@given(data=st.lists(st.sampled_from(_PIECES + _FILLERS), max_size=120).map(b"".join))
@settings(max_examples=400, deadline=None)
def test_encoder_matches_line_encoders(data: bytes) -> None:
    ts = timestamp_ns(T0) + 123_456_789
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    for encoder in encoders():
        fmt = encoder.fmt
        head, body = encoder.encode("stderr", ts, data)
        got = head + body[: body.rfind(b"\n") + 1] if lines else b""
        if fmt == "cri":
            want = b"".join(encode_cri_line("stderr", ts, m) for m in lines)
        else:
            want = b"".join(encode_json_entry("stderr", ts, m + b"\n") for m in lines)
        assert got == want


def test_the_c_escaper_is_built() -> None:
    """The install (pip install -e, as scripts/test does) compiled it: else every test
    below would only exercise the pure-Python paths, and the driver would run at them."""
    assert NATIVE is not None


def _json_inside(line: bytes) -> bytes:
    entry = encode_json_entry("stdout", 0, line)
    return entry[len(b'{"log":"') : entry.rindex(b'","stream":"')]


@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(_PIECES + _FILLERS), max_size=120).map(b"".join),
    ),
    sep=st.sampled_from([b"", b"|", b'\\n","stream":"stdout"}\n{"log":"', b"S" * 200]),
)
@settings(max_examples=1000, deadline=None)
def test_c_escaper_matches_the_per_event_encoder(data: bytes, sep: bytes) -> None:
    """Any bytes (invalid UTF-8, surrogates, overlongs, every control byte, DEL, sequences
    cut at the end), any separator: the per-event encoder's string insides joined by
    `sep`, or None exactly when the bytes are not valid UTF-8."""
    assert NATIVE is not None
    got = NATIVE(data, sep)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert got is None
        return
    assert got == sep.join(_json_inside(line) for line in data.split(b"\n"))


def test_c_escaper_every_byte_and_long_inputs() -> None:
    """Each byte value alone and inside long runs (the 16-byte block path), and an
    output far larger than the input (newlines as long separators)."""
    assert NATIVE is not None
    for b in range(0x80):
        one = bytes([b])
        for data in (one, b"x" * 40 + one + b"y" * 40, one * 50):
            assert NATIVE(data, b"<SEP>") == b"<SEP>".join(
                _json_inside(line) for line in data.split(b"\n")
            )
    assert NATIVE(b"\n" * 100_000, b"S" * 100) == b"S" * 10_000_000
    text = ('caf\u00e9 \u65e5\u672c \U0001f600 \u2028\u2029 <&> "q" \\ \t\n' * 5000).encode()
    assert NATIVE(text, b"|") == b"|".join(_json_inside(line) for line in text.split(b"\n"))
    for bad in (b"x" * 100 + b"\xff", b"\xc3" + b"x" * 40, b"x" * 31 + b"\xe2\x80"):
        assert NATIVE(bad, b"|") is None


@given(
    datas=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.lists(st.sampled_from(_PIECES + _FILLERS), max_size=200).map(b"".join),
        ),
        min_size=1,
        max_size=6,
    ),
    sep=st.sampled_from([b"|", b'\\n","stream":"stdout"}\n{"log":"', b"S" * 200]),
)
@settings(max_examples=300, deadline=None)
def test_c_escaper_into_a_reused_bytearray_equals_fresh_bytes(
    datas: list[bytes], sep: bytes
) -> None:
    """escape_lines_into: the same bytes as escape_lines, call after call into one
    bytearray that grows and shrinks (or None, and the next call still right)."""
    assert NATIVE is not None and NATIVE_INTO is not None
    out = bytearray(b"stale bytes from before")
    for data in datas:
        got = NATIVE_INTO(data, sep, out)
        want = NATIVE(data, sep)
        assert (None if got is None else bytes(got)) == want
        assert got is None or got is out


def test_chunk_encoder_survives_a_view_of_its_last_body() -> None:
    """A memoryview of the last body still alive (a traceback after a failed write
    keeps one): the next encode() writes into a new buffer, bigger or smaller, and
    never over the bytes that view shows."""
    assert NATIVE is not None and NATIVE_INTO is not None
    encoder = ChunkEncoder("json-file", native=NATIVE, native_into=NATIVE_INTO)
    _head, body = encoder.encode("stdout", 5, b"first line\n" * 100)
    view = memoryview(body)
    before = bytes(view)
    for data in (b'"second"\n' * 5000, b"third\n"):
        _head, later = encoder.encode("stdout", 5, data)
        assert bytes(view) == before
        assert later is not body
        assert bytes(later) == NATIVE(data, encoder._sep)
    assert isinstance(body, bytearray)
    with pytest.raises(BufferError, match="in use"):
        NATIVE_INTO(b"x\n", b"|", body)


def test_c_escaper_checks_utf8_inside_its_block_loop() -> None:
    """The SSSE3 loop checks UTF-8 as it escapes: a bad sequence anywhere (in a block,
    across a block end, in the byte-wise tail, after the output grew) gives None; a
    good one crossing block ends is copied whole. And the output buffer grows past
    its first reservation (6x escapes), from a memoryview too."""
    assert NATIVE is not None
    good = "\u00e9\u65e5\U0001f600\u2028".encode()  # 2, 3, 4, 3 bytes
    for shift in range(17):
        data = b"a" * shift + good * 40 + b'"\n' + good
        want = b"|".join(_json_inside(line) for line in data.split(b"\n"))
        assert NATIVE(data, b"|") == want
        assert NATIVE(memoryview(b"__" + data)[2:], b"|") == want
        for bad in (b"\xff", b"\xc3(", b"\xe2\x80", b"\xed\xa0\x80", b"\xf0\x9f\x98", b"\x80"):
            for where in (shift, 1000 + shift, len(data) - 3):
                spoilt = data[:where] + bad + data[where:]
                with pytest.raises(UnicodeDecodeError):
                    spoilt.decode("utf-8")  # the oracle agrees it is not UTF-8
                assert NATIVE(spoilt, b"|") is None
    big = b"\x01<\x1f" * 400_000  # 6x: 7.2 MB out of 1.2 MB
    assert NATIVE(big, b"|") == b"\\u0001\\u003c\\u001f" * 400_000
    assert NATIVE(b"x" * 500_000 + b"\xff", b"|") is None


@given(
    lengths=st.lists(st.integers(0, 70), min_size=1, max_size=40),
    max_line=st.integers(1, 40),
)
def test_long_lines_finds_exactly_the_lines_over_the_limit(
    lengths: list[int], max_line: int
) -> None:
    data = b"".join(b"x" * n + b"\n" for n in lengths)
    want = []
    pos = 0
    for n in lengths:
        if n > max_line:
            want.append((pos, pos + n + 1))
        pos += n + 1
    assert long_lines(data, 0, len(data), max_line) == want


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=30),
    max_size=st.sampled_from([0, 97, 400, 2000]),
    max_event=st.sampled_from([16, 300, 1 << 20]),
    delimiter=st.sampled_from([b"\n", b"\n\n"]),
    seed=st.integers(0, 1000),
)
def test_raw_from_a_reused_buffer_equals_bytes_chunks(
    sizes: list[int], max_size: int, max_event: int, delimiter: bytes, seed: int
) -> None:
    """The pump reads raw chunks into one bytearray and writes `write(stream, buf, n)`:
    the files (and every cut) are those of writing the same bytes as separate objects,
    and each segment but the active one ends with the delimiter unless an event was cut."""
    import random
    import tempfile

    rng = random.Random(seed)
    stream = bytes(rng.choice(b"ab \n") for _ in range(sum(sizes)))
    results = []
    for mode in ("bytes", "buffer"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "app.log"
            policy = LogPolicy(
                max_size_bytes=max_size, max_files=0, max_event_size_bytes=max_event,
                delimiter=delimiter,
            )  # fmt: skip
            w = RotatingWriter(str(path), policy, clock=FakeClock(), background=False)
            buffer = bytearray(700)
            pos = 0
            for size in sizes:
                chunk = stream[pos : pos + size]
                pos += size
                if mode == "bytes":
                    w.write("stdout", chunk)
                else:
                    buffer[:size] = chunk
                    buffer[size:] = b"\xff" * (700 - size)  # stale bytes past `stop`
                    w.write("stdout", buffer, size)
            w.close()
            results.append((pieces(path), w.split_count, w.rotations))
    assert results[0] == results[1]
    parts, split_count, _ = results[1]
    assert b"".join(parts) == stream
    if split_count == 0:
        assert all(part.endswith(delimiter) for part in parts[:-1])
