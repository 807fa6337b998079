"""Which listed segments a reader serves from the listing, given the state it starts from.

A reader starts from one snapshot: the segments on disk, the state file, an fd of the
active file. Every event must be in exactly one of "the listed segments" and "the active
file after the state's committed offset". A rotation step breaks that while it is in
flight: its intent is saved first, then segment files appear (a punch or a batch of
pieces, a copytruncate copy) whose bytes the committed offset does not cover yet; the
active file still holds them. They may stay so for a long time: a rotator descheduled on
a loaded node, or killed, which leaves the intent until its next start recovers it. A
reader that served those segments from the listing and then the active file from the
committed offset served the same events twice (followers stepped back by a segment).

So a snapshot whose state names a step in flight is consistent once the segments that
step names are left out of the listing: the committed offset is the truth, the cursor
over the active file reads the rest (or waits for the step, see ActiveCursor._step).
Only a collapse in flight leaves the active file's layout (physical = logical - collapsed)
undecided: such a snapshot is retried, and when the intent stays (a crashed rotator) the
layout is settled the way the rotator's recovery settles it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from logvold.core.layout import SegmentName
from logvold.core.steps import (
    CollapseStep,
    Marker,
    RefusedStep,
    RenameStep,
    copied_stems,
)
from logvold.fileio.state import StreamState

SETTLED_OPS = frozenset({"punch", "pieces", "copytruncate", "trim", "rename"})
"""Intents a snapshot can be taken under (by leaving their segments out)."""


def uncommitted_stems(intent: Marker, active_id: tuple[int, int] | None) -> set[str]:
    """Segment stems an intent names whose bytes are not committed (still in the active
    file after the committed offset, or, for a rename, still reachable through the open
    fd `active_id` = (st_ino, st_dev) of the renamed inode)."""
    if isinstance(intent, RenameStep):
        return {intent.stem} if (intent.inode, intent.device) == active_id else set()
    # trim: the segment is committed, either version of it holds its events; a refused
    # (forged) marker names nothing a reader should believe.
    return set(copied_stems(intent))


def intent_op(state: StreamState | None) -> str | None:
    """The op of the step in flight, None without one; "refused" for a forged marker (a
    snapshot under it is retried like one under any unsettled step)."""
    if state is None or state.intent is None:
        return None
    return "refused" if isinstance(state.intent, RefusedStep) else state.intent.op


def committed_names(
    names: Sequence[SegmentName], state: StreamState | None, active_id: tuple[int, int] | None
) -> tuple[SegmentName, ...]:
    """`names` without the segments of the step in flight that `state` records."""
    if state is None or state.intent is None:
        return tuple(names)
    skip = uncommitted_stems(state.intent, active_id)
    return tuple(n for n in names if n.stem not in skip)


def settle_collapse(state: StreamState, fd: int) -> StreamState:
    """The layout of a collapse in flight, decided like the rotator's recovery: [0, length)
    was punched before the intent was saved, so data at physical 0 means the collapse ran
    (the committed offset's unpunched block moved there)."""
    intent = state.intent
    assert isinstance(intent, CollapseStep)
    length, before = intent.length, intent.collapsed_before
    if state.collapsed_bytes != before:
        return state
    try:
        first_data = os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            return state
        first_data = os.fstat(fd).st_size
    if first_data < length <= state.committed_offset - before:
        return state.with_(collapsed_bytes=before + length)
    return state
