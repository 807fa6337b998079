"""Typed step markers ("intents") of the rotator, as the state file records them.

Every multi-step change of a stream writes a marker into its state file first, so
that a restart after a crash finishes or undoes the step (fileio/rotator/). The state
file lives in the pod's volume: the pod may rewrite it, so a marker read back is
hostile input. `step_from_dict` checks every field (exact keys, types, non-negative
offsets below 2**63, `end >= start`, a stem that is a plain segment name of this very
stream, a contiguous batch of distinct pieces) and answers a `RefusedStep` naming the
reason instead of raising: recovery refuses it (counted, logged), drops it and touches
no file. A genuine marker is never refused.

The JSON shape is the one written since the state file's version 1 (`to_dict` gives it
back key for key), e.g. `{"op": "punch", "stem": "app.log.20261123-114801.0001",
"start": 65536, "end": 70000}`; a batch of pieces is `{"op": "pieces", "pieces":
[[stem, start, end], ...]}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

from logvold.core.layout import parse_segment_name
from logvold.core.pieces import MAX_PIECES_PER_STEP

#: Offsets and sizes are off_t values: anything at or past this is forged (and would not
#: fit a system call).
OFFSET_LIMIT = 2**63


class PieceMark(NamedTuple):
    """One segment of a batch: logical bytes [start, end) of the active file in `stem`."""

    stem: str
    start: int
    end: int


@dataclass(frozen=True, kw_only=True)
class PunchStep:
    """Logical [start, end) is being copied into `<stem>`, then committed, then punched."""

    op: ClassVar[str] = "punch"
    stem: str
    start: int
    end: int


@dataclass(frozen=True, kw_only=True)
class PiecesStep:
    """A batch of punch pieces under one marker: segments written, one commit, one punch."""

    op: ClassVar[str] = "pieces"
    pieces: tuple[PieceMark, ...]


@dataclass(frozen=True, kw_only=True)
class CollapseStep:
    """COLLAPSE_RANGE of physical [0, length) (already punched: a hole tells if it ran)."""

    op: ClassVar[str] = "collapse"
    length: int
    collapsed_before: int


@dataclass(frozen=True, kw_only=True)
class RenameStep:
    """The active file (this device and inode) is being renamed to `<stem>`."""

    op: ClassVar[str] = "rename"
    stem: str
    device: int
    inode: int


@dataclass(frozen=True, kw_only=True)
class CopytruncateStep:
    """Logical [start, end) is being copied into `<stem>`; physical_end is where the copy
    ends in today's file (the truncate did not run while the file is still that long)."""

    op: ClassVar[str] = "copytruncate"
    stem: str
    start: int
    end: int
    physical_end: int


@dataclass(frozen=True, kw_only=True)
class TrimStep:
    """Retention replaces segment `<stem>` with its last `size` bytes."""

    op: ClassVar[str] = "trim"
    stem: str
    size: int


@dataclass(frozen=True, kw_only=True)
class RefusedStep:
    """A marker that failed validation (forged or damaged): never acted on, never written
    back (a state holding one is saved without a marker)."""

    op: str
    """The marker's `op` as read ("?" when it had none worth showing)."""
    reason: str
    """Why it was refused, for the log."""


Step = PunchStep | PiecesStep | CollapseStep | RenameStep | CopytruncateStep | TrimStep
"""A valid step marker."""
Marker = Step | RefusedStep
"""What a state file's `intent` loads as."""

_STEP_TYPES: tuple[type[Step], ...] = (
    PunchStep,
    PiecesStep,
    CollapseStep,
    RenameStep,
    CopytruncateStep,
    TrimStep,
)
_KINDS: dict[str, type[Step]] = {k.op: k for k in _STEP_TYPES}


def copied_stems(intent: Marker | None) -> frozenset[str]:
    """Segments a punch, pieces or copytruncate step writes (copies of the active file's
    bytes) before its commit: until the commit those bytes are still the active file's,
    so readers leave these segments out and compression leaves them alone (recovery
    checks them by their plain name and size). A rename's segment is the active inode
    itself (reader_snapshot decides by the open fd); trim, collapse and a refused
    marker name none."""
    if isinstance(intent, PunchStep | CopytruncateStep):
        return frozenset({intent.stem})
    if isinstance(intent, PiecesStep):
        return frozenset(p.stem for p in intent.pieces)
    return frozenset()


