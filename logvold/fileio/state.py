"""The crash-safe per-stream state file `<dir>/.logvold/<base>.state.json`.

It records how much of a foreign writer's active file is already cut into
segments (the committed offset), how much COLLAPSE_RANGE removed from its
head, and the intent of a rotation step in flight, so that a restart after a
crash at any instant neither duplicates nor drops an event.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from logvold.core.layout import STATE_DIR_NAME, state_file_name
from logvold.core.steps import Marker, RefusedStep, step_from_dict, step_to_dict
from logvold.errors import StateError
from logvold.fileio.safedir import SafeDir, UnsafeFile

STATE_VERSION = 1
#: How many segment records a state keeps: enough for followers lagging a few rotations.
MAX_SEGMENT_RECORDS = 64
#: A valid state (64 records of a stem up to 255 bytes and two offsets, an intent) is far
#: below this; a bigger file is corrupt (or a sparse bomb) and is never read.
STATE_CAP_BYTES = 64 * 1024


class SegmentRecord(NamedTuple):
    """A segment cut from the state's inode: which logical bytes of the active file it holds,
    and when they were written (UNIX ns; 0 = unknown): raw streams have no event times,
    so `sinceTime` works at segment granularity from these bounds."""

    stem: str
    logical_start: int
    logical_end: int
    first_write_ns: int = 0
    """The active file's mtime at the previous cut of this inode: its later bytes (all of
    this segment but an event already open then) were written after it."""
    last_write_ns: int = 0
    """The active file's mtime at this cut: no byte of the segment is newer."""


