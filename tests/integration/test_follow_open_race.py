"""A follower that opens the active file while a rotation commits and punches past the
committed offset it planned from must read the cut events from the new segment, not
skip the fresh hole as if it were a gap.

The proving ground caught this once (a cri follower jumped 137 events, one piece, then
one more event: the first event of the other stream, which a hole skip drops too). The
window is between the reader's last look at the state in `ActiveCursor._open` and its
SEEK_DATA in `_skip_hole`; here a test-only wrapper around `_skip_hole` runs the real
StreamRotator's whole rotation in that window (the reader itself is unchanged), so the
interleaving happens on every run instead of once in many.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.fileio.reader import ReadOptions, StreamReader
from logvold.fileio.reader_active import ActiveCursor
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from tests.support.events import parse_event
from tests.support.format_writer import encode_event

MAX_SIZE = 64 * 1024
SEED = 5


def _info(tmp: Path, fmt: str, collapse: str) -> StreamInfo:
    delimiter = b"\n\n" if fmt == "raw" else b"\n"
    return StreamInfo(
        key=StreamKey("default", "pod", "app"),
        directory=tmp,
        base="app.log",
        volume="logs",
        policy=LogPolicy(
            format=fmt,  # type: ignore[arg-type]
            delimiter=delimiter,
            max_size_bytes=MAX_SIZE,
            max_files=0,
            collapse=collapse,  # type: ignore[arg-type]
        ),
    )


class Writer:
    """An O_APPEND writer of sequence-numbered events (whole events only)."""

    def __init__(self, info: StreamInfo) -> None:
        self.info = info
        self.fd = os.open(info.active_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.next_seq = 0

    def write(self, nbytes: int) -> None:
        out = b""
        while len(out) < nbytes:
            out += encode_event(
                self.info.policy.format,
                self.next_seq,
                SEED,
                delimiter=self.info.policy.delimiter,
                max_len=3000,
            )
            self.next_seq += 1
        os.write(self.fd, out)


def _seqs_until(fmt: str, chunks: Iterator[bytes], last: int) -> list[int | None]:
    """Sequence numbers served (None: a body that is not an intact event) up to `last`."""
    buf = b""
    seqs: list[int | None] = []
    for _ in range(100_000):
        chunk = next(chunks)
        buf += chunk
        *bodies, buf = buf.split(b"\n\n" if fmt == "raw" else b"\n")
        seqs += [parse_event(b) for b in bodies]
        if last in seqs:
            return seqs
    raise AssertionError(f"event {last} never came; got {len(seqs)} events")


@pytest.mark.parametrize(
    ("fmt", "collapse", "tail"),
    [("cri", "never", None), ("cri", "always", 2), ("raw", "never", None)],
)
def test_open_racing_a_punch_serves_the_cut_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, collapse: str, tail: int | None
) -> None:
    info = _info(tmp_path, fmt, collapse)
    writer = Writer(info)
    rotator = StreamRotator(info, collapse_min_bytes=MAX_SIZE)
    writer.write(3 * MAX_SIZE)
    assert rotator.needs_rotation() and rotator.rotate("size")
    writer.write(2 * MAX_SIZE)  # the backlog the racing rotation cuts
    before = load_state(tmp_path, info.base)
    assert before is not None

    raced: list[int] = []
    original: Callable[..., int] = ActiveCursor._skip_hole

    def skip_hole(self: ActiveCursor, start: int, size: int) -> int:
        if not raced:  # once: the rotator commits and punches past `start` right now
            assert rotator.needs_rotation() and rotator.rotate("size")
            raced.append(start)
        return original(self, start, size)

    monkeypatch.setattr(ActiveCursor, "_skip_hole", skip_hole)
    reader = StreamReader(info, ReadOptions(follow=True, tail_events=tail), poll_interval_s=0.0)
    chunks = reader.chunks()
    try:
        last = writer.next_seq - 1
        got = _seqs_until(fmt, chunks, last)
    finally:
        chunks.close()  # type: ignore[attr-defined]
        os.close(writer.fd)
    after = load_state(tmp_path, info.base)
    assert raced and after is not None and after.committed_offset > before.committed_offset
    assert None not in got, "a corrupt or split event was served"
    first = got[0]
    assert first is not None
    want = list(range(first, last + 1))
    missing = sorted(set(want) - set(got))
    assert got == want, f"missing {missing[:10]} ({len(missing)}), served {len(got)}"
    if tail is None:
        assert first == 0
