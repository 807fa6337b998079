"""Hostile load against a real `logvold serve`: CPU, RSS and descriptors of the daemon
under a slowloris flood, a thousand followers and huge tails, against `tail -n` doing
the same read. One run, a markdown table on stdout.

    .venv/bin/python -m benchmarks.hostile_load

Needs ~3000 file descriptors for the client side (raised to the hard limit).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    scenario: str
    cpu: str
    rss: str
    fds: str
    outcome: str
    peer: str = "-"
    ratio: str = "-"


class Daemon:
    """`logvold serve --config` as a child; optional RLIMIT_NOFILE (soft = hard)."""

    def __init__(self, config: Path, log: Path, nofile: int | None = None) -> None:
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "logvold", "serve", "--config", str(config)],
                stdout=out,
                stderr=out,
                env=env,
                preexec_fn=limit,
            )
        deadline = time.monotonic() + 60
        while "logvold serving" not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_percent(self, seconds: float) -> float:
        c0, t0 = self.cpu_s(), time.monotonic()
        time.sleep(seconds)
        return 100 * (self.cpu_s() - c0) / (time.monotonic() - t0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def daemon(config: Path, log: Path, nofile: int | None = None) -> Iterator[Daemon]:
    d = Daemon(config, log, nofile)
    try:
        yield d
    finally:
        d.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    path: Path, volume: Path, port: int, limits: str = "", policy: str = "{maxSize: 0}"
) -> Path:
    path.write_text(
        f"server:\n  listen: 127.0.0.1:{port}\n  limits: {{{limits}}}\n"
        f"defaults: {policy}\nvolumes:\n  - name: v\n    pod: p\n"
        f"    path: {volume}\n"
    )
    return path


def get(url: str, timeout: float = 600) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def slowloris(work: Path) -> Row:
    volume = work / "slow"
    volume.mkdir()
    port = free_port()
    log = work / "slow.log"
    with daemon(config(work / "slow.yaml", volume, port), log, nofile=1024) as d:
        log_before = log.stat().st_size
        socks = []
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        ok, latencies = 0, []
        c0, t0 = d.cpu_s(), time.monotonic()
        for _ in range(10):
            start = time.monotonic()
            with contextlib.suppress(OSError):
                ok += get(f"http://127.0.0.1:{port}/healthz", timeout=20)[0] == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.5)
        cpu = 100 * (d.cpu_s() - c0) / (time.monotonic() - t0)
        fds, rss = d.fds(), d.kb("VmHWM")
        for s in socks:
            s.close()
        grown = log.stat().st_size - log_before
    latencies.sort()
    return Row(
        "slowloris: 1,100 half-open connections, fd limit 1024",
        f"{cpu:.0f}",
        mib(rss),
        str(fds),
        f"/healthz {ok}/10 ok, median {latencies[5] * 1000:.0f} ms; own log +{grown} B",
    )


def followers(work: Path, limits: str, label: str) -> Row:
    volume = work / f"follow-{len(limits)}"
    volume.mkdir()
    for k in range(10):
        (volume / f"s{k}.log").write_bytes(b"hello\n")
    port = free_port()
    with daemon(
        config(work / f"f{len(limits)}.yaml", volume, port, limits),
        work / f"follow-{len(limits)}.log",
    ) as d:
        held, codes = [], {}
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(
                f"GET /logs/default/p/s{i % 10}?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            code = int(head.split()[1]) if head else 0
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                held.append(s)
            else:
                s.close()
        time.sleep(1)
        cpu = d.cpu_percent(10)
        fds, rss = d.fds(), d.kb("VmHWM")
        for s in held:
            s.close()
    summary = ", ".join(f"{n}x {c}" for c, n in sorted(codes.items()))
    return Row(
        f"1,000 followers, 10 streams ({label}), idle 10 s",
        f"{cpu:.0f}",
        mib(rss),
        str(fds),
        summary,
    )


def tail_cmd(path: Path, n: int) -> tuple[float, float, int, int]:
    """`tail -n N file`: wall s, CPU s, peak RSS kB (its own, from wait4), bytes out."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["tail", "-n", str(n), str(path)], stdout=out)
        _, _, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = 0
        size = out.seek(0, os.SEEK_END)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, size


def huge_tail(work: Path) -> list[Row]:
    volume = work / "tail"
    volume.mkdir()
    short = volume / "short.log"
    count = 0
    with short.open("wb") as f:
        while f.tell() < 20 * 2**20:
            f.write(f"e{count:09d}\n".encode())
            count += 1
    run = volume / "run.log"
    with run.open("wb") as f:
        f.write(b"x" * (30 * 2**20))  # 30 MiB, no delimiter
    port = free_port()
    rows = []
    with daemon(config(work / "tail.yaml", volume, port), work / "tail.log") as d:
        for name, n, path, label in (
            (
                "short",
                10_000_000,
                short,
                f"tailLines=10,000,000, 20 MiB of {count:,} 11-byte events",
            ),
            ("run", 1, run, "tailLines=1, 30 MiB raw run without a delimiter"),
        ):
            hwm0, c0, t0 = d.kb("VmHWM"), d.cpu_s(), time.monotonic()
            code, body = get(f"http://127.0.0.1:{port}/logs/default/p/{name}?tailLines={n}")
            wall = time.monotonic() - t0
            cpu, growth = d.cpu_s() - c0, d.kb("VmHWM") - hwm0
            pw, pc, prss, pbytes = tail_cmd(path, n)
            rows.append(
                Row(
                    label,
                    f"{cpu:.2f} s",
                    f"+{mib(growth)} (peak growth)",
                    str(d.fds()),
                    f"HTTP {code}, {len(body):,} B in {wall:.2f} s",
                    f"`tail -n {n}`: {pbytes:,} B in {pw:.2f} s, CPU {pc:.2f} s, "
                    f"RSS {mib(prss)} MiB",
                    f"{wall / max(pw, 1e-3):.1f}x wall",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    work = Path(tempfile.mkdtemp(prefix="logvold-hostile-"))
    try:
        rows = [
            slowloris(work),
            followers(work, "", "default limits: 256 global, 32 per stream"),
            followers(
                work, "maxFollowers: 1000, maxFollowersPerStream: 1000", "limits raised to 1000"
            ),
            *huge_tail(work),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} "
        f"CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}.\n"
    )
    print("| scenario | daemon CPU | daemon RSS MiB | daemon fds | outcome | `tail -n` | ratio |")
    print("|---|---:|---:|---:|---|---|---:|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.cpu} | {r.rss} | {r.fds} | {r.outcome} | {r.peer} | {r.ratio} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
