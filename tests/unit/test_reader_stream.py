"""StreamReader over real files: segments plain/gz/zst, a punched active file, state."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from logvold.fileio.reader import ReadOptions, StreamReader, compile_pattern
from tests.support.events import decode_cri, decode_json_file, parse_event, split_raw, verify
from tests.support.streams import build_stream, event_ts, make_events, punch_hole

FMTS = ["raw", "cri", "json-file"]


def read(info, **opts) -> bytes:  # type: ignore[no-untyped-def]
    reader = StreamReader(info, ReadOptions(**opts))
    return b"".join(c for c in reader.chunks() if c)


def bodies(data: bytes) -> list[bytes]:
    return list(split_raw([data]))


def seqs(data: bytes) -> list[int]:
    out = []
    for b in bodies(data):
        s = parse_event(b)
        assert s is not None, b[:100]
        out.append(s)
    return out


@pytest.mark.parametrize("fmt", FMTS)
def test_whole_stream_across_compressed_segments_and_punched_active(
    tmp_path: Path, fmt: str
) -> None:
    events = make_events(400, fmt, stderr_every=3)
    info = build_stream(tmp_path, events, fmt=fmt)
    active = tmp_path / "app.log"
    # The punched head really is a hole: fewer blocks than the apparent size.
    assert active.stat().st_blocks * 512 < active.stat().st_size
    data = read(info)
    report = verify(bodies(data))
    assert report.ok and report.seen == 400, report.summary()


def test_no_state_hole_skips_partial_first_event(tmp_path: Path) -> None:
    events = make_events(300, "raw")
    info = build_stream(tmp_path, events, layout=(("plain", 100),), punch=False)
    active = tmp_path / "app.log"
    fd = os.open(active, os.O_RDWR)
    try:
        punch_hole(fd, 0, 8192)  # no state file: a reader must skip the hole and the cut event
    finally:
        os.close(fd)
    got = seqs(read(info))  # seqs() fails on any corrupt (cut) event
    assert got[:100] == list(range(100))
    assert got[-1] == 299 and got == sorted(got)
    assert 100 < got[100] < 200  # resumed after the cut event, never a piece of one


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("n", [0, 1, 7, 100, 149, 151, 260, 1000])
def test_tail_across_segment_boundaries(tmp_path: Path, fmt: str, n: int) -> None:
    events = make_events(400, fmt)
    info = build_stream(
        tmp_path, events, fmt=fmt, layout=(("zst", 100), ("gz", 100), ("plain", 50))
    )
    got = seqs(read(info, tail_events=n))
    assert got == list(range(max(0, 400 - n), 400))


def test_trailing_incomplete_event_is_not_served(tmp_path: Path) -> None:
    events = make_events(20, "cri")
    info = build_stream(
        tmp_path,
        events,
        fmt="cri",
        layout=(),
        trailing=b"2026-11-23T12:00:00.000000000Z stdout P half an event",
    )
    got = seqs(read(info))
    assert got == list(range(20))
    assert seqs(read(info, tail_events=2)) == [18, 19]


@pytest.mark.parametrize("fmt", ["cri", "json-file"])
def test_since_until_by_event_time(tmp_path: Path, fmt: str) -> None:
    events = make_events(600, fmt)
    info = build_stream(
        tmp_path, events, fmt=fmt, layout=(("gz", 100), ("plain", 200), ("plain", 100))
    )
    assert seqs(read(info, since_ns=event_ts(150))) == list(range(150, 600))
    assert seqs(read(info, since_ns=event_ts(450) + 1)) == list(range(451, 600))
    assert seqs(read(info, since_ns=event_ts(150), until_ns=event_ts(420))) == list(range(150, 421))
    assert seqs(read(info, until_ns=event_ts(10))) == list(range(11))
    assert seqs(read(info, since_ns=event_ts(150), tail_events=5)) == list(range(595, 600))
    assert seqs(read(info, since_ns=event_ts(590), tail_events=50)) == list(range(590, 600))
    assert read(info, since_ns=event_ts(10_000)) == b""


def test_raw_since_skips_segments_by_close_stamp(tmp_path: Path) -> None:
    events = make_events(300, "raw")
    info = build_stream(tmp_path, events, layout=(("gz", 100), ("plain", 100)))
    got = seqs(read(info, since_ns=event_ts(150)))
    assert got == list(range(100, 300))  # the segment closed before `since` is skipped whole


@pytest.mark.parametrize("fmt", FMTS)
def test_limit_bytes_serves_whole_events_only(tmp_path: Path, fmt: str) -> None:
    events = make_events(200, fmt)
    info = build_stream(tmp_path, events, fmt=fmt)
    full = read(info)
    for limit in (1, 500, 4096, 10_000, len(full) - 1, len(full)):
        data = read(info, limit_bytes=limit)
        assert len(data) <= limit
        assert full.startswith(data)
        assert data == b"" or data.endswith(b"\n")
        got = seqs(data)
        assert got == list(range(len(got)))
        nxt = len(data) + len(events[len(got)].body) + 1 if len(got) < 200 else None
        assert nxt is None or nxt > limit  # the next whole event would not have fitted


@pytest.mark.parametrize("fmt", ["cri", "json-file"])
def test_stream_filter_and_timestamps(tmp_path: Path, fmt: str) -> None:
    events = make_events(300, fmt, stderr_every=4)
    info = build_stream(tmp_path, events, fmt=fmt)
    err = [e.seq for e in events if e.stream == "stderr"]
    assert seqs(read(info, stream="stderr")) == err
    assert seqs(read(info, stream="stdout")) == [e.seq for e in events if e.stream == "stdout"]
    assert seqs(read(info, stream="stderr", tail_events=3)) == err[-3:]
    stamped = read(info, timestamps=True, tail_events=2).splitlines()
    assert stamped[0].startswith(b"2026-11-2") and stamped[0][29:31] == b"Z "
    ts_text, body = stamped[1].split(b" ", 1)
    assert ts_text.decode() == __import__("tests.support.streams", fromlist=["rfc3339"]).rfc3339(
        event_ts(299)
    )
    assert parse_event(body) == 299


@pytest.mark.parametrize("fmt", FMTS)
def test_pattern_filter(tmp_path: Path, fmt: str) -> None:
    events = make_events(300, fmt)
    info = build_stream(tmp_path, events, fmt=fmt)
    want = [e.seq for e in events if b"abc" in e.body.lower() or b"#00000001" in e.body]
    got = seqs(read(info, pattern="(?i)abc|#00000001"))
    assert got == want and got
    assert seqs(read(info, pattern="(?i)abc|#00000001", tail_events=2)) == want[-2:]


@pytest.mark.parametrize("fmt", FMTS)
def test_pattern_anchors_and_matches_across_cri_fragments(tmp_path: Path, fmt: str) -> None:
    events = make_events(300, fmt)
    info = build_stream(tmp_path, events, fmt=fmt)
    # Anchored at the message start: the CRI header before it must not matter.
    assert seqs(read(info, pattern="^E#000000012[0-2] ")) == [120, 121, 122]
    assert seqs(read(info, pattern="#0000000077 [0-9a-f]{8} .*$")) == [77]
    # A match that spans the P/F fragments of one CRI event is still found.
    split = [e for e in events if e.encoded.count(b"\n") > 1]
    if fmt == "cri":
        assert split
    for e in split[:5]:
        first_line = e.encoded.split(b"\n")[0]
        cut = len(first_line.split(b" ", 3)[3])
        needle = e.body[cut - 3 : cut + 3]
        assert e.seq in seqs(read(info, pattern=re.escape(needle.decode())))


def test_pattern_validation_and_redos_is_linear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="longer"):
        compile_pattern("a" * 1025)
    with pytest.raises(ValueError, match="invalid"):
        compile_pattern("(unclosed")
    events = make_events(50, "raw")
    info = build_stream(tmp_path, events, layout=())
    with (tmp_path / "app.log").open("ab") as f:
        f.write(b"x" * 30_000 + b"!\n")
    t0 = time.monotonic()
    got = read(info, pattern="(x+x+)+y")  # catastrophic for a backtracking engine
    assert time.monotonic() - t0 < 60  # backtracking would take ~forever; RE2 is linear
    assert b"xxxxxxxx" not in got
    assert seqs(got) == [e.seq for e in events if re.search(rb"(x+x+)+y", e.body)]


def test_cri_output_is_joined_message_like_kubelet(tmp_path: Path) -> None:
    events = make_events(200, "cri", stderr_every=5)
    info = build_stream(tmp_path, events, fmt="cri", layout=(("plain", 50),))
    raw = b"".join(e.encoded for e in events)
    assert raw.count(b" P ") > 10  # fragments really are there
    expected = [msg for _, msg in decode_cri(raw.split(b"\n"))]
    assert bodies(read(info)) == expected


def test_json_file_output_is_log_field(tmp_path: Path) -> None:
    events = make_events(100, "json-file")
    info = build_stream(tmp_path, events, fmt="json-file", layout=())
    raw = b"".join(e.encoded for e in events)
    assert bodies(read(info)) == [m for _, m in decode_json_file(raw.split(b"\n"))]


def test_multibyte_delimiter_raw(tmp_path: Path) -> None:
    events = make_events(120, "raw", delimiter=b"\n\n")
    info = build_stream(tmp_path, events, layout=(("gz", 40),), delimiter=b"\n\n")
    data = read(info, tail_events=30)
    got = [parse_event(b) for b in split_raw([data], b"\n\n")]
    assert got == list(range(90, 120))
    assert verify(split_raw([read(info)], b"\n\n")).seen == 120


def test_since_inside_an_interleaved_partial_event_never_serves_a_piece(tmp_path: Path) -> None:
    from tests.support.streams import rfc3339

    events = make_events(400, "cri", fragments=False)
    lines = [e.encoded for e in events[:300]]
    t = events[299].ts_ns
    # stderr opens an event before `since`, stdout logs across `since`, stderr finishes after.
    lines.append(f"{rfc3339(t + 1)} stderr P ".encode() + b"E#0000009999 head-")
    lines.append(b"\n")
    lines += [e.encoded for e in events[300:]]
    lines.append(f"{rfc3339(events[-1].ts_ns + 1)} stderr F ".encode() + b"tail\n")
    active = tmp_path / "app.log"
    info = build_stream(tmp_path, [], fmt="cri", layout=())
    active.write_bytes(b"".join(lines))
    got = read(info, since_ns=events[350].ts_ns)
    assert seqs(got) == list(range(350, 400))  # no "tail" piece of the stderr event
    whole = read(info, since_ns=t + 1)
    assert b"E#0000009999 head-tail\n" in whole


def test_state_past_a_truncated_file_is_ignored(tmp_path: Path) -> None:
    events = make_events(150, "raw")
    info = build_stream(tmp_path, events, layout=(("plain", 100),))
    active = tmp_path / "app.log"
    os.truncate(active, 0)  # e.g. logrotate copytruncate behind logvold's back
    with active.open("ab") as f:
        f.write(b"".join(e.encoded for e in make_events(5, "raw", start=150, seed=3)))
    assert seqs(read(info)) == [*range(100), *range(150, 155)]


def test_hostile_json_file_lines_are_served_as_text_not_errors(tmp_path: Path) -> None:
    events = make_events(5, "json-file")
    info = build_stream(tmp_path, events, fmt="json-file", layout=())
    with (tmp_path / "app.log").open("ab") as f:
        f.write(b"[" * 100_000 + b"\n")  # RecursionError in json
        f.write(
            b'{"log":"\\ud800 lone surrogate\\n","stream":"stdout","time":"2026-11-23T00:00:00Z"}\n'
        )
        f.write(b'{"log":"\\udc80\\n","stream":"stdout","time":"nonsense"}\n')
    data = read(info)
    lines = data.split(b"\n")
    assert [parse_event(b) for b in lines[:5]] == list(range(5))
    assert lines[5] == b"[" * 100_000
    assert b"lone surrogate" in lines[6]
    # A time that is not RFC3339Nano makes the line malformed (the kubelet skips it; the
    # framer and the reader both take it as an event of its own): served as written.
    assert lines[7] == b'{"log":"\\udc80\\n","stream":"stdout","time":"nonsense"}'
    assert read(info, tail_events=1, timestamps=True) == lines[7] + b"\n"  # no time: no prefix


@pytest.mark.parametrize(("fmt", "fragments"), [("raw", False), ("cri", True), ("cri", False)])
@pytest.mark.parametrize("region", [2048, 4096, 1 << 20])
def test_tail_with_pattern_scans_regions_backwards(
    tmp_path: Path, fmt: str, fragments: bool, region: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logvold.fileio import reader as reader_mod

    monkeypatch.setattr(reader_mod, "TAIL_SCAN_BYTES", region)
    events = make_events(600, fmt, fragments=fragments)
    info = build_stream(tmp_path, events, fmt=fmt, layout=(("plain", 100), ("gz", 100)))
    for pattern in ("#00000001[0-9]{2} ", "(?i)abc", "#0000000599 ", "nomatchzzzz"):
        want = [e.seq for e in events if re.search(pattern.encode(), e.body)]
        for n in (1, 3, 40):
            assert seqs(read(info, pattern=pattern, tail_events=n)) == want[-n:], (pattern, n)


def test_tail_reaching_into_a_stateless_hole_serves_whole_events_only(tmp_path: Path) -> None:
    events = make_events(60, "raw")
    info = build_stream(tmp_path, events, layout=(), punch=False)
    fd = os.open(tmp_path / "app.log", os.O_RDWR)
    try:
        punch_hole(fd, 0, 4096)
    finally:
        os.close(fd)
    whole = seqs(read(info))
    assert whole == list(range(whole[0], 60)) and whole[0] > 0
    assert seqs(read(info, tail_events=1000)) == whole
