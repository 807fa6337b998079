"""A fast, format-aware writer process: `python -m tests.support.format_writer ...`.

Writes sequence-numbered, CRC-checked events (the body format of
tests.support.events, so `parse_event` / `verify` check them) as raw events,
CRI lines (with P fragments) or docker json-file entries, in random chunks
that cross event and line boundaries, to a file opened with O_APPEND or as a
plain offset writer. Stops after `--bytes` (whole events) or `--count` events
and writes a JSON report `{"events": N, "bytes": B}` so a verifier knows
exactly what was written.

Each event depends only on (seed, seq): `encode_event` rebuilds any one of them,
so a test can compute the size of an event it no longer has (truncated away).
Payloads are made with `bytes.translate`, not per-byte `random.choice`, which
keeps one writer at several MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

from tests.support.events import TO_ALPHABET

TS_WIDTH = len("2026-11-23T12:00:00.123456789Z")


def rfc3339_now() -> bytes:
    """Wall-clock time, RFC3339 with 9 fraction digits (fixed width, like containerd)."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return (
        datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"
    ).encode()


def event_body(
    seq: int,
    seed: int,
    *,
    tag: str = "E",
    multiline: bool = False,
    min_len: int = 20,
    max_len: int = 600,
) -> tuple[bytes, random.Random]:
    """`<tag>#<seq> <crc32> <payload>` (no delimiter) and the event's own rng.

    Multi-line payloads get a few single newlines, never two in a row and never
    at either end, so a "\\n\\n" delimiter cannot occur inside an event.
    """
    rng = random.Random(seed * 10**12 + seq)
    n = rng.randint(min_len, max_len)
    payload = bytearray(rng.randbytes(n).translate(TO_ALPHABET))
    if multiline and n > 10:
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(2, n - 2)
            if payload[pos - 1] != 0x0A and payload[pos + 1] != 0x0A:
                payload[pos] = 0x0A
    head = f"{tag}#{seq:010d} ".encode()
    crc = zlib.crc32(head + payload) & 0xFFFFFFFF
    return head + f"{crc:08x} ".encode() + bytes(payload), rng


def encode_event(
    fmt: str,
    seq: int,
    seed: int,
    *,
    delimiter: bytes = b"\n\n",
    tag: str = "E",
    ts: bytes | None = None,
    max_len: int = 600,
) -> bytes:
    """The bytes of event `seq` as written to the file (size independent of `ts`)."""
    body, rng = event_body(
        seq, seed, tag=tag, multiline=fmt == "raw" and delimiter != b"\n", max_len=max_len
    )
    if fmt == "raw":
        return body + delimiter
    ts = ts or rfc3339_now()
    stream = "stderr" if rng.random() < 0.1 else "stdout"
    pieces = [body]
    if len(body) > 40 and rng.random() < 0.3:
        cuts = sorted(rng.sample(range(1, len(body)), 2))
        pieces = [body[: cuts[0]], body[cuts[0] : cuts[1]], body[cuts[1] :]]
    out = bytearray()
    for k, piece in enumerate(pieces):
        last = k == len(pieces) - 1
        if fmt == "cri":
            out += ts + f" {stream} ".encode() + (b"F " if last else b"P ") + piece + b"\n"
        elif fmt == "json-file":
            text = piece.decode("ascii") + ("\n" if last else "")
            out += (
                b'{"log":'
                + json.dumps(text).encode()
                + b',"stream":"'
                + stream.encode()
                + b'","time":"'
                + ts
                + b'"}\n'
            )
        else:
            raise ValueError(f"unknown format {fmt!r}")
    return bytes(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--path", required=True)
    p.add_argument("--mode", choices=["append", "offset"], default="append")
    p.add_argument("--format", choices=["raw", "cri", "json-file"], default="raw")
    p.add_argument("--delimiter", default="\\n\\n", help="raw only; escaped, e.g. '\\n\\n'")
    p.add_argument("--bytes", type=int, default=0, help="stop after this many bytes (whole events)")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--rate", type=float, default=0.0, help="bytes per second; 0 = unlimited")
    p.add_argument("--max-chunk", type=int, default=8192)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tag", default="E")
    p.add_argument("--max-len", type=int, default=600, help="longest payload (bytes)")
    p.add_argument("--report", help="JSON file written at the end: events, bytes")
    args = p.parse_args()
    if not args.bytes and not args.count:
        p.error("give --bytes or --count")
    delimiter = args.delimiter.encode().decode("unicode_escape").encode("latin-1")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if args.mode == "append" else 0)
    fd = os.open(args.path, flags, 0o644)
    if args.mode == "offset":
        os.lseek(fd, 0, os.SEEK_END)
    chunk_rng = random.Random(args.seed)
    started = time.monotonic()
    buf = bytearray()
    written = events = 0
    while (not args.bytes or written + len(buf) < args.bytes) and (
        not args.count or events < args.count
    ):
        buf += encode_event(
            args.format, events, args.seed, delimiter=delimiter, tag=args.tag, max_len=args.max_len
        )
        events += 1
        while len(buf) >= args.max_chunk:
            written += _emit(fd, buf, chunk_rng.randint(1, args.max_chunk))
            _pace(args.rate, started, written)
    while buf:
        written += _emit(fd, buf, chunk_rng.randint(1, args.max_chunk))
        _pace(args.rate, started, written)
    os.close(fd)
    if args.report:
        tmp = Path(args.report + ".tmp")
        tmp.write_text(json.dumps({"events": events, "bytes": written}))
        tmp.replace(args.report)
    return 0


def _emit(fd: int, buf: bytearray, n: int) -> int:
    """Write the first n bytes of buf (one chunk, any event boundary) and drop them."""
    view = memoryview(buf)[:n]
    done = 0
    try:
        while done < len(view):
            done += os.write(fd, view[done:])
    finally:
        view.release()
    del buf[:done]
    return done


def _pace(rate: float, started: float, written: int) -> None:
    if rate > 0:
        ahead = written / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


if __name__ == "__main__":
    raise SystemExit(main())
