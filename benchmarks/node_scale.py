"""Node-scale benchmark: what `logvold serve` costs with a node's worth of streams.

    .venv/bin/python -m benchmarks.node_scale [--tree DIR] [--window 20] [--only streams,idle]

Runs `python -m logvold serve` from `--tree` (default: this checkout; point it at an
export of an older commit for a before/after table) as a child process and reads its
CPU time, RSS, fds and threads from /proc/<pid>. Scenarios:

- streams: 110 volumes x 5 containers = 550 streams, a writer process appends one line
  to each every 100 ms (5,500 lines/s); daemon CPU-seconds per second over the window.
- idle: 1,000 streams, no writes.
- rotation: one stream, maxSize 256Ki: latency from the write that crosses maxSize to
  the new segment (20 crossings), and the largest segment / maxSize of a 4 MB/s writer
  with maxSize 1Mi.
- followers: 200 streams, 50 and then 200 `follow=true` clients: idle daemon CPU, then
  p50/p99 delivery latency of lines written to every followed stream once a second.
- whole: one raw stream of ~256 MiB in 16 segments + the active file, read whole over
  HTTP (curl) against busybox httpd and `python -m http.server` serving the same files.

Targets (issue 14): streams <= 0.10 CPU-s/s; idle <= 0.01; 200 idle followers <= 2 % of a
core and p99 < 100 ms while writing; whole stream >= 0.5x busybox httpd.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRITER = r"""
import os, sys, time
paths = sys.argv[2:]
interval = float(sys.argv[1])
fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for p in paths]
step = interval / len(fds)
n = 0
start = time.monotonic()
while True:
    for i, fd in enumerate(fds):
        target = start + n * interval + i * step
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        os.write(fd, b"%.6f line %d of stream %d: some payload that looks like a log line\n"
                 % (time.time(), n, i))
    n += 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Usage:
    cpu_s: float
    rss_kib: int
    threads: int
    fds: int


def usage(pid: int) -> Usage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return Usage(cpu, rss, threads, len(os.listdir(f"/proc/{pid}/fd")))


def write_config(
    path: Path, volumes: list[tuple[str, Path]], port: int, policy: dict[str, Any]
) -> None:
    lines = [
        f'server: {{listen: "127.0.0.1:{port}"}}',
        "defaults: " + json.dumps(policy),
        "rescanInterval: 60s",
        "logLevel: warning",
        "volumes:",
    ]
    for name, directory in volumes:
        lines.append(f"  - name: {name}\n    path: {json.dumps(str(directory))}")
    path.write_text("\n".join(lines) + "\n")


@contextmanager
def daemon(tree: Path, config: Path, port: int, log: Path) -> Any:
    env = dict(os.environ, PYTHONPATH=str(tree))
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "logvold", "serve", "--config", str(config)],
            cwd=tree,
            env=env,
            stdout=err,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not start: {log.read_text()[-2000:]}") from exc
                time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_over(pid: int, window: float) -> tuple[float, Usage]:
    before = usage(pid)
    t0 = time.monotonic()
    time.sleep(window)
    after = usage(pid)
    return (after.cpu_s - before.cpu_s) / (time.monotonic() - t0), after


def make_streams(
    work: Path, pods: int, containers: int
) -> tuple[list[tuple[str, Path]], list[Path]]:
    volumes = []
    files = []
    for p in range(pods):
        d = work / f"pod{p:03d}"
        d.mkdir(parents=True)
        volumes.append((f"pod{p:03d}", d))
        for c in range(containers):
            f = d / f"c{c}.log"
            f.write_bytes(b"")
            files.append(f)
    return volumes, files


def row(name: str, value: str, note: str = "") -> None:
    print(f"| {name} | {value} | {note} |", flush=True)


# -- scenarios --------------------------------------------------------------------------


def scenario_streams(tree: Path, work: Path, window: float) -> None:
    volumes, files = make_streams(work / "s", 110, 5)
    port = free_port()
    write_config(work / "s.yaml", volumes, port, {"maxSize": "10Mi", "format": "raw"})
    with daemon(tree, work / "s.yaml", port, work / "s.log") as proc:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, "0.1", *map(str, files)])
        try:
            time.sleep(3)
            wbefore = usage(writer.pid).cpu_s
            cpu, u = cpu_over(proc.pid, window)
            wcpu = (usage(writer.pid).cpu_s - wbefore) / window
        finally:
            writer.kill()
            writer.wait()
    row(
        "550 streams x 10 lines/s: daemon CPU-s/s",
        f"{cpu:.3f}",
        f"writer {wcpu:.3f}; RSS {u.rss_kib / 1024:.0f} MiB, {u.fds} fds, {u.threads} threads;"
        " target <= 0.10",
    )


