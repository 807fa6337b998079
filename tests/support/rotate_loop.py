"""The real StreamRotator of one stream in a loop, as its own process so that a test can
kill -9 it at any instant: `python -m tests.support.rotate_loop --dir D --base B ...`.

Each pass: enforce retention, rotate by size, compress (after one recover() at start,
like a restarted daemon). Every step that changed something is printed as one JSON line
(`{"op": "rotate"|"trim"|"drop"|"delete"|"compress", ...}`) and flushed at once, so the
test knows which steps ran even in a process it killed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.fileio.rotator import StreamRotator


def _say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def stream_info(a: argparse.Namespace) -> StreamInfo:
    """The stream a rotator process manages, from its command line (shared with
    rotate_paused.py, which has no --compress)."""
    policy = LogPolicy(
        format=a.format,
        delimiter=a.delimiter.encode().decode("unicode_escape").encode("latin-1"),
        max_size_bytes=a.max_size,
        max_files=0,
        max_total_size_bytes=a.max_total_size,
        compress=getattr(a, "compress", "none"),
        delay_compress=False,
        collapse=a.collapse,
    )
    return StreamInfo(
        key=StreamKey("default", "writer", Path(a.base).stem),
        directory=Path(a.dir),
        base=a.base,
        volume="logs",
        policy=policy,
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--format", default="raw")
    p.add_argument("--delimiter", default="\\n", help="raw only; escaped, e.g. '\\n\\n'")
    p.add_argument("--max-size", type=int, required=True)
    p.add_argument("--max-total-size", type=int, default=0)
    p.add_argument("--compress", default="none")
    p.add_argument("--collapse", default="auto")
    p.add_argument("--interval", type=float, default=0.02)
    a = p.parse_args()
    info = stream_info(a)
    rotator = StreamRotator(info)
    rotator.recover()
    _say(op="recovered")
    while True:
        # Retention first: after a restart the file has grown unrotated past the budget,
        # so its head is dropped in place (no segment) before the next rotation.
        kept = rotator.enforce_retention()
        if kept.trimmed_segment:
            _say(op="trim", segment=kept.trimmed_segment)
        if kept.dropped_active_bytes:
            _say(op="drop", bytes=kept.dropped_active_bytes)
        if kept.deleted:
            _say(op="delete", files=list(kept.deleted))
        if rotator.needs_rotation():
            done = rotator.rotate("size")
            if done is not None:
                _say(
                    op="rotate",
                    segment=done.segment,
                    start=done.logical_start,
                    end=done.logical_end,
                )
        for name in rotator.compress_pending():
            _say(op="compress", file=name)
        time.sleep(a.interval)


if __name__ == "__main__":
    raise SystemExit(main())