class _ForgedField(ValueError):
    """A marker field failed validation (internal: turned into a RefusedStep)."""


def step_to_dict(step: Step) -> dict[str, Any]:
    """The JSON object of `step`, exactly as the state file has always held it."""
    out: dict[str, Any] = {"op": step.op}
    for f in fields(step):
        value = getattr(step, f.name)
        out[f.name] = [list(p) for p in value] if isinstance(step, PiecesStep) else value
    return out


def step_from_dict(tree: Mapping[str, Any], base: str) -> Marker:
    """The typed marker of JSON object `tree` for active file `base`, or a RefusedStep
    saying what is wrong with it. Never raises on any JSON value."""
    op = tree.get("op")
    shown = op[:32] if isinstance(op, str) else "?"
    kind = _KINDS.get(op) if isinstance(op, str) else None
    if kind is None:
        return RefusedStep(op=shown, reason=f"unknown step {shown!r}")
    try:
        return _parse(kind, tree, base)
    except _ForgedField as e:
        return RefusedStep(op=shown, reason=str(e))


def _parse(kind: type[Step], tree: Mapping[str, Any], base: str) -> Step:
    names = {f.name for f in fields(kind)}
    extra = set(tree) - names - {"op"}
    missing = names - set(tree)
    if extra or missing:
        wrong = [f"missing {sorted(missing)}"] if missing else []
        wrong += [f"unexpected {sorted(str(k)[:32] for k in extra)[:4]}"] if extra else []
        raise _ForgedField(f"{kind.op} marker keys: {', '.join(wrong)}")
    if kind is PiecesStep:
        return PiecesStep(pieces=_pieces(tree["pieces"], base))
    values: dict[str, Any] = {
        name: _stem(tree[name], base) if name == "stem" else _offset(tree[name], name)
        for name in names
    }
    step = kind(**values)
    start, end = values.get("start", 0), values.get("end", 0)
    if end < start:
        raise _ForgedField(f"{kind.op} marker ends ({end}) before it starts ({start})")
    if isinstance(step, CollapseStep) and step.length == 0:
        raise _ForgedField("collapse marker of 0 bytes")
    return step


def _offset(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < OFFSET_LIMIT:
        raise _ForgedField(f"{name} must be an integer in [0, 2**63), got {str(value)[:32]!r}")
    return value


def _stem(value: object, base: str) -> str:
    """A plain (uncompressed) segment name of `base`: a forged marker may name any file,
    recovery only ever touches a segment of this stream."""
    if not isinstance(value, str):
        raise _ForgedField(f"stem must be a string, got {type(value).__name__}")
    name = parse_segment_name(base, value)
    if name is None or name.compression or name.filename != value:
        raise _ForgedField(f"marker names {value[:300]!r}, not a segment of {base}")
    return value


def _pieces(value: object, base: str) -> tuple[PieceMark, ...]:
    """A non-empty batch of [stem, start, end], each starting where the one before ends,
    every stem named once."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_PIECES_PER_STEP:
        raise _ForgedField(
            f"pieces must be a list of 1 to {MAX_PIECES_PER_STEP} [stem, start, end]"
        )
    out: list[PieceMark] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            raise _ForgedField("a piece must be [stem, start, end]")
        mark = PieceMark(_stem(item[0], base), _offset(item[1], "start"), _offset(item[2], "end"))
        if mark.end < mark.start:
            raise _ForgedField(f"piece {mark.stem} ends before it starts")
        if out and (mark.start != out[-1].end or mark.stem in {p.stem for p in out}):
            raise _ForgedField(f"piece {mark.stem} does not follow the one before it")
        out.append(mark)
    return tuple(out)


__all__ = [
    "CollapseStep",
    "CopytruncateStep",
    "Marker",
    "PieceMark",
    "PiecesStep",
    "PunchStep",
    "RefusedStep",
    "RenameStep",
    "Step",
    "TrimStep",
    "copied_stems",
    "step_from_dict",
    "step_to_dict",
]
