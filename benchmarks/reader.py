"""Reader benchmark, one run: tail, sinceTime, pattern and follow latency on a CRI stream.

    .venv/bin/python -m benchmarks.reader --size 1GiB --segments 20 --followers 100

Targets: tailLines=100 <= 2x GNU `tail -n 100` of the active file; sinceTime (time to
first byte) < 50 ms; pattern throughput >= 0.5x `grep -c`; follow p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.core.units import parse_size
from logvold.fileio.reader import ReadOptions, StreamReader

T0 = 1_795_400_000  # 2026-11-23T..Z
STEP_NS = 1_000_000  # one line per ms
NEEDLE_EVERY = 100_000


def _ts(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def generate(directory: Path, size: int, segments: int) -> tuple[StreamInfo, int, int]:
    """A CRI stream: `segments` closed plain segments + the active file, ~size bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+/"
    payloads = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(120, 260))) for _ in range(997)
    ]
    per_file = size // (segments + 1)
    seq = 0
    for k in range(segments + 1):
        written = 0
        parts: list[str] = []
        path = directory / "tmp.part"
        with path.open("w") as f:
            sec_text, sec = "", -1
            while written < per_file:
                ns = T0 * 1_000_000_000 + seq * STEP_NS
                s, frac = divmod(ns, 1_000_000_000)
                if s != sec:
                    sec, sec_text = s, datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                msg = payloads[seq % 997]
                if seq % NEEDLE_EVERY == 0:
                    msg = f"NEEDLE-{seq} {msg}"
                line = f"{sec_text}.{frac:09d}Z stdout F #{seq} {msg}\n"
                parts.append(line)
                written += len(line)
                seq += 1
                if len(parts) >= 20_000:
                    f.write("".join(parts))
                    parts.clear()
            f.write("".join(parts))
        if k < segments:
            last = T0 + (seq - 1) * STEP_NS // 1_000_000_000
            stamp = datetime.fromtimestamp(last, UTC).strftime("%Y%m%d-%H%M%S")
            path.rename(
                directory / f"app.log.{stamp}.{k + 1:04d}" if k else directory / f"app.log.{stamp}"
            )
        else:
            path.rename(directory / "app.log")
    info = StreamInfo(
        key=StreamKey("default", "bench", "app"),
        directory=directory,
        base="app.log",
        policy=LogPolicy(format="cri"),
        volume="bench",
    )
    return info, seq, sum(p.stat().st_size for p in directory.iterdir())


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def read_all(info: StreamInfo, **opts: object) -> bytes:
    reader = StreamReader(info, ReadOptions(**opts))  # type: ignore[arg-type]
    return b"".join(c for c in reader.chunks() if c)


def first_chunk(info: StreamInfo, **opts: object) -> bytes:
    reader = StreamReader(info, ReadOptions(**opts))  # type: ignore[arg-type]
    for chunk in reader.chunks():
        if chunk:
            return chunk
    return b""


def bench_follow(directory: Path, followers: int, duration_s: float) -> tuple[float, float, int]:
    """p50/p99 ms from a write of one event to its arrival at each of `followers` clients
    of a logvold server running in its own process."""
    stream_dir = directory / "follow"
    stream_dir.mkdir()
    active = stream_dir / "app.log"
    active.touch()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.reader", "--serve", str(stream_dir)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        sent: dict[int, int] = {}
        latencies: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            fd = os.open(active, os.O_WRONLY | os.O_APPEND)
            n = 0
            while not stop.is_set():
                sent[n] = time.perf_counter_ns()
                os.write(fd, f"evt {n} {'x' * 100}\n".encode())
                n += 1
                time.sleep(0.01)
            os.close(fd)

        async def follower(
            session: aiohttp.ClientSession, ready: asyncio.Event, counter: list[int]
        ) -> None:
            async with session.get(f"http://127.0.0.1:{port}/logs/default/f/app?follow=true") as r:
                counter[0] += 1
                if counter[0] == followers:
                    ready.set()
                buf = b""
                async for chunk in r.content.iter_any():
                    now = time.perf_counter_ns()
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        n = int(line.split(b" ", 2)[1])
                        latencies.append((now - sent[n]) / 1e6)
                    if stop.is_set():
                        return

        async def run() -> None:
            ready = asyncio.Event()
            counter = [0]
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as session:
                tasks = [
                    asyncio.create_task(follower(session, ready, counter)) for _ in range(followers)
                ]
                await asyncio.wait_for(ready.wait(), 30)
                await asyncio.sleep(0.5)
                thread = threading.Thread(target=writer)
                thread.start()
                await asyncio.sleep(duration_s)
                stop.set()
                thread.join()
                await asyncio.sleep(0.3)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(run())
    finally:
        server.terminate()
        server.wait(10)
    latencies.sort()
    return (statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], len(latencies))


