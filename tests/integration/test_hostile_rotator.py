"""The rotation side against a hostile volume, at the rotator level: symlinks planted at
every temp and segment name, segments swapped for symlinks / FIFOs / sockets /
directories / hard links before compression and trim, `.logvold` swapped for a symlink
mid-rotation, a hard-linked active file, a 3 GiB sparse state file, a deleted state
file, a forged intent, a stop. Each checks the outside canary (bytes, mode, blocks),
that nothing of it reached a segment or state file, that every event is kept exactly
once, and that the refusal was counted.

The races (a swap between the rotator's listing and its open) are made deterministic
by wrapping one rotator function so the swap happens right before it: the files and
syscalls are real, only the timing of the pod's move is fixed.
"""

from __future__ import annotations

import os
import resource
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from logvold.core.layout import next_segment_name, segments_of
from logvold.errors import StreamError
from logvold.fileio.compress import compress_in
from logvold.fileio.rotation import base as rotation_base
from logvold.fileio.rotation import retention as rotation_retention
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.safedir import SafeDir, UnsafeFile
from logvold.fileio.state import load_state, save_state_in, state_path
from logvold.telemetry.metrics import Metrics
from tests.integration.rotator_kit import make_info
from tests.support.events import event_stream, split_raw, verify
from tests.support.hostile import (
    Canary,
    complete,
    files_view,
    marker_anywhere,
    nul_bytes_in_segments,
    plant,
    plant_marker,
    regular_segments,
)

DELIM = b"\n\n"
EVENTS = list(event_stream(3000, seed=7, delimiter=DELIM))


