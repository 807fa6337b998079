"""The per-stream state file: round trip, atomic replace, clear errors on corruption."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from logvold.core.steps import PunchStep
from logvold.errors import StateError
from logvold.fileio.safedir import UnsafeFile
from logvold.fileio.state import (
    MAX_SEGMENT_RECORDS,
    STATE_CAP_BYTES,
    SegmentRecord,
    StreamState,
    load_state,
    remove_state,
    save_state,
    state_path,
)


def _state(**kw: object) -> StreamState:
    base = dict(
        device=2049,
        inode=1234,
        committed_offset=65536,
        collapsed_bytes=61440,
        segments=(SegmentRecord("app.log.20261123-114800", 0, 65536),),
        intent=None,
    )
    base.update(kw)
    return StreamState(**base)  # type: ignore[arg-type]


def test_missing_state_is_none(tmp_path: Path) -> None:
    assert load_state(tmp_path, "app.log") is None


@pytest.mark.parametrize(
    "state",
    [
        _state(),
        _state(intent=PunchStep(stem="app.log.20261123-114801", start=65536, end=70000)),
        _state(committed_offset=0, collapsed_bytes=0, segments=()),
    ],
    ids=["committed", "with-intent", "fresh"],
)
def test_round_trip(tmp_path: Path, state: StreamState) -> None:
    save_state(tmp_path, "app.log", state)
    assert load_state(tmp_path, "app.log") == state
    assert state_path(tmp_path, "app.log") == tmp_path / ".logvold" / "app.log.state.json"
    assert not list((tmp_path / ".logvold").glob("*.tmp"))


def test_file_matches_the_contract(tmp_path: Path) -> None:
    save_state(tmp_path, "app.log", _state())
    tree = json.loads(state_path(tmp_path, "app.log").read_text())
    assert tree == {
        "version": 1,
        "device": 2049,
        "inode": 1234,
        "committed_offset": 65536,
        "collapsed_bytes": 61440,
        "segments": [{"stem": "app.log.20261123-114800", "logical_start": 0, "logical_end": 65536}],
        "intent": None,
    }
    assert _state().physical_committed == 4096


def test_save_replaces_atomically(tmp_path: Path) -> None:
    save_state(tmp_path, "app.log", _state())
    inode_before = state_path(tmp_path, "app.log").stat().st_ino
    save_state(tmp_path, "app.log", _state(committed_offset=70000))
    assert state_path(tmp_path, "app.log").stat().st_ino != inode_before
    loaded = load_state(tmp_path, "app.log")
    assert loaded is not None and loaded.committed_offset == 70000


def test_only_recent_segment_records_are_kept(tmp_path: Path) -> None:
    records = tuple(SegmentRecord(f"app.log.20261123-1148{i:02d}", i, i + 1) for i in range(60))
    records += tuple(SegmentRecord(f"app.log.20261123-1149{i:02d}", i, i + 1) for i in range(10))
    save_state(tmp_path, "app.log", _state(segments=records))
    loaded = load_state(tmp_path, "app.log")
    assert loaded is not None and loaded.segments == records[-64:]


@pytest.mark.parametrize(
    "content, words",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "malformed"),
        (b'{"version": 2}', "unsupported version"),
        (
            b'{"version": 1, "device": 1, "inode": 2, '
            b'"committed_offset": -5, "collapsed_bytes": 0}',
            "committed_offset must be a non-negative integer",
        ),
        (
            b'{"version": 1, "device": 1, "inode": 2, "committed_offset": 5, "collapsed_bytes": 9}',
            "collapsed_bytes exceeds",
        ),
        (
            b'{"version": 1, "device": 1, "inode": 2, "committed_offset": 5, "collapsed_bytes": 0,'
            b' "segments": [{"stem": "x", "logical_start": 9, "logical_end": 3}]}',
            "ends before",
        ),
        (
            b'{"version": 1, "device": 1, "inode": 2, "committed_offset": 5, "collapsed_bytes": 0,'
            b' "intent": {"stem": "x"}}',
            "bad intent",
        ),
        (b'{"version": 1, "device": 1, "committed_offset": 5, "collapsed_bytes": 0}', "inode"),
    ],
    ids=[
        "syntax",
        "binary",
        "not-object",
        "version",
        "negative",
        "collapsed",
        "segment",
        "intent",
        "missing-key",
    ],
)
def test_corrupt_state_is_a_clear_state_error(tmp_path: Path, content: bytes, words: str) -> None:
    path = state_path(tmp_path, "app.log")
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(StateError, match=words) as info:
        load_state(tmp_path, "app.log")
    assert info.value.path == str(path)
    assert "rebuilds" in str(info.value) or "version" in words


def test_a_file_or_symlink_at_the_state_dir_is_refused(tmp_path: Path) -> None:
    """Nothing is written through a `.logvold` that is not a real directory of the volume."""
    (tmp_path / ".logvold").write_text("a file where the directory should be")
    with pytest.raises(UnsafeFile, match="not a directory") as exc:
        save_state(tmp_path, "app.log", _state())
    assert exc.value.kind == "not-directory"
    (tmp_path / ".logvold").unlink()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / ".logvold").symlink_to(outside)
    calls: tuple[Callable[[], object], ...] = (
        lambda: save_state(tmp_path, "app.log", _state()),
        lambda: load_state(tmp_path, "app.log"),
    )
    for call in calls:
        with pytest.raises(UnsafeFile) as exc:
            call()
        assert exc.value.kind == "symlink"
    assert os.listdir(outside) == []


def test_an_oversized_state_file_is_corrupt_and_never_read(tmp_path: Path) -> None:
    """A sparse 3 GiB state file costs an fstat: it is a StateError (rebuilt), not a read."""
    path = state_path(tmp_path, "app.log")
    path.parent.mkdir()
    with path.open("wb") as f:
        f.truncate(3 * 2**30)
    with pytest.raises(StateError, match="refused") as exc:
        load_state(tmp_path, "app.log")
    assert isinstance(exc.value.__cause__, UnsafeFile) and exc.value.__cause__.kind == "too-big"
    assert STATE_CAP_BYTES <= 64 * 1024


def test_too_many_segment_records_is_malformed(tmp_path: Path) -> None:
    records = [
        {"stem": f"app.log.20261123-1158{i:02d}", "logical_start": i, "logical_end": i}
        for i in range(MAX_SEGMENT_RECORDS + 1)
    ]
    path = state_path(tmp_path, "app.log")
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "device": 1,
                "inode": 2,
                "committed_offset": 5,
                "collapsed_bytes": 0,
                "segments": records,
            }
        )
    )
    with pytest.raises(StateError, match="at most"):
        load_state(tmp_path, "app.log")


def test_the_biggest_valid_state_fits_the_cap(tmp_path: Path) -> None:
    base = "a" * 200 + ".log"
    stem = base + ".20261123-115800.0001"
    state = _state(
        segments=tuple(SegmentRecord(stem, 2**62, 2**62) for _ in range(MAX_SEGMENT_RECORDS)),
        intent=PunchStep(stem=stem, start=2**62, end=2**62),
    )
    save_state(tmp_path, base, state)
    assert state_path(tmp_path, base).stat().st_size < STATE_CAP_BYTES
    assert load_state(tmp_path, base) == state


def test_remove_state(tmp_path: Path) -> None:
    save_state(tmp_path, "app.log", _state())
    remove_state(tmp_path, "app.log")
    remove_state(tmp_path, "app.log")
    assert load_state(tmp_path, "app.log") is None
    assert os.listdir(tmp_path / ".logvold") == []
