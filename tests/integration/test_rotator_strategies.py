"""rename (with a reopen signal or command), copytruncate (lossy, counted), the forced
punch-unsupported fallback, retention, writer truncation, replaced files, corrupt state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logvold.core.policy import ReopenAction
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state, state_path
from logvold.runner.reopen import run_reopen_action
from logvold.telemetry.metrics import Metrics
from tests.integration.rotator_kit import (
    ROOT,
    leftovers,
    make_info,
    start_writer,
    whole_stream,
)
from tests.support.events import event_stream, split_raw, verify

# A writer that reopens its file on SIGHUP, between whole events (as well-behaved apps do).
REOPENING_WRITER = textwrap.dedent("""
    import os, random, signal, sys, time
    from tests.support.events import event_stream
    path, pid_file, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reopen = False
    def on_hup(signum, frame):
        global reopen
        reopen = True
    signal.signal(signal.SIGHUP, on_hup)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    open(pid_file, "w").write(str(os.getpid()))
    rng = random.Random(5)
    for ev in event_stream(count, seed=1, delimiter=b"\\n\\n"):
        if reopen:
            reopen = False
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        while ev:  # several writes per event: the renamed file gets the rest of it
            n = rng.randint(1, len(ev))
            os.write(fd, ev[:n])
            ev = ev[n:]
        if rng.random() < 0.05:
            time.sleep(0.001)