class Clock:
    """A clock that moves one second per call: predictable segment names."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def append(path: Path, first: int, last: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"".join(EVENTS[first:last]))
    finally:
        os.close(fd)


def refused(metrics: Metrics, kind: str) -> float:
    return float(metrics.unsafe_refused.labels(kind)._value.get())


def assert_exactly_once(
    directory: Path, last: int, *, via_state: bool = True, first: int | None = 0
) -> None:
    """Every event [first, last) once, whole, in order (first None: a truncated head)."""
    data = complete(files_view(directory, via_state=via_state), DELIM)
    report = verify(split_raw([data], DELIM), allow_missing_prefix=first is None)
    assert report.ok, report.summary()
    assert report.last_seq == last - 1, report.summary()
    if first is not None:
        assert report.first_seq == first, report.summary()
    assert nul_bytes_in_segments(directory) == 0


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    d = tmp_path / "vol"
    d.mkdir()
    return d


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary.make(tmp_path / "outside")


def rotator(
    vol: Path, metrics: Metrics, clock: Clock | None = None, **policy: Any
) -> StreamRotator:
    policy.setdefault("delimiter", DELIM)
    policy.setdefault("collapse", "never")
    return StreamRotator(
        make_info(vol, **policy), metrics, clock or Clock(), collapse_min_bytes=4096
    )


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_symlinks_at_every_temp_and_segment_name_are_replaced_never_followed(
    vol: Path, canary: Canary, compress: str
) -> None:
    metrics = Metrics()
    clock = Clock()
    rot = rotator(vol, metrics, clock, compress=compress, delay_compress=False, max_files=0)
    rot.recover()
    ext = ".gz" if compress == "gzip" else ".zst"
    # An old-looking "segment" that is a symlink to the canary: never read, compressed,
    # trimmed or deleted through.
    plant(vol / "app.log.20200101-000000.0000", "symlink", canary.path)
    written = 0
    for round_ in range(6):
        append(vol / "app.log", written, written + 150)
        written += 150
        existing = segments_of("app.log", os.listdir(vol))
        upcoming = [
            next_segment_name("app.log", clock.now + timedelta(seconds=k), existing)
            for k in (1, 2, 3)
        ]
        for name in upcoming:
            for suffix in ("", ".tmp", ".trim", ".trim.tmp", ".gz.tmp", ".zst.tmp"):
                plant(vol / (name.stem + suffix), "symlink", canary.path)
        for seg in regular_segments(vol):
            for suffix in (".gz.tmp", ".zst.tmp", ".trim", ".trim.tmp", ext):
                plant(vol / (seg.name + suffix), "symlink", canary.path)
        if (vol / ".logvold").is_dir():
            plant(vol / ".logvold" / "app.log.state.json.tmp", "symlink", canary.path)
        result = rot.rotate("size")
        assert result is not None, round_
        assert not (vol / result.segment).is_symlink()
        rot.compress_pending()
        rot.enforce_retention()
    canary.assert_unchanged()
    assert marker_anywhere(vol) == []
    assert_exactly_once(vol, written)
    compressed = [p for p in regular_segments(vol) if p.name.endswith(ext)]
    assert len(compressed) >= 5
    assert refused(metrics, "symlink") >= 1  # the symlinked "segment"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "socket", "directory", "hardlink"])
def test_segment_swapped_before_compression_is_refused(
    vol: Path, canary: Canary, kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    metrics = Metrics()
    clock = Clock()
    plain = rotator(vol, metrics, clock)
    for i in range(3):
        append(vol / "app.log", i * 200, (i + 1) * 200)
        assert plain.rotate("size") is not None
    rot = rotator(vol, metrics, clock, compress="gzip", delay_compress=False)
    aside = tmp_path / "aside"
    real = compress_in
    swapped: list[Path] = []

    def swap_then_compress(d: SafeDir, filename: str, *args: Any, **kw: Any) -> str | None:
        if not swapped:  # the pod's move between the listing and the open
            seg = vol / filename
            seg.rename(aside)
            if kind == "hardlink":
                os.link(canary.path, seg)
            else:
                plant(seg, kind, canary.path)
            swapped.append(seg)
        return real(d, filename, *args, **kw)

    monkeypatch.setattr(rotation_retention, "compress_in", swap_then_compress)
    done = rot.compress_pending()
    assert len(done) == 2  # the other two; the swapped one refused, never waited on
    expected_kind = {
        "fifo": "not-regular",
        "socket": "not-regular",
        "directory": "not-regular",
    }.get(kind, kind)
    assert refused(metrics, expected_kind) >= 1
    canary.assert_unchanged()
    assert marker_anywhere(vol, exclude=(swapped[0].name,)) == []
    # The pod puts its segment back: the next pass compresses it, nothing lost or doubled.
    seg = swapped[0]
    if seg.is_dir() and not seg.is_symlink():
        seg.rmdir()
    else:
        seg.unlink()
    aside.rename(seg)
    monkeypatch.setattr(rotation_retention, "compress_in", real)
    assert rot.compress_pending() == (seg.name,)
    assert_exactly_once(vol, 600)
    canary.assert_unchanged()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "socket", "directory", "hardlink"])
def test_segment_swapped_before_trim_is_refused(
    vol: Path, canary: Canary, kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    metrics = Metrics()
    clock = Clock()
    plain = rotator(vol, metrics, clock)
    for i in range(3):
        append(vol / "app.log", i * 200, (i + 1) * 200)
        assert plain.rotate("size") is not None
    total = sum(p.stat().st_size for p in regular_segments(vol))
    rot = rotator(vol, metrics, clock, max_total_size_bytes=total - 3000)
    oldest = regular_segments(vol)[0]
    aside = tmp_path / "aside"
    real = StreamRotator._trim_segment

    def swap_then_trim(self: StreamRotator, d: SafeDir, name: Any, nbytes: int) -> Any:
        oldest.rename(aside)
        if kind == "hardlink":
            os.link(canary.path, oldest)
        else:
            plant(oldest, kind, canary.path)
        return real(self, d, name, nbytes)

    monkeypatch.setattr(StreamRotator, "_trim_segment", swap_then_trim)
    result = rot.enforce_retention()
    assert result.trimmed_segment is None
    expected_kind = {
        "fifo": "not-regular",
        "socket": "not-regular",
        "directory": "not-regular",
    }.get(kind, kind)
    assert refused(metrics, expected_kind) >= 1
    canary.assert_unchanged()
    assert marker_anywhere(vol, exclude=(oldest.name,)) == []
    if oldest.is_dir() and not oldest.is_symlink():
        oldest.rmdir()
    else:
        oldest.unlink()
    aside.rename(oldest)
    monkeypatch.setattr(StreamRotator, "_trim_segment", real)
    assert rot.enforce_retention().trimmed_segment == oldest.name
    assert_exactly_once(vol, 600, first=None)
    canary.assert_unchanged()


@pytest.mark.parametrize("at_save", [1, 2], ids=["before-copy", "before-commit"])
def test_state_dir_swapped_for_a_symlink_mid_rotation(
    vol: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_save: int
) -> None:
    """`.logvold` becomes a symlink to an outside directory between two saves of one
    rotation: nothing is written there, the step is refused; once the pod puts it back,
    the interrupted step is settled and every event is kept once."""
    metrics = Metrics()
    outside_dir = tmp_path / "outside-dir"
    outside_dir.mkdir()
    rot = rotator(vol, metrics)
    append(vol / "app.log", 0, 200)
    assert rot.rotate("size") is not None
    append(vol / "app.log", 200, 400)
    real = save_state_in
    calls = [0]
    real_dir = tmp_path / "real-state-dir"

    def swap_then_save(*args: Any, **kw: Any) -> None:
        calls[0] += 1
        if calls[0] == at_save:
            (vol / ".logvold").rename(real_dir)
            (vol / ".logvold").symlink_to(outside_dir)
        real(*args, **kw)

    monkeypatch.setattr(rotation_base, "save_state_in", swap_then_save)
    assert rot.rotate("size") is None
    assert os.listdir(outside_dir) == []
    assert refused(metrics, "symlink") >= 1
    assert rot.needs_rotation() is None or os.listdir(outside_dir) == []
    (vol / ".logvold").unlink()
    real_dir.rename(vol / ".logvold")
    monkeypatch.setattr(rotation_base, "save_state_in", real)
    append(vol / "app.log", 400, 500)
    rot.rotate("size")
    state = load_state(vol, "app.log")
    assert state is not None and state.intent is None
    assert_exactly_once(vol, 500)
    assert os.listdir(outside_dir) == []


def test_state_dir_symlink_is_refused_at_recovery(vol: Path, tmp_path: Path) -> None:
    metrics = Metrics()
    outside_dir = tmp_path / "outside-dir"
    outside_dir.mkdir()
    append(vol / "app.log", 0, 200)
    (vol / ".logvold").symlink_to(outside_dir)
    rot = rotator(vol, metrics)
    assert rot.rotate("size") is None
    assert rot.enforce_retention().deleted == ()
    assert os.listdir(outside_dir) == [] and refused(metrics, "symlink") >= 1
    assert list(vol.glob("app.log.*")) == []


def test_hard_linked_active_file_is_neither_punched_nor_copied(vol: Path, canary: Canary) -> None:
    metrics = Metrics()
    os.link(canary.path, vol / "app.log")
    rot = rotator(vol, metrics, max_size_bytes=1024, max_total_size_bytes=2048, delimiter=b"\n")
    assert rot.needs_rotation() is None or rot.rotate("size") is None
    assert rot.rotate("size") is None
    assert rot.enforce_retention().dropped_active_bytes == 0
    canary.assert_unchanged()
    assert regular_segments(vol) == []
    assert marker_anywhere(vol, exclude=("app.log",)) == []
    assert refused(metrics, "hardlink") >= 1


def test_a_3gib_sparse_state_file_is_rebuilt_without_reading_it(vol: Path) -> None:
    metrics = Metrics()
    rot = rotator(vol, metrics)
    append(vol / "app.log", 0, 600)
    assert rot.rotate("size") is not None
    append(vol / "app.log", 600, 700)
    path = state_path(vol, "app.log")
    path.unlink()
    with path.open("wb") as f:
        f.truncate(3 * 2**30)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    again = rotator(vol, metrics)
    again.recover()
    assert again.rotate("size") is not None
    rss_grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert rss_grew_kib < 256 * 1024, f"peak RSS grew {rss_grew_kib} KiB"
    assert (vol / ".logvold" / "app.log.state.json.corrupt").exists()
    assert path.stat().st_size < 64 * 1024
    assert refused(metrics, "too-big") >= 1
    assert_exactly_once(vol, 700)


@pytest.mark.parametrize("stopped_cleanly", [False, True], ids=["crash", "clean-stop"])
def test_a_deleted_state_file_is_rebuilt_from_the_segments(
    vol: Path, stopped_cleanly: bool
) -> None:
    """The pod deleted `.logvold/app.log.state.json` of a punched file: the restart
    matches the data after the hole against the newest segment (or skips the zeroed
    tail of a clean stop) and never copies from offset 0: no NULs, no duplicates."""
    metrics = Metrics()
    rot = rotator(vol, metrics)
    for i in range(4):
        append(vol / "app.log", i * 300, (i + 1) * 300 - 7)
        assert rot.rotate("size") is not None
        append(vol / "app.log", (i + 1) * 300 - 7, (i + 1) * 300)
    assert os.lseek(os.open(vol / "app.log", os.O_RDONLY), 0, os.SEEK_DATA) > 0
    if stopped_cleanly:
        rot.quiesce()
    state_path(vol, "app.log").unlink()
    again = rotator(vol, metrics)
    again.recover()
    append(vol / "app.log", 1200, 1300)
    assert again.rotate("size") is not None
    assert nul_bytes_in_segments(vol) == 0
    assert_exactly_once(vol, 1300)


def test_a_forged_intent_never_touches_another_file(vol: Path) -> None:
    metrics = Metrics()
    rot = rotator(vol, metrics)
    append(vol / "app.log", 0, 100)
    assert rot.rotate("size") is not None
    (vol / "other.log").write_bytes(b"another container's log\n")
    state = load_state(vol, "app.log")
    assert state is not None
    for stem in ("other.log", "../vol/other.log", "app.log"):
        plant_marker(vol, "app.log", {"op": "punch", "stem": stem, "start": 0, "end": 5})
        rotator(vol, metrics).recover()
        assert (vol / "other.log").read_bytes() == b"another container's log\n"
        assert (vol / "app.log").exists()
        loaded = load_state(vol, "app.log")
        assert loaded is not None and loaded.intent is None
    assert refused(metrics, "outside") >= 3
    assert_exactly_once(vol, 100)


FORGED_MARKERS: dict[str, object] = {
    "outside-stem": {"op": "punch", "stem": "../secret", "start": 0, "end": 5},
    "string-offset": {
        "op": "punch",
        "stem": "app.log.20261130-120001.0001",
        "start": "0",
        "end": 5,
    },
    "huge-offset": {
        "op": "copytruncate",
        "stem": "app.log.20261130-120001.0001",
        "start": 0,
        "end": 2**70,
        "physical_end": 2**70,
    },
    "garbled-offset": {
        "op": "punch",
        "stem": "app.log.20261130-120001.0001",
        "start": "x",
        "end": 5,
    },
    "missing-key": {"op": "rename", "stem": "app.log.20261130-120001.0001"},
    "collapse-negative": {"op": "collapse", "length": -4096, "collapsed_before": 0},
    "rename-foreign-inode": {"op": "rename", "stem": "../outside/secret", "device": 1, "inode": 2},
    "trim-outside": {"op": "trim", "stem": "/etc/passwd", "size": 0},
    "pieces-good-then-forged": {
        "op": "pieces",
        "pieces": [["app.log.20261130-120001.0001", 0, 4], ["../outside/secret", 4, 8]],
    },
    "pieces-garbage": {"op": "pieces", "pieces": [[None, [], {}]] * 3},
    "unknown-op": {"op": "unlink", "stem": "app.log.20261130-120001.0001"},
}


@pytest.mark.parametrize("marker", list(FORGED_MARKERS.values()), ids=list(FORGED_MARKERS))
def test_a_forged_step_marker_is_refused_and_dropped_nothing_touched(
    vol: Path, canary: Canary, marker: object
) -> None:
    """Every forged marker: recovery raises nothing, counts a refusal, drops the marker and
    keeps the rest of the state (no rebuild); no file outside or inside is touched and the
    stream goes on, every event once."""
    metrics = Metrics()
    rot = rotator(vol, metrics)
    append(vol / "app.log", 0, 100)
    assert rot.rotate("size") is not None
    before = load_state(vol, "app.log")
    assert before is not None
    files = sorted(os.listdir(vol))
    plant_marker(vol, "app.log", marker)
    again = rotator(vol, metrics)
    again.recover()
    after = load_state(vol, "app.log")
    assert after == before, (before, after)  # the marker dropped, the offsets kept
    assert refused(metrics, "outside") == 1
    assert sorted(os.listdir(vol)) == files  # nothing created, removed or moved aside
    canary.assert_unchanged()
    append(vol / "app.log", 100, 200)
    assert again.rotate("size") is not None
    assert_exactly_once(vol, 200)
    canary.assert_unchanged()


def test_quiesce_leaves_every_event_once_in_the_files_themselves(vol: Path) -> None:
    """After a clean stop no committed event is still readable in the active file: a
    reader of the files other than logvold's (NULs dropped) sees each event once, and a
    restart recognises the zeroed file (no false "rewritten" restart at 0)."""
    metrics = Metrics()
    rot = rotator(vol, metrics)
    for i in range(5):
        append(vol / "app.log", i * 257, (i + 1) * 257)
        assert rot.rotate("size") is not None
    append(vol / "app.log", 5 * 257, 5 * 257 + 3)
    data = complete(files_view(vol, via_state=False), DELIM)
    assert not verify(split_raw([data], DELIM)).ok, "the kept block holds committed events"
    rot.quiesce()
    assert_exactly_once(vol, 5 * 257 + 3, via_state=False)
    assert_exactly_once(vol, 5 * 257 + 3, via_state=True)
    rot.quiesce()  # idempotent
    again = rotator(vol, metrics)
    append(vol / "app.log", 5 * 257 + 3, 1400)
    assert again.rotate("size") is not None
    assert metrics.truncations.labels("default", "pod", "app", "writer")._value.get() == 0
    assert_exactly_once(vol, 1400)


def test_a_stop_past_its_deadline_abandons_the_copy_before_the_commit(vol: Path) -> None:
    metrics = Metrics()
    rot = rotator(vol, metrics)
    append(vol / "app.log", 0, 500)
    rot.recover()
    rot.abandon_copy = lambda: True
    before = load_state(vol, "app.log")
    with pytest.raises(StreamError, match="nothing was committed"):
        rot.rotate("size")
    assert regular_segments(vol) == []
    assert [n for n in os.listdir(vol) if n.endswith(".tmp")] == []
    after = load_state(vol, "app.log")
    assert after is None or (after.committed_offset == 0 and after.intent is None), (before, after)
    rot.abandon_copy = lambda: False
    assert rot.rotate("size") is not None
    assert_exactly_once(vol, 500)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "socket", "directory", "hardlink"])
def test_compress_in_refuses_what_is_not_a_plain_segment(
    vol: Path, canary: Canary, kind: str
) -> None:
    """A FIFO is refused at once (never opened for a blocking read), a symlink never
    followed, a hard link never read; no temp file is left."""
    seg = vol / "app.log.20261130-120000.0000"
    if kind == "hardlink":
        os.link(canary.path, seg)
    else:
        plant(seg, kind, canary.path)
    with SafeDir.open_root(vol) as d, pytest.raises(UnsafeFile):
        compress_in(d, seg.name, "gzip")
    canary.assert_unchanged()
    assert sorted(os.listdir(vol)) == [seg.name]


def test_compress_stops_between_blocks_and_keeps_the_plain_segment(vol: Path) -> None:
    from logvold.fileio.compress import CompressionInterrupted

    seg = vol / "app.log.20261130-120000.0000"
    seg.write_bytes(os.urandom(3 * 2**20))
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1

    with SafeDir.open_root(vol) as d, pytest.raises(CompressionInterrupted):
        compress_in(d, seg.name, "zstd", should_stop=stop)
    assert sorted(os.listdir(vol)) == [seg.name]


def test_a_planted_directory_at_a_temp_name_is_refused_not_fatal(vol: Path) -> None:
    metrics = Metrics()
    clock = Clock()
    rot = rotator(vol, metrics, clock)
    rot.recover()
    append(vol / "app.log", 0, 300)
    names = [next_segment_name("app.log", clock.now + timedelta(seconds=k), []) for k in (1, 2, 3)]
    for name in names:
        (vol / (name.stem + ".tmp")).mkdir()
    assert rot.rotate("size") is None
    assert refused(metrics, "not-regular") >= 1
    for name in names:
        (vol / (name.stem + ".tmp")).rmdir()
    assert rot.rotate("size") is not None
    assert_exactly_once(vol, 300)
    assert stat.S_ISDIR((vol / ".logvold").stat().st_mode)


def test_worker_check_walks_from_the_safety_root(tmp_path: Path, canary: Canary) -> None:
    """The worker's pre-step check opens each component with O_NOFOLLOW from the stream's
    root: a symlinked subDir, active file or `.logvold` is refused (no realpath)."""
    from dataclasses import replace

    from logvold.daemon.steps import check_safe

    root = tmp_path / "emptydir"
    (root / "sub").mkdir(parents=True)
    info = replace(make_info(root / "sub"), root=root)
    check_safe(info, None)
    (root / "y").symlink_to(canary.path.parent)
    for directory, kind in ((root / "y", "symlink"), (tmp_path / "elsewhere", "outside")):
        with pytest.raises(UnsafeFile) as exc:
            check_safe(replace(info, directory=directory), None)
        assert exc.value.kind == kind
    (root / "sub" / "app.log").symlink_to(canary.path)
    with pytest.raises(UnsafeFile) as exc:
        check_safe(info, None)
    assert exc.value.kind == "symlink"
    (root / "sub" / "app.log").unlink()
    (root / "sub" / ".logvold").symlink_to(canary.path.parent)
    with pytest.raises(UnsafeFile) as exc:
        check_safe(info, None)
    assert exc.value.kind == "symlink"
    # A static stream without a root set uses the volume root it is handed.
    with pytest.raises(UnsafeFile):
        check_safe(replace(info, directory=root / "y", root=None), root)
    canary.assert_unchanged()