def serve(stream_dir: Path) -> None:
    """The follow benchmark's server process: one raw stream, port printed on stdout."""
    from logvold.core.policy import default_config
    from logvold.core.streams import StreamRegistry
    from logvold.server.app import build_app, start_server
    from logvold.telemetry.metrics import Metrics

    async def run() -> None:
        registry = StreamRegistry()
        registry.put(
            StreamInfo(
                key=StreamKey("default", "f", "app"),
                directory=stream_dir,
                base="app.log",
                policy=LogPolicy(),
                volume="bench",
            )
        )
        app = build_app(
            config=default_config(), registry=registry, metrics=Metrics(), is_ready=lambda: True
        )
        runner = await start_server(app, "127.0.0.1:0")
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB", help="stream size (default 1GiB)")
    p.add_argument("--segments", type=int, default=20)
    p.add_argument("--followers", type=int, default=100)
    p.add_argument("--follow-seconds", type=float, default=5.0)
    p.add_argument("--dir", help="work directory (default: a temp dir, removed after)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return 0
    size = parse_size(args.size.replace("GiB", "Gi").replace("MiB", "Mi"))
    work = Path(args.dir or tempfile.mkdtemp(prefix="logvold-bench-"))
    rows: list[tuple[str, str, str, str]] = []
    try:
        t0 = time.perf_counter()
        info, lines, total = generate(work / "stream", size, args.segments)
        print(
            f"generated {total / 2**20:.0f} MiB, {lines} lines, {args.segments} segments "
            f"+ active in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
        active = info.active_path

        ours = best_of(5, lambda: read_all(info, tail_events=100))
        gnu = best_of(
            5,
            lambda: subprocess.run(
                ["tail", "-n", "100", str(active)], capture_output=True, check=True
            ),
        )
        assert read_all(info, tail_events=100).count(b"\n") == 100
        rows.append(
            (
                "tailLines=100",
                f"{ours * 1000:.1f} ms",
                f"tail -n 100: {gnu * 1000:.1f} ms",
                f"{ours / gnu:.2f}x (target <= 2x)",
            )
        )

        mid_ns = T0 * 1_000_000_000 + (lines // 2) * STEP_NS
        since_ttfb = best_of(5, lambda: first_chunk(info, since_ns=mid_ns))
        late_ns = T0 * 1_000_000_000 + (lines - 2000) * STEP_NS
        since_tail = best_of(5, lambda: read_all(info, since_ns=late_ns))
        assert read_all(info, since_ns=late_ns).count(b"\n") == 2000
        rows.append(
            ("sinceTime (middle), first byte", f"{since_ttfb * 1000:.1f} ms", "-", "target < 50 ms")
        )
        rows.append(
            (
                "sinceTime (last 2000 events), all",
                f"{since_tail * 1000:.1f} ms",
                "-",
                "target < 50 ms",
            )
        )

        files = sorted(str(x) for x in info.directory.iterdir() if x.name.startswith("app.log"))
        t = time.perf_counter()
        grep = subprocess.run(["grep", "-c", "-E", "NEEDLE-[0-9]+", *files], capture_output=True)
        grep_s = time.perf_counter() - t
        t = time.perf_counter()
        got = read_all(info, pattern="NEEDLE-[0-9]+")
        ours_s = time.perf_counter() - t
        hits = sum(int(line.rsplit(b":", 1)[1]) for line in grep.stdout.splitlines())
        assert got.count(b"\n") == hits, (got.count(b"\n"), hits)
        rows.append(
            (
                f"pattern over {total / 2**20:.0f} MiB ({hits} hits)",
                f"{ours_s:.2f} s ({total / ours_s / 2**20:.0f} MiB/s)",
                f"grep -c: {grep_s:.2f} s",
                f"{grep_s / ours_s:.2f}x (target >= 0.5x)",
            )
        )

        t = time.perf_counter()
        got = read_all(info, pattern="NEEDLE-[0-9]+", tail_events=10)
        tail_pattern_s = time.perf_counter() - t
        assert got.count(b"\n") == min(10, hits)
        rows.append(
            (
                "tailLines=10 + pattern (backwards, RE2 regions)",
                f"{tail_pattern_s * 1000:.0f} ms",
                "-",
                "-",
            )
        )

        p50, p99, n = bench_follow(work, args.followers, args.follow_seconds)
        rows.append(
            (
                f"follow latency, {args.followers} followers ({n} deliveries)",
                f"p50 {p50:.1f} ms",
                f"p99 {p99:.1f} ms",
                "target p99 < 100 ms",
            )
        )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
