"""`logvold run` (raw, one-byte delimiter) splices until the size trigger, then reads a
small peek (4 KiB first, doubling up to 64 KiB) to find where the straddling event
ends, writes up to there, cuts, and writes the rest of the peek in one piece; the pipe
is non-blocking and spliced until empty. Events of every size straddle the trigger at
every offset: short ones, ones longer than the first peek, longer than the largest
peek, and (with a small -max-event-size) longer than maxEventSize. The child writes
random chunks from 1 byte to 256 KiB, so the trigger falls inside splices, inside
peeks and on event ends. Every event is found once, whole and in order; every segment
ends at an event end and was cut at the first event end after the trigger. Each case
runs with `-copy=splice` (the path above) and `-copy=read` (the default: a buffer
framed in place)."""

from __future__ import annotations

import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.integration.test_runner_integrity import ENV, REPO, RUNNER, stream_pieces
from tests.support.events import split_raw, verify

SEGMENT = 8 * 1024
CHILD = """
import os, random, sys
rng = random.Random(int(sys.argv[2]))
data = open(sys.argv[1], "rb").read()
pos = 0
while pos < len(data):
    end = min(len(data), pos + rng.choice([1, 50, 700, 4096, 9000, 65536, 262144]))
    view = memoryview(data)[pos:end]
    while view:
        view = view[os.write(1, view):]
    pos = end
"""


def sized_event(seq: int, size: int, pool: bytes, rng: random.Random) -> bytes:
    """An event of about `size` bytes in tests.support.events' format (E#seq crc payload)."""
    start = rng.randrange(0, len(pool) - size)
    payload = pool[start : start + size]
    head = b"E#%010d " % seq
    crc = zlib.crc32(head + payload) & 0xFFFFFFFF
    return head + b"%08x " % crc + payload + b"\n"


def source(count: int, seed: int, sizes: list[tuple[int, int, int]]) -> tuple[bytes, list[int]]:
    """`count` events whose payload sizes are drawn from (weight, low, high) ranges."""
    rng = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+/"
    pool = bytes(rng.choice(alphabet) for _ in range(1 << 18))
    weights = [w for w, _, _ in sizes]
    events = []
    for seq in range(count):
        _, low, high = rng.choices(sizes, weights)[0]
        events.append(sized_event(seq, rng.randint(low, high), pool, rng))
    return b"".join(events), [len(e) for e in events]


def run_child(tmp_path: Path, data: bytes, *flags: str) -> list[tuple[str, bytes]]:
    (tmp_path / "src.bin").write_bytes(data)
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    done = subprocess.run(
        [*RUNNER, f"-log-file={log}", f"-log-file-size={SEGMENT}", *flags,
         sys.executable, "-c", CHILD, str(tmp_path / "src.bin"), "7"],
        env=ENV, cwd=REPO, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, b"")
    return stream_pieces(log)


COPY_MODES = pytest.mark.parametrize("copy", ["splice", "read"])


@COPY_MODES
@pytest.mark.parametrize("seed", [1, 2])
def test_events_of_every_size_straddle_the_trigger_and_stay_whole(
    tmp_path: Path, seed: int, copy: str
) -> None:
    # Mostly short events; some longer than the first 4 KiB peek, some longer than the
    # largest 64 KiB peek (all below the default 1 MiB maxEventSize: none may be cut).
    data, _ = source(
        3000, seed, [(85, 20, 300), (10, 4_000, 20_000), (2, 66_000, 150_000), (3, 0, 0)]
    )
    pieces = run_child(tmp_path, data, f"-copy={copy}")
    assert len(pieces) > 100
    assert b"".join(d for _, d in pieces) == data  # nothing lost, doubled or reordered
    for name, body in pieces[:-1]:
        assert body.endswith(b"\n"), f"{name} ends inside an event"
        # Cut at the first event end at or after the trigger, not one event later.
        last_start = body.rfind(b"\n", 0, len(body) - 1) + 1
        assert last_start < SEGMENT <= len(body), (name, last_start, len(body))
        report = verify(split_raw([body]), allow_missing_prefix=True)
        assert report.ok and not report.corrupt, f"{name}: {report.summary()}"
    report = verify(split_raw(d for _, d in pieces))
    assert report.ok and report.seen == 3000, report.summary()


@COPY_MODES
def test_events_longer_than_max_event_size_are_the_only_ones_cut(tmp_path: Path, copy: str) -> None:
    max_event = 16 * 1024
    data, lengths = source(2000, 3, [(80, 20, 300), (12, 5_000, 15_000), (8, 17_000, 60_000)])
    pieces = run_child(tmp_path, data, f"-max-event-size={max_event}", f"-copy={copy}")
    assert len(pieces) > 100
    assert b"".join(d for _, d in pieces) == data
    # Event ends in the source, and where an over-long event may be cut: every
    # maxEventSize bytes from its start.
    ends: set[int] = set()
    cuts: set[int] = set()
    offset = 0
    for length in lengths:
        cuts.update(range(offset + max_event, offset + length, max_event))
        offset += length
        ends.add(offset)
    offset = 0
    for name, body in pieces[:-1]:
        offset += len(body)
        assert offset in ends or offset in cuts, f"{name} ends inside an event"
    assert any(offset in cuts for offset in _ends(pieces[:-1])), "no segment ended in a cut"
    report = verify(split_raw(d for _, d in pieces))
    assert report.ok and report.seen == 2000, report.summary()


def _ends(pieces: list[tuple[str, bytes]]) -> list[int]:
    """Stream offsets at which the pieces end."""
    out, offset = [], 0
    for _, body in pieces:
        offset += len(body)
        out.append(offset)
    return out
