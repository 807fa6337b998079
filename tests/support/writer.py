"""A log writer process for integrity tests: `python -m tests.support.writer ...`.

Writes sequence-numbered, checksummed events in random chunks that cross
event boundaries, to a file (O_APPEND or a plain offset writer) or to
stdout/stderr. Prints nothing else, so its output is exactly the events.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

from tests.support.events import chunked, event_stream


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--path", help="file to write; default stdout")
    p.add_argument(
        "--mode",
        choices=["append", "offset", "truncate"],
        default="append",
        help="truncate: open with O_TRUNC like a shell's `> file`, then write",
    )
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--delimiter", default="\\n", help="escaped, e.g. '\\n\\n' or '\\x1e'")
    p.add_argument("--min-len", type=int, default=20)
    p.add_argument("--max-len", type=int, default=300)
    p.add_argument("--max-chunk", type=int, default=8192)
    p.add_argument("--tag", default="E")
    p.add_argument(
        "--stderr-tag", default="", help="also write events tagged so to stderr, alternating"
    )
    p.add_argument(
        "--rate", type=float, default=0.0, help="chunks per second; 0 = as fast as possible"
    )
    p.add_argument("--exit-code", type=int, default=0)
    args = p.parse_args()
    delimiter = args.delimiter.encode().decode("unicode_escape").encode("latin-1")
    rng = random.Random(args.seed)
    events = event_stream(
        args.count,
        seed=args.seed,
        start=args.start,
        delimiter=delimiter,
        tag=args.tag,
        min_len=args.min_len,
        max_len=args.max_len,
    )
    if args.path:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if args.mode == "append" else 0)
        flags |= os.O_TRUNC if args.mode == "truncate" else 0
        fd = os.open(args.path, flags, 0o644)
        if args.mode == "offset":
            os.lseek(fd, 0, os.SEEK_END)
    else:
        fd = sys.stdout.fileno()
    err_events = (
        event_stream(
            args.count,
            seed=args.seed + 1,
            start=args.start,
            delimiter=delimiter,
            tag=args.stderr_tag,
            min_len=args.min_len,
            max_len=args.max_len,
        )
        if args.stderr_tag
        else None
    )
    delay = 1.0 / args.rate if args.rate else 0.0
    if err_events is None:
        for chunk in chunked(events, rng, max_chunk=args.max_chunk):
            _write_all(fd, chunk)
            if delay:
                time.sleep(delay)
    else:
        # Alternate whole events between stdout and stderr; each stream stays ordered.
        for out_ev, err_ev in zip(events, err_events, strict=True):
            _write_all(fd, out_ev)
            _write_all(2, err_ev)
            if delay:
                time.sleep(delay)
    return int(args.exit_code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


if __name__ == "__main__":
    raise SystemExit(main())