@dataclass(frozen=True, kw_only=True)
class StreamState:
    """What the rotator has done to one active file (identified by device and inode)."""

    device: int
    """st_dev of the active file this state describes; another file means a fresh start."""
    inode: int
    """st_ino of that file."""
    committed_offset: int = 0
    """LOGICAL offset: every byte before it is in a segment (or dropped by retention)."""
    collapsed_bytes: int = 0
    """Bytes removed from the file head by COLLAPSE_RANGE; physical = logical - collapsed."""
    segments: tuple[SegmentRecord, ...] = ()
    """Recent segments cut from this inode, oldest first (for followers behind a punch)."""
    intent: Marker | None = field(default=None, compare=True)
    """The marker of a step in flight (core/steps.py), else None. A RefusedStep (a forged or
    damaged marker read back) is never acted on and saved as None."""

    @property
    def physical_committed(self) -> int:
        """Where a reader of the active file starts: the committed offset in today's file."""
        return self.committed_offset - self.collapsed_bytes

    def with_(self, **changes: Any) -> StreamState:
        """A copy with `changes` applied (dataclasses.replace with a short name)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "device": self.device,
            "inode": self.inode,
            "committed_offset": self.committed_offset,
            "collapsed_bytes": self.collapsed_bytes,
            "segments": [
                {
                    "stem": s.stem,
                    "logical_start": s.logical_start,
                    "logical_end": s.logical_end,
                    **(
                        {"first_write_ns": s.first_write_ns, "last_write_ns": s.last_write_ns}
                        if s.last_write_ns
                        else {}
                    ),
                }
                for s in self.segments[-MAX_SEGMENT_RECORDS:]
            ],
            "intent": (
                step_to_dict(self.intent)
                if self.intent is not None and not isinstance(self.intent, RefusedStep)
                else None
            ),
        }


def state_path(directory: Path | str, base: str) -> Path:
    """Path of the state file of active file `base` in `directory`."""
    return Path(directory) / STATE_DIR_NAME / state_file_name(base)


def load_state(directory: Path | str, base: str) -> StreamState | None:
    """The saved state of `base` in `directory` (see `load_state_in`); the directory
    itself is taken as given, `.logvold` and the state file are reached through SafeDir."""
    try:
        d = SafeDir.open_root(Path(directory))
    except FileNotFoundError:
        return None
    with d:
        return load_state_in(d, base)


def load_state_in(d: SafeDir, base: str) -> StreamState | None:
    """The saved state of `base` in stream directory `d`, or None when there is none yet.

    Raises StateError when the file exists but cannot be read or does not hold a valid
    state (the rotator then rebuilds the committed offset from the files): bigger than
    STATE_CAP_BYTES, a symlink, a FIFO or a hard link in its place count as corrupt (the
    UnsafeFile is the StateError's __cause__). A symlinked `.logvold` raises UnsafeFile:
    logvold neither reads nor writes state through it.
    """
    path = state_path(d.path, base)
    try:
        sd = d.subdir(STATE_DIR_NAME)
    except FileNotFoundError:
        return None
    except UnsafeFile:
        raise
    except OSError as e:
        raise StateError(
            f"cannot open {d.path / STATE_DIR_NAME}: {e.strerror}; check permissions",
            path=str(path),
            op="load state",
        ) from e
    with sd:
        try:
            raw = sd.read_capped(state_file_name(base), STATE_CAP_BYTES)
        except FileNotFoundError:
            return None
        except UnsafeFile as e:
            raise StateError(
                f"state file {path} refused ({e}); logvold rebuilds it from the "
                "active file and its newest segment",
                path=str(path),
                op="load state",
            ) from e
        except OSError as e:
            raise StateError(
                f"cannot read state file {path}: {e.strerror}; check permissions",
                path=str(path),
                op="load state",
            ) from e
    try:
        tree = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(
            f"state file {path} is not valid JSON ({e}); logvold rebuilds it "
            "from the active file and its newest segment",
            path=str(path),
            op="load state",
        ) from e
    try:
        return _from_json(tree, base)
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(
            f"state file {path} is malformed ({e}); logvold rebuilds it from the "
            "active file and its newest segment",
            path=str(path),
            op="load state",
        ) from e


def _int(tree: Mapping[str, Any], key: str) -> int:
    value = tree[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _from_json(tree: Any, base: str) -> StreamState:
    """The state of active file `base` in JSON value `tree`; KeyError, TypeError or
    ValueError when it is not one. A marker that is an object with a string `op` but fails
    validation loads as a RefusedStep (the rest of the state stands)."""
    if not isinstance(tree, dict):
        raise TypeError("top level must be an object")
    if tree.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported version {tree.get('version')!r}")
    segments = []
    records = tree.get("segments") or []
    if not isinstance(records, list) or len(records) > MAX_SEGMENT_RECORDS:
        raise ValueError(f"segments must be a list of at most {MAX_SEGMENT_RECORDS} records")
    for item in records:
        if not isinstance(item, dict) or not isinstance(item.get("stem"), str):
            raise TypeError(f"bad segment record {item!r}")
        rec = SegmentRecord(
            item["stem"],
            _int(item, "logical_start"),
            _int(item, "logical_end"),
            _int(item, "first_write_ns") if "first_write_ns" in item else 0,
            _int(item, "last_write_ns") if "last_write_ns" in item else 0,
        )
        if rec.logical_end < rec.logical_start:
            raise ValueError(f"segment record {rec.stem} ends before it starts")
        segments.append(rec)
    intent = tree.get("intent")
    if intent is not None and not (isinstance(intent, dict) and isinstance(intent.get("op"), str)):
        raise TypeError(f"bad intent {intent!r}")
    state = StreamState(
        device=_int(tree, "device"),
        inode=_int(tree, "inode"),
        committed_offset=_int(tree, "committed_offset"),
        collapsed_bytes=_int(tree, "collapsed_bytes"),
        segments=tuple(segments),
        intent=step_from_dict(intent, base) if intent is not None else None,
    )
    if state.collapsed_bytes > state.committed_offset:
        raise ValueError("collapsed_bytes exceeds committed_offset")
    return state


def save_state(directory: Path | str, base: str, state: StreamState) -> None:
    """`save_state_in` for a directory taken as given (tests, tools)."""
    try:
        d = SafeDir.open_root(Path(directory))
    except OSError as e:
        raise StateError(
            f"cannot save state in {directory}: {e.strerror}", path=str(directory), op="save state"
        ) from e
    with d:
        save_state_in(d, base, state)


def save_state_in(d: SafeDir, base: str, state: StreamState) -> None:
    """Write `state` atomically into `d/.logvold/`: exclusive tmp file, fsync, rename,
    fsync of the state directory. A crash at any instant leaves the previous state or
    this one. Raises StateError (with the errno) when it cannot, UnsafeFile when
    `.logvold` is a symlink or not a directory (nothing is written through it).
    """
    path = state_path(d.path, base)
    data = json.dumps(state.to_json(), separators=(",", ":")).encode() + b"\n"
    try:
        with d.subdir(STATE_DIR_NAME, create=True) as sd:
            sd.write_atomically(state_file_name(base), data)
    except UnsafeFile:
        raise
    except OSError as e:
        raise StateError(
            f"cannot save state file {path}: {e.strerror}; free space or fix "
            "permissions, the rotation is retried",
            path=str(path),
            op="save state",
        ) from e


def remove_state(directory: Path | str, base: str) -> None:
    """Delete the state of `base` (its stream is gone); missing is fine."""
    with (
        contextlib.suppress(FileNotFoundError),
        SafeDir.open_root(Path(directory)) as d,
        d.subdir(STATE_DIR_NAME) as sd,
    ):
        sd.unlink(state_file_name(base))
