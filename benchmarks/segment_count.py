"""Cost of counting a foreign writer's events at rotation (logvold/fileio/segment_stats.py):
the rotator re-reads each new segment through the framer to move
logvold_events_written_total / logvold_events_split_total. Measured against the plain
tools on the same file in the same run: `wc -l` (counting newlines) and `cp` (what the
copy of the segment itself costs), per format, on a warm page cache.

    python -m benchmarks.segment_count [--mib 32] [--repeat 5]

Prints one table: MB/s of each, and count time / cp time.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from logvold.core.formats import encode_cri_line, encode_json_entry
from logvold.core.policy import LogPolicy
from logvold.fileio.segment_stats import count_segment
from tests.support.events import event_stream


def _data(fmt: str, mib: int) -> bytes:
    out = bytearray()
    ts = 1_795_953_480_000_000_000
    for i, ev in enumerate(event_stream(10**9, seed=1, multiline=False, max_len=240)):
        body = ev
        if fmt == "cri":
            body = encode_cri_line("stdout", ts + i, ev.rstrip(b"\n"))
        elif fmt == "json-file":
            body = encode_json_entry("stdout", ts + i, ev)
        out += body
        if len(out) >= mib * 2**20:
            return bytes(out)
    raise AssertionError("unreachable")


def _best(fn: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="logvold-bench-count-"))
    rows = []
    try:
        for fmt in ("raw", "cri", "json-file"):
            seg = work / f"seg.{fmt}"
            seg.write_bytes(_data(fmt, args.mib))
            size = seg.stat().st_size
            policy = LogPolicy(format=fmt)  # type: ignore[arg-type]
            dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
            try:
                counted = count_segment(dfd, seg.name, size, policy)
                t_count = _best(
                    functools.partial(count_segment, dfd, seg.name, size, policy), args.repeat
                )
            finally:
                os.close(dfd)
            wc = subprocess.run(["wc", "-l", str(seg)], capture_output=True, text=True, check=True)
            t_wc = _best(
                functools.partial(
                    subprocess.run, ["wc", "-l", str(seg)], check=True, capture_output=True
                ),
                args.repeat,
            )
            t_cp = _best(
                functools.partial(subprocess.run, ["cp", str(seg), str(work / "copy")], check=True),
                args.repeat,
            )
            assert counted.events == int(wc.stdout.split()[0]), (counted, wc.stdout)
            mb = size / 1e6
            rows.append(
                (fmt, mb, counted.events, mb / t_count, mb / t_wc, mb / t_cp, t_count / t_cp)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{'format':<10}{'MB':>8}{'events':>10}{'count MB/s':>12}{'wc -l MB/s':>12}"
        f"{'cp MB/s':>10}{'count/cp':>10}"
    )
    for fmt, mb, n, c, w, cp, ratio in rows:
        print(f"{fmt:<10}{mb:>8.1f}{n:>10}{c:>12.0f}{w:>12.0f}{cp:>10.0f}{ratio:>10.2f}")
    print(f"(best of {args.repeat}; warm page cache)")


if __name__ == "__main__":
    main()