def scenario_idle(tree: Path, work: Path, window: float) -> None:
    volumes, _ = make_streams(work / "i", 200, 5)
    port = free_port()
    write_config(work / "i.yaml", volumes, port, {"maxSize": "10Mi", "format": "raw"})
    with daemon(tree, work / "i.yaml", port, work / "i.log") as proc:
        time.sleep(3)
        cpu, u = cpu_over(proc.pid, window)
    row(
        "1,000 idle streams: daemon CPU-s/s",
        f"{cpu:.4f}",
        f"RSS {u.rss_kib / 1024:.0f} MiB, {u.fds} fds, {u.threads} threads; target <= 0.01",
    )


def _segments(d: Path, base: str) -> list[Path]:
    return [
        d / n
        for n in os.listdir(d)
        if n.startswith(base + ".") and n[len(base) + 1 :][:1].isdigit()
    ]


def scenario_rotation(tree: Path, work: Path, window: float) -> None:
    d = work / "r"
    d.mkdir()
    (d / "app.log").write_bytes(b"")
    port = free_port()
    max_size = 256 * 1024
    write_config(
        work / "r.yaml", [("r", d)], port, {"maxSize": "256Ki", "format": "raw", "maxFiles": 0}
    )
    line = b"x" * 1023 + b"\n"
    latencies = []
    with daemon(tree, work / "r.yaml", port, work / "r.log"):
        fd = os.open(d / "app.log", os.O_WRONLY | os.O_APPEND)
        try:
            for _ in range(20):
                count = len(_segments(d, "app.log"))
                os.write(fd, line * (max_size // len(line) + 1))
                t0 = time.monotonic()
                while len(_segments(d, "app.log")) == count:
                    if time.monotonic() - t0 > 10:
                        break
                    time.sleep(0.0005)
                latencies.append(time.monotonic() - t0)
                time.sleep(0.2)
        finally:
            os.close(fd)
    latencies.sort()
    row(
        "rotation latency, write crossing maxSize -> segment (20x)",
        f"p50 {statistics.median(latencies) * 1000:.1f} ms",
        f"p99/max {latencies[-1] * 1000:.1f} ms",
    )
    # Max segment / maxSize at 4 MB/s, maxSize 1Mi.
    d2 = work / "r2"
    d2.mkdir()
    (d2 / "app.log").write_bytes(b"")
    port = free_port()
    write_config(
        work / "r2.yaml", [("r2", d2)], port, {"maxSize": "1Mi", "format": "raw", "maxFiles": 0}
    )
    with daemon(tree, work / "r2.yaml", port, work / "r2.log"):
        fd = os.open(d2 / "app.log", os.O_WRONLY | os.O_APPEND)
        chunk = line * 64  # 64 KiB
        start = time.monotonic()
        try:
            for n in range(4 * 5 * 16):  # ~4 MB/s for 5 s
                target = start + n * (65536 / 4e6)
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                os.write(fd, chunk)
        finally:
            os.close(fd)
        time.sleep(2)
    sizes = [p.stat().st_size for p in _segments(d2, "app.log")]
    biggest = max(sizes, default=0)
    row(
        "max segment / maxSize, 4 MB/s, maxSize 1Mi",
        f"{biggest / 2**20:.2f}x",
        f"{len(sizes)} segments",
    )


async def _followers(
    base: str, keys: list[str], ready: asyncio.Event, stop: asyncio.Event, latencies: list[float]
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:
        attached = 0

        async def one(key: str) -> None:
            nonlocal attached
            # tailLines=0: only what is written from now on (like `kubectl logs -f
            # --tail=0`), not the lines of an earlier phase.
            async with s.get(f"{base}/logs/default/{key}?follow=true&tailLines=0") as r:
                attached += 1
                if attached == len(keys):
                    ready.set()
                buf = b""
                while not stop.is_set():
                    try:
                        chunk = await asyncio.wait_for(r.content.readany(), 0.5)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    now = time.time()
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for ln in lines:
                        latencies.append(now - float(ln.split(b" ", 1)[0]))

        tasks = [asyncio.create_task(one(k)) for k in keys]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def scenario_followers(tree: Path, work: Path, window: float) -> None:
    volumes, files = make_streams(work / "f", 40, 5)
    port = free_port()
    write_config(work / "f.yaml", volumes, port, {"maxSize": "10Mi", "format": "raw"})
    keys = [f"{f.parent.name}/{f.stem}" for f in files]
    with daemon(tree, work / "f.yaml", port, work / "f.log") as proc:
        for n in (50, 200):

            async def run(n: int = n) -> tuple[float, list[float]]:
                ready, stop = asyncio.Event(), asyncio.Event()
                latencies: list[float] = []
                task = asyncio.create_task(
                    _followers(f"http://127.0.0.1:{port}", keys[:n], ready, stop, latencies)
                )
                await asyncio.wait_for(ready.wait(), 60)
                await asyncio.sleep(2)
                cpu, _ = await asyncio.to_thread(cpu_over, proc.pid, window)
                writer = subprocess.Popen(
                    [sys.executable, "-c", WRITER, "1.0", *map(str, files[:n])]
                )
                await asyncio.sleep(min(window, 15))
                writer.kill()
                writer.wait()
                await asyncio.sleep(1)
                stop.set()
                await task
                return cpu, latencies

            cpu, lat = asyncio.run(run())
            lat.sort()
            p50 = statistics.median(lat) * 1000 if lat else float("nan")
            p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
            row(
                f"{n} followers idle: daemon CPU",
                f"{cpu * 100:.2f} % of a core",
                "target <= 2 % (200)",
            )
            row(
                f"{n} followers, 1 line/s each: delivery latency",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                f"{len(lat)} deliveries; target p99 < 100",
            )


def _timed_curl(urls: list[str]) -> float:
    args = ["curl", "-sS", "--fail"]
    for u in urls:
        args += ["-o", "/dev/null", u]
    t0 = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - t0


def _make_whole(d: Path, size: int, segments: int) -> int:
    from logvold.core.policy import LogPolicy
    from logvold.core.streams import StreamInfo, StreamKey
    from logvold.fileio.rotator import StreamRotator

    info = StreamInfo(
        key=StreamKey("default", "w", "app"),
        directory=d,
        base="app.log",
        volume="w",
        policy=LogPolicy(max_size_bytes=0, max_files=0, strategy="rename"),
    )
    rot = StreamRotator(info)
    logging.getLogger("logvold").setLevel(logging.ERROR)  # rename without reopen: intended
    line = b"%-199s\n" % b"2026-11-30T12:00:00.000000000Z some event payload of a raw stream"
    block = line * (1024 * 1024 // len(line))
    per = size // (segments + 1)
    with (d / "app.log").open("ab") as f:
        for _ in range(segments):
            for _ in range(per // len(block)):
                f.write(block)
            f.flush()
            rot.rotate("size")
        for _ in range(per // len(block)):
            f.write(block)
    total = 0
    for p in d.iterdir():
        if p.is_file():
            total += p.stat().st_size
    return total


def scenario_whole(tree: Path, work: Path, window: float) -> None:
    d = work / "w"
    d.mkdir()
    total = _make_whole(d, 256 * 2**20, 16)
    port = free_port()
    write_config(
        work / "w.yaml",
        [("w", d)],
        port,
        {"maxSize": "0", "format": "raw", "maxFiles": 0, "strategy": "rename"},
    )
    files = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != "app.log")
    files.append("app.log")
    with daemon(tree, work / "w.yaml", port, work / "w.log"):
        url = f"http://127.0.0.1:{port}/logs/default/w/app"
        ours = min(_timed_curl([url]) for _ in range(3))
    results = {"logvold": ours}
    for name, cmd in (
        ("busybox httpd", ["busybox", "httpd", "-f", "-p", "{port}", "-h", str(d)]),
        (
            "python -m http.server",
            [
                sys.executable,
                "-m",
                "http.server",
                "{port}",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(d),
            ],
        ),
    ):
        if shutil.which(cmd[0]) is None:
            continue
        p2 = free_port()
        server = subprocess.Popen(
            [c.replace("{port}", str(p2)) for c in cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", p2), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            urls = [f"http://127.0.0.1:{p2}/{n}" for n in files]
            results[name] = min(_timed_curl(urls) for _ in range(3))
        finally:
            server.terminate()
            server.wait()
    mib = total / 2**20
    for name, secs in results.items():
        # Same bytes: logvold's throughput relative to the tool's is its time over ours.
        note = "" if name == "logvold" else f"logvold throughput = {secs / ours:.2f}x"
        row(
            f"whole stream {mib:.0f} MiB: {name}",
            f"{secs * 1000:.0f} ms ({mib / secs:.0f} MiB/s)",
            note,
        )


SCENARIOS = {
    "streams": scenario_streams,
    "idle": scenario_idle,
    "rotation": scenario_rotation,
    "followers": scenario_followers,
    "whole": scenario_whole,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="source tree whose logvold is run (default: this checkout)",
    )
    p.add_argument("--window", type=float, default=20.0, help="measuring window, seconds")
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = p.parse_args()
    print(f"tree: {args.tree}  window: {args.window:.0f} s  load: {os.getloadavg()[0]:.2f}")
    print("| figure | value | notes |\n|---|---|---|")
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"logvold-bench-{name}-") as tmp:
            SCENARIOS[name](args.tree.resolve(), Path(tmp), args.window)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
