"""The real StreamRotator of one stream in a loop that PAUSES ITSELF (SIGSTOP) in the middle
of a rotation step: `python -m tests.support.rotate_paused --dir D --base B --at POINT ...`.

A test then holds the step in flight for as long as it likes (a rotator descheduled on a
loaded node, or killed: SIGKILL while stopped leaves exactly what a crash at that instant
leaves) and runs readers against the files as they are. SIGCONT lets the step finish.

Points (a wrapper around one rotator internal, test-only; the rotator itself is unchanged):
- `segment`: right after the Nth segment file of a cut is renamed into place, before the
  commit (the state names the step: a `punch` or `pieces` intent);
- `trim-copy`: right after the trimmed copy of a segment is written, before its rename
  (a `trim` intent);
- `trim-renamed`: right after the trimmed copy replaced the segment, before the state
  records it (a `trim` intent, the file already shorter);
- `collapse`: with the `collapse` intent saved and [0, length) punched, before
  COLLAPSE_RANGE; `collapsed`: right after COLLAPSE_RANGE, before the state records it.

Prints `{"op": "paused", "point": ..., "pid": ...}` (flushed) before stopping itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from logvold.fileio import stream_files
from logvold.fileio.rotator import StreamRotator
from tests.support.rotate_loop import stream_info

POINTS = ("segment", "trim-copy", "trim-renamed", "collapse", "collapsed")


def _say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _pause(point: str) -> None:
    _say(op="paused", point=point, pid=os.getpid())
    os.kill(os.getpid(), signal.SIGSTOP)


def _install(point: str, nth: int) -> None:
    """Wrap the rotator internal of `point` so that its `nth` call pauses the process."""
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == nth

    if point in ("segment", "trim-copy"):
        write = StreamRotator._write_segment
        want_trim = point == "trim-copy"

        def write_segment(
            self: StreamRotator, d: Any, fd: int, stem: str, *a: Any, **k: Any
        ) -> None:
            write(self, d, fd, stem, *a, **k)
            if stem.endswith(".trim") == want_trim and hit():
                _pause(point)

        StreamRotator._write_segment = write_segment  # type: ignore[method-assign,assignment]
    elif point == "trim-renamed":
        trimmed = StreamRotator._trimmed_records

        def trimmed_records(state: Any, stem: str, size: int) -> Any:
            if hit():
                _pause(point)
            return trimmed(state, stem, size)

        StreamRotator._trimmed_records = staticmethod(trimmed_records)  # type: ignore[method-assign]
    elif point in ("collapse", "collapsed"):
        collapse: Callable[[int, int, int], None] = stream_files.collapse_range

        def collapse_range(fd: int, offset: int, length: int) -> None:
            first = hit()
            if first and point == "collapse":
                _pause(point)
            collapse(fd, offset, length)
            if first and point == "collapsed":
                _pause(point)

        stream_files.collapse_range = collapse_range  # the rotator calls it as sf.collapse_range
    else:
        raise SystemExit(f"unknown point {point!r}; one of {', '.join(POINTS)}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--format", default="raw")
    p.add_argument("--delimiter", default="\\n", help="raw only; escaped, e.g. '\\n\\n'")
    p.add_argument("--max-size", type=int, required=True)
    p.add_argument("--max-total-size", type=int, default=0)
    p.add_argument("--collapse", default="never")
    p.add_argument("--at", choices=POINTS, help="pause here (omit: never pause)")
    p.add_argument("--nth", type=int, default=1, help="pause at the Nth time the point is hit")
    p.add_argument("--interval", type=float, default=0.02)
    a = p.parse_args()
    if a.at:
        _install(a.at, a.nth)
    info = stream_info(a)
    rotator = StreamRotator(info, collapse_min_bytes=a.max_size)
    rotator.recover()
    while True:
        rotator.enforce_retention()
        if rotator.needs_rotation():
            rotator.rotate("size")
        time.sleep(a.interval)


if __name__ == "__main__":
    raise SystemExit(main())
