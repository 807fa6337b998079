"""Evidence for `logvold serve` (issue 4), measured on a real daemon process:

(a) idle cost: N idle streams (default 1,000), daemon CPU % and peak RSS over a
    window (default 60 s; targets < 1 % CPU, < 80 MB);
(b) rotation latency: time from the write that crosses maxSize to the committed
    segment, p50/p99 (target p99 < 1 s), measured with the idle streams present;
(c) the same writer against `logrotate` with `copytruncate` and against logvold:
    events lost, duplicated and split by each;
(d) optionally, a kill -9 loop of the daemon during rotation and compression.

    python -m benchmarks.daemon                     # full run
    python -m benchmarks.daemon --idle-seconds 20 --kills 0   # shorter

Prints one table at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from logvold.core.layout import segments_of
from logvold.fileio.state import load_state
from tests.e2e.serve_support import (
    Daemon,
    free_port,
    metric,
    stream_bytes,
    wait_for,
    write_config,
    writer,
)
from tests.support.events import event_stream, split_raw, verify

DELIM = b"\n\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Row:
    name: str
    value: str
    target: str = ""
    ok: bool | None = None


def idle_and_latency(
    work: Path, streams: int, idle_s: float, samples: int, rows: list[Row]
) -> None:
    vol = work / "idle"
    vol.mkdir()
    for i in range(streams):
        (vol / f"c{i:04d}.log").write_bytes(b"".join(event_stream(3, seed=i, delimiter=DELIM)))
    port = free_port()
    cfg = write_config(
        work / "idle.yaml",
        vol,
        listen=f"127.0.0.1:{port}",
        policy={"maxSize": "64Ki", "maxFiles": 3, "delimiter": "\n\n"},
    )
    daemon = Daemon(["--config", str(cfg)], work / "idle.log")
    try:
        started = time.monotonic()
        daemon.wait_serving(120)
        wait_for(lambda: metric(port, "logvold_streams") == streams, 60, "all streams")
        startup_s = time.monotonic() - started
        time.sleep(3)  # let the first recover/check of every stream finish
        pid = daemon.proc.pid
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        peak = rss_bytes(pid)
        while time.monotonic() - t0 < idle_s:
            time.sleep(1)
            peak = max(peak, rss_bytes(pid))
        cpu_pct = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        rows.append(Row(f"(a) startup with {streams} streams", f"{startup_s:.1f} s"))
        rows.append(
            Row(
                f"(a) idle CPU, {streams} streams, {idle_s:.0f} s",
                f"{cpu_pct:.2f} %",
                "< 1 %",
                cpu_pct < 1,
            )
        )
        rows.append(
            Row(
                f"(a) peak RSS, {streams} streams",
                f"{peak / 2**20:.1f} MB",
                "< 80 MB",
                peak < 80 * 2**20,
            )
        )

        # (b) one stream written past maxSize, the other streams idle.
        active = vol / "c0000.log"
        latencies = []
        seq = 10_000
        for _ in range(samples):
            before = max(segments_of("c0000.log", os.listdir(vol)), default=None)
            data = b""
            for ev in event_stream(2000, seed=seq, start=seq, delimiter=DELIM):
                data += ev
                seq += 1
                if len(data) > 64 * 1024:
                    break
            with active.open("ab") as f:
                f.write(data)
            t_write = time.monotonic()
            while max(segments_of("c0000.log", os.listdir(vol)), default=None) == before:
                if time.monotonic() - t_write > 10:
                    raise AssertionError("no rotation within 10 s")
                time.sleep(0.002)
            latencies.append(time.monotonic() - t_write)
            time.sleep(random.uniform(0.05, 0.3))  # writes do not line up with the sweep
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        rows.append(Row(f"(b) rotation latency p50 ({samples} rotations)", f"{p50 * 1000:.0f} ms"))
        rows.append(
            Row(
                f"(b) rotation latency p99 ({samples} rotations)",
                f"{p99 * 1000:.0f} ms",
                "< 1 s",
                p99 < 1.0,
            )
        )
        rows.append(Row("(b) rotation latency max", f"{latencies[-1] * 1000:.0f} ms"))
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


def logrotate_numbered(directory: Path, base: str) -> list[bytes]:
    """logrotate's `base.N` files, oldest (highest N) first."""
    numbered = []
    for name in os.listdir(directory):
        suffix = name[len(base) + 1 :]
        if name.startswith(base + ".") and suffix.isdigit():
            numbered.append((int(suffix), (directory / name).read_bytes()))
    return [data for _, data in sorted(numbered, reverse=True)]


