"""punch rotation against a real writer process: every kept event exactly once, whole,
allocated blocks small; with O_APPEND writers COLLAPSE_RANGE also shrinks the apparent size."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from logvold.fileio.rotator import RotationResult, StreamRotator
from logvold.fileio.state import load_state
from logvold.telemetry.metrics import Metrics
from tests.integration.rotator_kit import (
    leftovers,
    make_info,
    start_writer,
    stream_chunks,
    whole_stream,
)
from tests.support.events import decode_cri, decode_json_file, event_stream, split_raw, verify

HAVE_COMPRESS = importlib.util.find_spec("logvold.fileio.compress") is not None
COUNT = 20000


def _drive(
    rot: StreamRotator,
    writer_done: threading.Event | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> dict[str, int]:
    """Rotate (size trigger), enforce retention and compress until the writer ends."""
    counts = {
        "rotations": 0,
        "freed": 0,
        "collapses": 0,
        "collapsed": 0,
        "dropped": 0,
        "pieces": 0,
        "cut": 0,
        "max_piece": 0,
    }

    def count(res: RotationResult) -> None:
        counts["rotations"] += 1
        counts["pieces"] += len(res.cuts)
        for cut in res.cuts:
            counts["cut"] += cut.logical_end - cut.logical_start
            counts["max_piece"] = max(counts["max_piece"], cut.logical_end - cut.logical_start)

    def running() -> bool:
        if proc is not None:
            return proc.poll() is None
        assert writer_done is not None
        return not writer_done.is_set()

    def step() -> None:
        if rot.needs_rotation() is not None:
            res = rot.rotate("size")
            if res is not None:
                count(res)
                counts["freed"] += res.bytes_freed
                counts["collapses"] += bool(res.collapsed_bytes)
                counts["collapsed"] += res.collapsed_bytes
        ret = rot.enforce_retention()
        counts["dropped"] += ret.dropped_active_bytes
        if ret.compress_pending:
            rot.compress_pending()

    while running():
        step()
        time.sleep(0.002)
    res = rot.rotate("final")
    if res is not None:
        count(res)
    step()
    return counts


@pytest.mark.parametrize("mode", ["append", "offset"])
def test_punch_with_a_real_writer(tmp_path: Path, mode: str) -> None:
    metrics = Metrics()
    rot = StreamRotator(
        make_info(
            tmp_path,
            max_size_bytes=64 * 1024,
            max_files=0,
            max_total_size_bytes=768 * 1024,
            delimiter=b"\n\n",
            compress="gzip" if HAVE_COMPRESS else "none",
            collapse="auto",
        ),
        metrics,
        collapse_min_bytes=256 * 1024,
    )
    proc = start_writer(tmp_path / "app.log", mode=mode, count=COUNT, rate=0, max_chunk=8192)
    counts = _drive(rot, proc=proc)
    assert proc.wait() == 0
    report = verify(split_raw([whole_stream(tmp_path)], b"\n\n"), allow_missing_prefix=True)
    assert report.ok, report.summary()
    assert report.last_seq == COUNT - 1
    assert report.first_seq is not None and report.first_seq > 0  # maxTotalSize dropped some
    # However late a rotation came (machine load), it cut its backlog in maxSize pieces:
    # the segment count follows from the bytes cut, not from the timing.
    assert counts["rotations"] >= 1 and counts["max_piece"] <= 64 * 1024
    assert counts["pieces"] >= -(-counts["cut"] // (64 * 1024)) >= 10
    st = (tmp_path / "app.log").stat()
    written = sum(len(e) for e in event_stream(COUNT, seed=1, delimiter=b"\n\n"))
    assert st.st_blocks * 512 <= 64 * 1024 + 16 * 4096, (st.st_blocks * 512, st.st_size)
    if mode == "append":
        assert counts["collapses"] > 0
        # Retention's drop of the active head collapses too (under load, when the backlog
        # passed maxTotalSize before a rotation): the state file keeps the running total.
        saved = load_state(tmp_path, "app.log")
        assert saved is not None and saved.collapsed_bytes >= counts["collapsed"]
        assert st.st_size == written - saved.collapsed_bytes < written
    else:
        assert counts["collapses"] == 0 and st.st_size == written
    assert leftovers(tmp_path) == []
    state = json.loads((tmp_path / ".logvold" / "app.log.state.json").read_text())
    assert state["intent"] is None and state["inode"] == st.st_ino
    assert state["committed_offset"] - state["collapsed_bytes"] <= st.st_size
    segments = sum(
        os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path) if n.startswith("app.log.")
    )
    assert segments + st.st_blocks * 512 < 2 * 768 * 1024
    print(
        f"\n{mode}: {report.summary()} {counts} apparent={st.st_size} "
        f"allocated={st.st_blocks * 512} written={written}"
    )


def _writer_thread(path: Path, lines: list[bytes], done: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        buf = b"".join(lines)
        pos = 0
        while pos < len(buf):  # chunks cut lines anywhere, like a real runtime's writes
            n = rng.randint(1, 4096)
            os.write(fd, buf[pos : pos + n])
            pos += n
            if rng.random() < 0.5:
                time.sleep(0.002)
    finally:
        os.close(fd)
        done.set()


def _cri_lines(count: int, rng: random.Random) -> list[bytes]:
    lines = []
    for i, ev in enumerate(event_stream(count, seed=3, delimiter=b"\n", multiline=False)):
        body = ev[:-1]
        stream = b"stdout" if i % 3 else b"stderr"
        ts = b"2026-11-23T11:48:00.%09dZ" % i
        while len(body) > 60 and rng.random() < 0.5:  # P fragments
            cut = rng.randint(1, len(body) - 1)
            lines.append(ts + b" " + stream + b" P " + body[:cut] + b"\n")
            body = body[cut:]
        lines.append(ts + b" " + stream + b" F " + body + b"\n")
    return lines


def _json_lines(count: int, rng: random.Random) -> list[bytes]:
    lines = []
    for i, ev in enumerate(event_stream(count, seed=4, delimiter=b"\n", multiline=False)):
        text = ev.decode()
        stream = "stdout" if i % 2 else "stderr"
        while len(text) > 60 and rng.random() < 0.5:  # entries without a trailing newline
            cut = rng.randint(1, len(text) - 2)
            lines.append(
                json.dumps(
                    {"log": text[:cut], "stream": stream, "time": "2026-11-23T11:48:00Z"}
                ).encode()
                + b"\n"
            )
            text = text[cut:]
        lines.append(
            json.dumps({"log": text, "stream": stream, "time": "2026-11-23T11:48:00Z"}).encode()
            + b"\n"
        )
    return lines


@pytest.mark.parametrize("fmt", ["cri", "json-file"])
def test_punch_cuts_only_whole_cri_and_json_events(tmp_path: Path, fmt: str) -> None:
    rng = random.Random(7)
    lines = _cri_lines(6000, rng) if fmt == "cri" else _json_lines(6000, rng)
    rot = StreamRotator(
        make_info(tmp_path, max_size_bytes=32 * 1024, max_files=0, format=fmt),
        None,
        collapse_min_bytes=64 * 1024,
    )
    done = threading.Event()
    t = threading.Thread(target=_writer_thread, args=(tmp_path / "app.log", lines, done, 5))
    t.start()
    try:
        counts = _drive(rot, writer_done=done)
    finally:
        t.join()
    pieces = [b"".join(stream_chunks(tmp_path))]
    # Every segment on its own must hold whole events only (no open P/partial entry at its end).
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("app.log."))
    # A rotation cuts the backlog in maxSize pieces: at least one segment each, none bigger.
    assert len(names) >= counts["rotations"] > 10
    assert max((tmp_path / n).stat().st_size for n in names) <= 32 * 1024
    decode = decode_cri if fmt == "cri" else decode_json_file
    for name in names:
        seg_lines = (tmp_path / name).read_bytes().split(b"\n")
        assert seg_lines[-1] == b""
        last = seg_lines[-2]
        if fmt == "cri":
            assert last.split(b" ", 3)[2] == b"F", last[:80]
        else:
            assert json.loads(last)["log"].endswith("\n")
    bodies_by_stream: dict[str, list[bytes]] = {}
    for stream, msg in decode(b"".join(pieces).split(b"\n")):
        bodies_by_stream.setdefault(stream, []).append(msg)
    merged = sorted((b for v in bodies_by_stream.values() for b in v), key=lambda b: int(b[2:12]))
    report = verify(merged, expected=range(6000))
    assert report.ok, report.summary()


def test_a_recorded_segment_name_is_never_given_again(tmp_path: Path) -> None:
    """Retention deleted every segment of this second; the state still records them (a
    follower may be about to read that byte range by that name): the next rotation in the
    same second takes the next sequence number, not a recorded name."""
    from datetime import UTC, datetime

    from logvold.fileio.state import load_state

    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    info = make_info(tmp_path, max_files=0)
    rot = StreamRotator(info, clock=lambda: now)
    events = list(event_stream(30, seed=4))
    (tmp_path / "app.log").write_bytes(b"".join(events[:10]))
    first = rot.rotate("size")
    assert first is not None
    (tmp_path / first.segment).unlink()  # as retention does; the record stays
    with (tmp_path / "app.log").open("ab") as f:
        f.write(b"".join(events[10:]))
    second = rot.rotate("size")
    assert second is not None and second.segment != first.segment
    state = load_state(tmp_path, "app.log")
    assert state is not None
    assert [r.stem for r in state.segments] == [first.segment, second.segment]
    assert sorted([first.segment, second.segment]) == [first.segment, second.segment]


@pytest.mark.parametrize("refill", ["past-the-committed-offset", "below-it"])
def test_a_writer_that_truncates_and_refills_its_file_is_rotated_within_maxsize(
    tmp_path: Path, refill: str
) -> None:
    """`cmd > app.log` on a restart: the writer truncates the file the rotator punched up
    to a large committed offset and writes again. Filled past that offset before the
    rotator looked, the size alone looks like a small append: without a look at the
    punched head, nothing would rotate until the file reached offset + maxSize. Every
    event of both writers must end up in segments, once, and the new file rotated as
    soon as it is checked."""
    max_size = 16 * 1024
    rot = StreamRotator(
        make_info(tmp_path, max_size_bytes=max_size, max_files=0, delimiter=b"\n\n"), Metrics()
    )
    active = tmp_path / "app.log"
    first = list(event_stream(1000, seed=5, delimiter=b"\n\n"))
    active.write_bytes(b"".join(first))
    while rot.needs_rotation() is not None:
        assert rot.rotate("size") is not None
    state = load_state(tmp_path, "app.log")
    assert state is not None and state.committed_offset == sum(map(len, first))
    # The new writer's output: a little more than the old committed offset, or less.
    target = state.committed_offset + (
        max_size // 4 if refill == "past-the-committed-offset" else -max_size * 3
    )
    second: list[bytes] = []
    for event in event_stream(10**6, seed=6, start=1000, delimiter=b"\n\n"):
        if sum(map(len, second)) + len(event) > target:
            break
        second.append(event)
    with active.open("r+b") as f:
        f.truncate(0)
        f.write(b"".join(second))
    assert rot.needs_rotation() == "size"
    while rot.needs_rotation() is not None:
        assert rot.rotate("size") is not None
    assert active.stat().st_size - load_state(tmp_path, "app.log").physical_committed < max_size  # type: ignore[union-attr]
    report = verify(
        split_raw([whole_stream(tmp_path)], b"\n\n"), expected=range(1000 + len(second))
    )
    assert report.ok, report.summary()
