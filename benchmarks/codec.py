"""Codec benchmark, one run: what parsing CRI lines, json-file entries and their times
costs the paths that parse every line - the framer (rotator, segment stats) and a full
read through StreamReader - next to the plain tool doing the least comparable work.

    .venv/bin/python benchmarks/codec.py --size 64MiB

Run as a script (not `-m`), so PYTHONPATH can point `logvold` at another tree and the
same table compares two versions of the codec on the same machine:

    PYTHONPATH=/tmp/base .venv/bin/python benchmarks/codec.py

A tenth of the events are longer than one line (a P line then an F line), so the
framer classifies lines instead of taking its no-partial fast path. Prints a Markdown
table: MiB per CPU second (CPU, not wall time: steady on a shared, loaded machine), the
ratio of CPU time to the tool's (`wc -l` for framing, `cut -d' ' -f4-` for a CRI read,
`jq -r .log` for a json-file read), total CPU seconds and peak RSS of this process.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import logvold
from logvold.core.framing import make_framer
from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.core.units import parse_size
from logvold.fileio.reader import ReadOptions, StreamReader

T0 = 1_795_400_000  # 2026-11-23T..Z
STEP_NS = 1_000_017  # one line per ~ms, a fraction that is rarely all zeros
CHUNK = 1 << 20


def generate(path: Path, size: int, fmt: str) -> int:
    """A log of about `size` bytes in `fmt`; returns the number of events."""
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+/"
    payloads = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(120, 260))) for _ in range(997)
    ]
    written = seq = 0
    sec, sec_text = -1, ""
    with path.open("w") as f:
        parts: list[str] = []
        while written < size:
            ns = T0 * 1_000_000_000 + seq * STEP_NS
            s, frac = divmod(ns, 1_000_000_000)
            if s != sec:
                sec, sec_text = s, datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            ts = f"{sec_text}.{frac:09d}".rstrip("0").rstrip(".") + "Z"
            msg = f"#{seq} {payloads[seq % 997]}"
            pieces = [msg[:60], msg[60:]] if seq % 10 == 0 else [msg]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                if fmt == "cri":
                    line = f"{ts} stdout {'F' if last else 'P'} {piece}\n"
                else:
                    log = piece + ("\n" if last else "")
                    line = json.dumps({"log": log, "stream": "stdout", "time": ts}) + "\n"
                parts.append(line)
                written += len(line)
            seq += 1
            if len(parts) >= 20_000:
                f.write("".join(parts))
                parts.clear()
        f.write("".join(parts))
    return seq


def _cpu() -> float:
    """CPU seconds of this process and its finished children: what a run costs, which a
    loaded machine (other engineers' tests) changes far less than wall time."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(n: int, fn: Callable[[], object]) -> float:
    """Least CPU seconds of n runs."""
    times = []
    for _ in range(n):
        t0 = _cpu()
        fn()
        times.append(_cpu() - t0)
    return min(times)


def tool(argv: list[str], path: Path) -> Callable[[], object]:
    def run() -> None:
        with path.open("rb") as f:
            subprocess.run(argv, stdin=f, stdout=subprocess.DEVNULL, check=True)

    return run


def frame(path: Path, fmt: str) -> Callable[[], object]:
    def run() -> int:
        framer = make_framer(fmt)
        ends = 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                ends += len(framer.feed(chunk))
        return ends

    return run


def read(info: StreamInfo, **opts: object) -> Callable[[], object]:
    def run() -> int:
        reader = StreamReader(info, ReadOptions(**opts))  # type: ignore[arg-type]
        return sum(len(c) for c in reader.chunks())

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size", default="64MiB", help="bytes per log (default 64MiB)")
    p.add_argument("--runs", type=int, default=3, help="best of N (default 3)")
    p.add_argument("--dir", help="work directory (default: a temp dir, removed after)")
    args = p.parse_args()
    size = parse_size(args.size)
    work = Path(args.dir or tempfile.mkdtemp(prefix="logvold-codec-"))
    rows: list[tuple[str, float, float | None, str]] = []
    try:
        for fmt in ("cri", "json-file"):
            directory = work / fmt
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / "app.log"
            events = generate(path, size, fmt)
            mib = path.stat().st_size / 2**20
            info = StreamInfo(
                key=StreamKey("default", "bench", fmt),
                directory=directory,
                base="app.log",
                policy=LogPolicy(format=fmt),  # type: ignore[arg-type]
                volume="bench",
            )
            framed = frame(path, fmt)()
            assert framed == events, f"framer found {framed} events of {events}"
            wc = best_of(args.runs, tool(["wc", "-l"], path))
            plain = (
                tool(["cut", "-d", " ", "-f4-"], path)
                if fmt == "cri"
                else tool(["jq", "-r", ".log"], path)
            )
            plain_name = "cut -d' ' -f4-" if fmt == "cri" else "jq -r .log"
            plain_s = best_of(args.runs, plain) if shutil.which(plain_name.split()[0]) else None
            since = (T0 * 1_000_000_000) + (events // 2) * STEP_NS
            for name, fn, base, base_name in (
                (f"{fmt}: frame every line", frame(path, fmt), wc, "wc -l"),
                (f"{fmt}: read all events", read(info), plain_s, plain_name),
                (f"{fmt}: read, timestamps=true", read(info, timestamps=True), plain_s, plain_name),
                (f"{fmt}: read, sinceTime mid-file", read(info, since_ns=since), None, ""),
            ):
                seconds = best_of(args.runs, fn)
                ratio = None if base is None else seconds / base
                rows.append((name, mib / seconds, ratio, base_name))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"logvold from {Path(logvold.__file__).parent}, {size / 2**20:.0f} MiB per log\n")
    print("| path | MiB per CPU s | CPU vs tool | tool |")
    print("|---|---:|---:|---|")
    for name, rate, ratio, base_name in rows:
        shown = "-" if ratio is None else f"{ratio:.1f}x"
        print(f"| {name} | {rate:.1f} | {shown} | {base_name or '-'} |")
    print(
        f"\nCPU {usage.ru_utime + usage.ru_stime:.1f} s (this process),"
        f" peak RSS {usage.ru_maxrss / 1024:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