def compare_logrotate(work: Path, count: int, rate: float, mode: str, rows: list[Row]) -> None:
    if shutil.which("logrotate") is None:
        rows.append(Row("(c) logrotate copytruncate", "logrotate not installed"))
        return
    lr_dir = work / f"logrotate-{mode}"
    lv_dir = work / f"logvold-{mode}"
    lr_dir.mkdir()
    lv_dir.mkdir()
    conf = work / f"logrotate-{mode}.conf"
    conf.write_text(
        f"{lr_dir}/app.log {{\n  size 64k\n  rotate 100000\n  copytruncate\n"
        "  missingok\n  nocompress\n}\n"
    )
    port = free_port()
    cfg = write_config(
        work / f"logvold-{mode}.yaml",
        lv_dir,
        listen=f"127.0.0.1:{port}",
        policy={"maxSize": "64Ki", "maxFiles": 0, "delimiter": "\n\n"},
    )
    daemon = Daemon(["--config", str(cfg)], work / f"cmp-{mode}.log")
    try:
        daemon.wait_serving(60)
        # The same writer program, parameters and seed for both files, at the same time.
        w_lr = writer(lr_dir / "app.log", count=count, rate=rate, mode=mode)
        w_lv = writer(lv_dir / "app.log", count=count, rate=rate, mode=mode)
        runs = 0
        while w_lr.poll() is None:
            # logrotate is normally run from cron; here as often as it can go.
            subprocess.run(
                ["logrotate", "-s", str(work / f"lr-{mode}.state"), str(conf)],
                check=True,
                capture_output=True,
            )
            runs += 1
            time.sleep(0.05)
        w_lv.wait(120)
        rotations = metric(port, "logvold_rotations_total")
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    lr_parts = [*logrotate_numbered(lr_dir, "app.log"), (lr_dir / "app.log").read_bytes()]
    lr_data = b"".join(p.replace(b"\0", b"") for p in lr_parts)  # an offset writer leaves NULs
    lv_segments, lv_live = stream_bytes(lv_dir, "app.log")
    for name, data, nrot in (
        ("logrotate copytruncate", lr_data, len(lr_parts) - 1),
        ("logvold punch", b"".join(lv_segments) + lv_live, int(rotations)),
    ):
        report = verify(split_raw([data], DELIM), expected=range(count))
        rows.append(
            Row(
                f"(c) {name}, {mode} writer: lost / dup / split of {count}",
                f"{len(report.lost)} / {len(report.duplicated)} / {len(report.corrupt)}"
                f"  ({nrot} rotations)",
                "0 / 0 / 0" if name.startswith("logvold") else "",
                report.ok if name.startswith("logvold") else None,
            )
        )
    rows.append(Row(f"(c) logrotate runs during the {mode} comparison", str(runs)))


def kill_loop(work: Path, kills: int, rows: list[Row]) -> None:
    vol = work / "kill"
    vol.mkdir()
    port = free_port()
    cfg = write_config(
        work / "kill.yaml",
        vol,
        listen=f"127.0.0.1:{port}",
        rescan="1s",
        policy={
            "maxSize": "64Ki",
            "maxFiles": 0,
            "compress": "gzip",
            "delayCompress": False,
            "delimiter": "\n\n",
        },
    )
    rng = random.Random(7)
    w = writer(vol / "app.log", count=10**8, rate=60)
    mid_step = 0
    t0 = time.monotonic()
    try:
        for i in range(kills):
            d = Daemon(["--config", str(cfg), "--log-level", "warning"], work / f"kill-{i}.log")
            time.sleep(rng.uniform(0.3, 1.2))
            d.kill()
            state = load_state(vol, "app.log")
            mid_step += state is not None and state.intent is not None
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(10)
    d = Daemon(["--config", str(cfg)], work / "kill-final.log")
    d.wait_serving(60)
    wait_for(lambda: not any(p.name.endswith(".tmp") for p in vol.iterdir()), 30, "no tmp")
    assert d.stop() == 0
    segs, live = stream_bytes(vol, "app.log")
    data = b"".join(segs) + live
    data = data[: data.rfind(DELIM) + len(DELIM)]
    report = verify(split_raw([data], DELIM))
    rows.append(
        Row(
            f"(d) kill -9 loop: {kills} kills in {time.monotonic() - t0:.0f} s "
            f"({mid_step} mid-step)",
            f"{report.seen} events, {len(report.lost)} lost, "
            f"{len(report.duplicated)} dup, {len(report.corrupt)} split",
            "0 / 0 / 0",
            report.ok and report.first_seq == 0,
        )
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--latency-samples", type=int, default=100)
    p.add_argument("--compare-events", type=int, default=30000)
    p.add_argument("--compare-rate", type=float, default=200.0, help="writer chunks per second")
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="logvold-bench-"))
    rows: list[Row] = []
    try:
        idle_and_latency(work, args.streams, args.idle_seconds, args.latency_samples, rows)
        for mode in ("append", "offset"):
            compare_logrotate(work, args.compare_events, args.compare_rate, mode, rows)
        if args.kills:
            kill_loop(work, args.kills, rows)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(r.name) for r in rows)
    vwidth = max(len(r.value) for r in rows)
    print(f"\n{'measure':<{width}}  {'value':<{vwidth}}  target  ok")
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        print(f"{r.name:<{width}}  {r.value:<{vwidth}}  {r.target:<6}  {ok}")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