""")


def _reopening_writer(tmp_path: Path, count: int) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path.parent / f"{tmp_path.name}-writer.py"
    script.write_text(REOPENING_WRITER)
    pid_file = tmp_path.parent / f"{tmp_path.name}-writer.pid"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "app.log"), str(pid_file), str(count)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc, pid_file


def _rotate_while(proc: subprocess.Popen[bytes], rot: StreamRotator) -> list[str]:
    strategies = []
    while proc.poll() is None:
        if rot.needs_rotation():
            res = rot.rotate("size")
            if res is not None:
                strategies.append(res.strategy)
        time.sleep(0.003)
    return strategies


@pytest.mark.parametrize("how", ["signal", "command", "forced-fallback"])
def test_rename_with_reopen_is_lossless(tmp_path: Path, how: str) -> None:
    count = 8000
    proc, pid_file = _reopening_writer(tmp_path, count)
    pid = pid_file.read_text()
    reopen = (
        ReopenAction(signal="HUP", pid_file=str(pid_file))
        if how != "command"
        else ReopenAction(
            command=(sys.executable, "-c", f"import os, signal; os.kill({pid}, signal.SIGHUP)")
        )
    )
    info = make_info(
        tmp_path,
        max_size_bytes=64 * 1024,
        max_files=0,
        delimiter=b"\n\n",
        strategy="punch" if how == "forced-fallback" else "rename",
        reopen=reopen,
    )
    metrics = Metrics()
    rot = StreamRotator(info, metrics, punch_supported=False if how == "forced-fallback" else None)
    rot.reopener = run_reopen_action
    strategies = _rotate_while(proc, rot)
    # A SIGHUP that lands while the writer's interpreter shuts down (handlers reset) kills it
    # after its last write: harmless here.
    assert proc.wait() in (0, -signal.SIGHUP)
    assert len(strategies) >= 5 and set(strategies) == {"rename"}
    report = verify(split_raw([whole_stream(tmp_path)], b"\n\n"), expected=range(count))
    assert report.ok, report.summary()
    state = load_state(tmp_path, "app.log")
    assert state is not None and state.inode == (tmp_path / "app.log").stat().st_ino
    assert state.committed_offset == 0 and state.intent is None
    assert metrics.rotations.labels("default", "pod", "app", "size", "rename")._value.get() == len(
        strategies
    )


def test_copytruncate_counts_what_it_loses(tmp_path: Path) -> None:
    metrics = Metrics()
    info = make_info(
        tmp_path, max_size_bytes=32 * 1024, max_files=0, delimiter=b"\n\n", strategy="copytruncate"
    )
    rot = StreamRotator(info, metrics)
    # The writer runs until the rotator has rotated often and lost something (however
    # slow a loaded machine makes either side), then stops after a whole event (SIGTERM).
    proc = start_writer(tmp_path / "app.log", mode="append", rate=0)
    lost = 0
    rotations = 0
    deadline = time.monotonic() + 120
    try:
        while (rotations <= 10 or lost == 0) and time.monotonic() < deadline:
            assert proc.poll() is None, "the writer stopped early"
            res = rot.rotate("size")
            if res is not None:
                rotations += 1
                lost += res.lost_bytes
            time.sleep(0.002)
    finally:
        proc.terminate()
        proc.wait(30)
    assert rotations > 10 and lost > 0, (rotations, lost)
    assert metrics.lost_bytes.labels("default", "pod", "app")._value.get() == lost
    data = whole_stream(tmp_path)
    report = verify(split_raw([data[: data.rfind(b"\n\n") + 2]], b"\n\n"))
    assert report.lost or report.corrupt  # the legacy strategy really loses
    assert report.duplicated == []


def _fill(path: Path, count: int, start: int = 0) -> bytes:
    data = b"".join(event_stream(count, seed=9, start=start, delimiter=b"\n\n"))
    with path.open("ab") as f:
        f.write(data)
    return data


def test_retention_drops_the_oldest_whole_events_of_the_active_file(tmp_path: Path) -> None:
    metrics = Metrics()
    info = make_info(
        tmp_path, max_size_bytes=0, max_files=0, delimiter=b"\n\n", max_total_size_bytes=8 * 1024
    )
    rot = StreamRotator(info, metrics)
    _fill(tmp_path / "app.log", 400)
    with (tmp_path / "app.log").open("ab") as f:
        f.write(b"E#0000000400 partial")  # a writer mid-event
    res = rot.enforce_retention()
    assert res.dropped_active_bytes > 0 and res.deleted == ()
    st = (tmp_path / "app.log").stat()
    state = load_state(tmp_path, "app.log")
    assert state is not None
    live = st.st_size - state.physical_committed
    assert live <= 8 * 1024
    assert st.st_blocks * 512 <= 8 * 1024 + 2 * 4096
    report = verify(split_raw([whole_stream(tmp_path)], b"\n\n"), allow_missing_prefix=True)
    assert report.ok and report.last_seq == 399 and report.first_seq is not None
    assert report.first_seq > 300
    assert metrics.truncations.labels("default", "pod", "app", "maxTotalSize")._value.get() == 1


def test_retention_deletes_segments_and_trims_the_oldest_plain_one(tmp_path: Path) -> None:
    info = make_info(
        tmp_path,
        max_size_bytes=4096,
        max_files=3,
        delimiter=b"\n\n",
        max_total_size_bytes=20 * 1024,
    )
    rot = StreamRotator(info, None)
    for i in range(8):
        _fill(tmp_path / "app.log", 40, start=i * 40)
        assert rot.rotate("size") is not None
    before = sorted(n for n in os.listdir(tmp_path) if n.startswith("app.log."))
    # 40 events are more than maxSize: each rotation cuts several maxSize pieces.
    assert len(before) > 8
    assert max((tmp_path / n).stat().st_size for n in before) <= 4096
    res = rot.enforce_retention()
    assert len(res.deleted) == len(before) - 3 and set(res.reasons.values()) == {"maxFiles"}
    segs = sorted(n for n in os.listdir(tmp_path) if n.startswith("app.log."))
    assert len(segs) == 3
    report = verify(split_raw([whole_stream(tmp_path)], b"\n\n"), allow_missing_prefix=True)
    assert report.ok and report.last_seq == 319
    total = sum((tmp_path / n).stat().st_size for n in segs)
    if total > 20 * 1024:
        assert res.trimmed_segment is not None
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("rewritten", [50, 300], ids=["shorter", "longer-than-committed"])
@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_writer_truncating_its_file_restarts_at_zero(
    tmp_path: Path, rewritten: int, restart: bool
) -> None:
    metrics = Metrics()
    info = make_info(tmp_path, delimiter=b"\n\n")
    rot = StreamRotator(info, metrics)
    active = tmp_path / "app.log"
    _fill(active, 100)
    _fill(active, 1, start=100)  # an event that makes the committed offset unaligned
    res = rot.rotate("size")
    assert res is not None and res.logical_end % 4096
    os.truncate(active, 0)  # same inode: like a file recreated with a reused inode number
    _fill(active, rewritten, start=101)
    if restart:
        rot = StreamRotator(info, metrics)
        rot.recover()
    res = rot.rotate("size")
    assert res is not None and res.logical_start == 0
    assert metrics.truncations.labels("default", "pod", "app", "writer")._value.get() == 1
    report = verify(split_raw([whole_stream(tmp_path)], b"\n\n"), expected=range(101 + rewritten))
    assert report.ok, report.summary()


@pytest.mark.parametrize("replacement", ["symlink", "directory", "vanished"])
def test_replaced_or_vanished_active_file_is_skipped(tmp_path: Path, replacement: str) -> None:
    d = tmp_path / "vol"
    d.mkdir()
    outside = tmp_path / "outside.log"
    outside.write_bytes(b"x" * 10000 + b"\n\n")
    before = outside.read_bytes()
    metrics = Metrics()
    rot = StreamRotator(make_info(d, delimiter=b"\n\n", max_total_size_bytes=100), metrics)
    if replacement == "symlink":
        (d / "app.log").symlink_to(outside)
    elif replacement == "directory":
        (d / "app.log").mkdir()
    assert rot.needs_rotation() is None
    assert rot.rotate("size") is None
    assert rot.enforce_retention().dropped_active_bytes == 0
    assert outside.read_bytes() == before and outside.stat().st_blocks > 0
    assert not [n for n in os.listdir(d) if n.startswith("app.log.")]
    skipped = metrics.rotation_failures.labels("default", "pod", "app", "not-regular")._value.get()
    assert skipped == (0 if replacement == "vanished" else 1)
    kind = {"symlink": "symlink", "directory": "not-regular"}.get(replacement)
    if kind is not None:
        assert metrics.unsafe_refused.labels(kind)._value.get() >= 1


@pytest.mark.parametrize(
    "collapse, compress",
    [("never", "none"), ("always", "none"), ("always", "gzip"), ("never", "zstd")],
)
def test_corrupt_state_is_rebuilt_without_duplicates(
    tmp_path: Path, collapse: str, compress: str
) -> None:
    info = make_info(
        tmp_path,
        max_size_bytes=8192,
        delimiter=b"\n\n",
        max_files=0,
        collapse=collapse,
        compress=compress,
        delay_compress=False,
    )
    rot = StreamRotator(info, None, collapse_min_bytes=4096)
    for i in range(6):
        _fill(tmp_path / "app.log", 90, start=i * 90)
        assert rot.rotate("size") is not None
    if compress != "none":  # the newest segment's tail is then read through the decoder
        # 90 events a rotation are more than maxSize: several pieces each.
        plain = [n for n in os.listdir(tmp_path) if n.startswith("app.log.")]
        assert len(plain) > 6
        assert len(rot.compress_pending()) == len(plain)
    _fill(tmp_path / "app.log", 30, start=540)
    state_path(tmp_path, "app.log").write_text('{"version": 1, "device": ')
    fresh = StreamRotator(info, None, collapse_min_bytes=4096)
    fresh.recover()
    assert (tmp_path / ".logvold" / "app.log.state.json.corrupt").exists()
    report = verify(split_raw([whole_stream(tmp_path)], b"\n\n"), expected=range(570))
    assert report.ok, report.summary()
    assert fresh.rotate("size") is not None
    report = verify(split_raw([whole_stream(tmp_path)], b"\n\n"), expected=range(570))
    assert report.ok, report.summary()


def test_period_rotation_trigger() -> None:
    now = [datetime(2026, 11, 23, 10, 59, 30, tzinfo=UTC)]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rot = StreamRotator(
            make_info(d, rotate="Hourly", max_size_bytes=0), None, clock=lambda: now[0]
        )
        (d / "app.log").write_bytes(b"one\n")
        assert rot.needs_rotation() is None
        now[0] += timedelta(minutes=1)
        assert rot.needs_rotation() == "period"
        res = rot.rotate("period")
        assert res is not None and res.segment == "app.log.20261123-110030.0001"
        with (d / "app.log").open("ab") as f:
            f.write(b"two\n")
        assert rot.needs_rotation() is None
        now[0] += timedelta(hours=1)
        assert rot.needs_rotation() == "period"
