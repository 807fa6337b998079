"""Builds real stream directories for reader and API tests: closed segments (plain,
gzip, zstd) and an active file whose head is punched with real fallocate, plus the
state file, all from sequence-numbered events (tests.support.events)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.fileio.state import SegmentRecord, StreamState, save_state
from tests.support.events import event_stream

T0_NS = 1_795_400_000 * 1_000_000_000  # 2026-11-23T...Z, a fixed clock for the fixtures
STEP_NS = 1_000_000_000  # one event per second: segment stamps (seconds) separate them

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Real FALLOC_FL_PUNCH_HOLE (the file keeps its size, the blocks are freed)."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def event_ts(seq: int) -> int:
    return T0_NS + seq * STEP_NS


@dataclass
class Ev:
    """One generated event and how it is written to the file."""

    seq: int
    body: bytes
    """The event without its delimiter (what verify() checks)."""
    stream: str
    ts_ns: int
    encoded: bytes
    """Its bytes in the file (raw event, CRI lines with P fragments, json-file entries)."""


def make_events(
    count: int,
    fmt: str,
    *,
    seed: int = 1,
    delimiter: bytes = b"\n",
    stderr_every: int = 0,
    fragments: bool = True,
    start: int = 0,
) -> list[Ev]:
    rng = random.Random(seed)
    out = []
    for i, ev in enumerate(
        event_stream(
            count,
            seed=seed,
            start=start,
            delimiter=delimiter,
            multiline=False if fmt != "raw" else None,
        )
    ):
        seq = start + i
        body = ev[: -len(delimiter)]
        stream = "stderr" if stderr_every and seq % stderr_every == 0 else "stdout"
        ts = event_ts(seq)
        out.append(
            Ev(
                seq,
                body,
                stream,
                ts,
                encode(body, fmt, stream, ts, rng, delimiter=delimiter, fragments=fragments),
            )
        )
    return out


def encode(
    body: bytes,
    fmt: str,
    stream: str,
    ts: int,
    rng: random.Random,
    *,
    delimiter: bytes = b"\n",
    fragments: bool = True,
) -> bytes:
    if fmt == "raw":
        return body + delimiter
    pieces = [body]
    if fragments and len(body) > 40 and rng.random() < 0.3:
        cut = sorted(rng.sample(range(1, len(body)), 2))
        pieces = [body[: cut[0]], body[cut[0] : cut[1]], body[cut[1] :]]
    lines = []
    for k, piece in enumerate(pieces):
        last = k == len(pieces) - 1
        if fmt == "cri":
            tag = b"F" if last else b"P"
            lines.append(f"{rfc3339(ts)} {stream} ".encode() + tag + b" " + piece + b"\n")
        else:
            import json

            text = piece.decode() + ("\n" if last else "")
            lines.append(
                json.dumps({"log": text, "stream": stream, "time": rfc3339(ts)}).encode() + b"\n"
            )
    return b"".join(lines)


def stamp_name(base: str, ns: int) -> str:
    return f"{base}.{datetime.fromtimestamp(ns // 1_000_000_000, UTC):%Y%m%d-%H%M%S}"


def build_stream(
    directory: Path,
    events: Sequence[Ev],
    *,
    fmt: str = "raw",
    layout: Sequence[tuple[str, int]] = (("gz", 50), ("zst", 50), ("plain", 50)),
    base: str = "app.log",
    punch: bool = True,
    delimiter: bytes = b"\n",
    key: StreamKey | None = None,
    trailing: bytes = b"",
) -> StreamInfo:
    """Segments per `layout` ((compression, n events) oldest first), then the rest of
    `events` in the active file. With `punch`, the last segment's bytes also sit at the
    head of the active file, punched out, with a state whose committed offset passes them
    (exactly what the punch rotator leaves)."""
    directory.mkdir(parents=True, exist_ok=True)
    i = 0
    last_plain = b""
    last_stem = ""
    for compression, n in layout:
        chunk = events[i : i + n]
        i += n
        data = b"".join(e.encoded for e in chunk)
        stem = stamp_name(base, chunk[-1].ts_ns + 1)
        path = directory / stem
        if compression == "gz":
            (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
        elif compression == "zst":
            # Two frames: readers must read across frames.
            c = zstandard.ZstdCompressor()
            half = len(data) // 2
            (directory / (stem + ".zst")).write_bytes(
                c.compress(data[:half]) + c.compress(data[half:])
            )
        else:
            path.write_bytes(data)
        last_plain, last_stem = data, stem
    active = directory / base
    live = b"".join(e.encoded for e in events[i:]) + trailing
    head = last_plain if punch else b""
    active.write_bytes(head + live)
    if punch and head:
        fd = os.open(active, os.O_RDWR)
        try:
            block = os.fstat(fd).st_blksize
            punch_hole(fd, 0, len(head) // block * block)
        finally:
            os.close(fd)
        st = active.stat()
        save_state(
            directory,
            base,
            StreamState(
                device=st.st_dev,
                inode=st.st_ino,
                committed_offset=len(head),
                segments=(SegmentRecord(last_stem, 0, len(head)),),
            ),
        )
    policy = LogPolicy(format=fmt, delimiter=delimiter)  # type: ignore[arg-type]
    return StreamInfo(
        key=key or StreamKey("default", "pod", "app"),
        directory=directory,
        base=base,
        policy=policy,
        volume="logs",
    )
