"""Segment bound: max segment / maxSize under writers of 1, 4 and 16 MB/s, and piece-wise
rotation throughput against `cp` / `cat` of the same bytes.

Part 1 runs the real daemon (`logvold serve`, this checkout or --tree) on one stream; a
writer thread appends sequence-numbered multi-line events (tests/support/events.py) at a
fixed byte rate for --seconds (or at least 2.5 maxSize worth), then waits until the
backlog is cut, stops the daemon (SIGTERM) and reads the stream back from the files:
lost / duplicated / split counts and max segment / maxSize (1.00 or less is the bound).

Part 2 times a backlog present at start (--backlog MiB of events) cut by one
StreamRotator in maxSize pieces (each piece: intent, copy, fsync, rename, commit, punch)
against `cp` and `cat >` of the same file on the same filesystem (no fsync there).

    python -m benchmarks.segment_bound [--seconds 3] [--backlog 256] [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.node_scale import ROOT, daemon, free_port, usage, write_config
from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from tests.integration.rotator_kit import whole_stream
from tests.support.events import event_stream, split_raw, verify

DELIM = b"\n\n"
RATES_MB_S = (1, 4, 16)
SIZES = (("64Ki", 64 * 1024), ("1Mi", 2**20), ("10Mi", 10 * 2**20))


def _events(nbytes: int, seed: int) -> tuple[bytes, int]:
    out, total, n = [], 0, 0
    for ev in event_stream(10**9, seed=seed, delimiter=DELIM):
        out.append(ev)
        total += len(ev)
        n += 1
        if total >= nbytes:
            break
    return b"".join(out), n


def _write_at_rate(path: Path, data: bytes, rate: float) -> None:
    """Append `data` in 16 KiB writes paced to `rate` bytes/s (O_APPEND, like a runtime)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        for off in range(0, len(data), 16384):
            delay = start + off / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            os.write(fd, data[off : off + 16384])
    finally:
        os.close(fd)


def _committed(d: Path) -> int:
    state = load_state(d, "app.log")
    return 0 if state is None else state.physical_committed


def _segments(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.name.startswith("app.log.")]


def bound_row(
    tree: Path, work: Path, rate_mb: int, label: str, max_size: int, seconds: float
) -> None:
    d = work / f"b-{rate_mb}-{label}"
    d.mkdir()
    (d / "app.log").write_bytes(b"")
    port = free_port()
    write_config(
        work / f"{d.name}.yaml",
        [("b", d)],
        port,
        {"maxSize": label, "format": "raw", "delimiter": "\n\n", "maxFiles": 0},
    )
    rate = rate_mb * 1e6
    data, count = _events(int(max(rate * seconds, 2.5 * max_size)), seed=rate_mb)
    with daemon(tree, work / f"{d.name}.yaml", port, work / f"{d.name}.log") as proc:
        t0 = time.monotonic()
        before = usage(proc.pid)
        w = threading.Thread(target=_write_at_rate, args=(d / "app.log", data, rate))
        w.start()
        w.join()
        wrote_s = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while (d / "app.log").stat().st_size - _committed(
            d
        ) >= max_size and time.monotonic() < deadline:
            time.sleep(0.05)
        after = usage(proc.pid)
    sizes = [p.stat().st_size for p in _segments(d)]
    report = verify(split_raw([whole_stream(d)], DELIM))
    biggest = max(sizes, default=0)
    print(
        f"| {rate_mb} MB/s | {label} | {len(data) / 2**20:.1f} MiB | {len(sizes)} | "
        f"{biggest / max_size:.2f} | {len(report.lost)} / {len(report.duplicated)} / "
        f"{len(report.corrupt)} | {report.seen}/{count} | "
        f"{(after.cpu_s - before.cpu_s) / wrote_s:.2f} |"
    )


def _timed(cmd: list[str] | str, shell: bool = False) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, shell=shell, check=True)  # fixed commands, paths from mkdtemp
    return time.monotonic() - t0


def throughput(work: Path, backlog_mib: int) -> None:
    data, count = _events(backlog_mib * 2**20, seed=99)
    print(
        "\n| what | bytes | seconds | MiB/s | vs cp | vs cat | per piece |\n"
        "|---|---|---|---|---|---|---|"
    )
    src = work / "src.log"
    src.write_bytes(data)
    os.sync()
    cp_s = _timed(["cp", str(src), str(work / "cp.out")])
    cat_s = _timed(f"cat {src} > {work / 'cat.out'}", shell=True)
    sync_s = _timed(f"cp {src} {work / 'cps.out'} && sync -f {work / 'cps.out'}", shell=True)
    mib = len(data) / 2**20
    print(f"| cp | {mib:.0f} MiB | {cp_s:.2f} | {mib / cp_s:.0f} | 1.00 | {cat_s / cp_s:.2f} |")
    print(
        f"| cat > | {mib:.0f} MiB | {cat_s:.2f} | {mib / cat_s:.0f} | {cp_s / cat_s:.2f} | 1.00 |"
    )
    print(
        f"| cp && sync -f (durable, as the rotator) | {mib:.0f} MiB | {sync_s:.2f} | "
        f"{mib / sync_s:.0f} | {cp_s / sync_s:.3f} | {cat_s / sync_s:.3f} |"
    )
    for label, max_size in (("64Ki", 64 * 1024), ("1Mi", 2**20), ("10Mi", 10 * 2**20)):
        d = work / f"t-{label}"
        d.mkdir()
        (d / "app.log").write_bytes(data)
        os.sync()
        info = StreamInfo(
            key=StreamKey("default", "bench", "app"),
            directory=d,
            base="app.log",
            volume="bench",
            policy=LogPolicy(max_size_bytes=max_size, max_files=0, delimiter=DELIM),
        )
        rot = StreamRotator(info, None)
        t0 = time.monotonic()
        steps = pieces = 0
        while (res := rot.rotate("size")) is not None and res.cuts:
            steps += 1
            pieces += len(res.cuts)
        secs = time.monotonic() - t0
        report = verify(split_raw([whole_stream(d)], DELIM))
        ok = "ok" if report.ok and report.seen == count else report.summary()
        print(
            f"| rotator, maxSize {label}: {pieces} pieces in {steps} steps ({ok}) | "
            f"{mib:.0f} MiB | {secs:.2f} | {mib / secs:.0f} | {cp_s / secs:.3f} | "
            f"{cat_s / secs:.3f} | {pieces / secs:.0f} pieces/s, "
            f"{secs / max(pieces, 1) * 1000:.1f} ms each |"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=ROOT)
    p.add_argument("--seconds", type=float, default=3.0, help="writing time per row")
    p.add_argument("--backlog", type=int, default=256, help="MiB for the throughput part")
    p.add_argument("--skip-bound", action="store_true")
    args = p.parse_args()
    print(f"tree: {args.tree}  load: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="logvold-bench-bound-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        if not args.skip_bound:
            print(
                "| writer | maxSize | written | segments | max segment / maxSize | "
                "lost / dup / split | events seen | daemon CPU s/s |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for label, max_size in SIZES:
                for rate in RATES_MB_S:
                    bound_row(args.tree.resolve(), work, rate, label, max_size, args.seconds)
        throughput(work, args.backlog)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
