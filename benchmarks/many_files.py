"""A list-less volume holding 100,000 `*.log` files next to a volume with a real writer:
what the daemon pays (start-up, CPU of the first reconcile, RSS), how long the other
volume waits for its first rotation, and how fast `GET /logs/` answers, against
`ls -f | wc -l` of the same directory (the plain tool's one pass over it) and against
the same daemon with the flood volume empty. One run, a markdown table on stdout.

    .venv/bin/python -m benchmarks.many_files [--files 100000 99000] [--dir /dev/shm]

100,000 files plus the daemon's `.logvold` is more than one listing takes (100,000
names): that directory is "crowded", its streams are never stepped. 99,000 stays under
the limit, so each of the 256 managed streams gets its first step (the rotator lists
the directory): the costlier case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
EVENTS = 3000


@dataclass
class Run:
    label: str
    ready_s: float
    cpu_ready_s: float
    cpu_settled_s: float
    first_rotation_s: float
    list_ms: float
    list_items: int
    hwm_mib: float
    over_cap: str


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_files(directory: Path, count: int) -> float:
    start = time.monotonic()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            os.close(os.open(f"c{i:07d}.log", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return time.monotonic() - start


def ls_count(directory: Path) -> tuple[float, float, int]:
    """(wall s, CPU s, entries) of `ls -f DIR | wc -l` (no shell: two processes, a pipe)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    ls = subprocess.Popen(["ls", "-f", str(directory)], stdout=subprocess.PIPE)
    wc = subprocess.run(["wc", "-l"], stdin=ls.stdout, capture_output=True, check=True)
    assert ls.stdout is not None
    ls.stdout.close()
    ls.wait()
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, int(wc.stdout.split()[0])


def get(url: str) -> tuple[float, bytes]:
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=600) as resp:
        body = resp.read()
    return time.monotonic() - start, body


def metric(port: int, name: str, volume: str) -> str:
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f'{name}{{volume="{volume}"}}'):
            return line.split()[-1]
    return "-"


def run(label: str, work: Path, flood: Path, files: int) -> Run:
    app = work / f"app-{label}"
    app.mkdir()
    (app / "app.log").write_bytes(b"")
    port = free_port()
    cfg = work / f"{label}.yaml"
    cfg.write_text(
        f"server: {{listen: '127.0.0.1:{port}'}}\n"
        "defaults: {maxSize: 64Ki, maxFiles: 0}\n"
        "volumes:\n"
        f"  - {{name: flood, path: {json.dumps(str(flood))}}}\n"
        f"  - {{name: app, path: {json.dumps(str(app))}}}\n"
    )
    log = work / f"{label}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "logvold", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=out,
            env=env,
        )
    try:
        while "logvold serving" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - start > 600:
                raise RuntimeError(log.read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        ready = time.monotonic() - start
        cpu_ready = cpu_s(proc.pid)
        # The other volume's writer starts now: 3000 events (~500 KiB) cross 64 KiB at once.
        written = time.monotonic()
        writer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.writer",
                "--path",
                str(app / "app.log"),
                "--count",
                str(EVENTS),
                "--delimiter",
                "\\n",
            ],
            cwd=ROOT,
            env=env,
        )
        while not any(".log.2" in n for n in os.listdir(app)):
            if time.monotonic() - written > 600:
                raise RuntimeError("no rotation within 600 s")
            time.sleep(0.01)
        first_rotation = time.monotonic() - written
        writer.wait(120)
        time.sleep(5)  # the first reconcile's steps settle
        cpu_settled = cpu_s(proc.pid)
        times = []
        items = 0
        for _ in range(5):
            took, body = get(f"http://127.0.0.1:{port}/logs/")
            times.append(took)
            items = len(json.loads(body)["items"])
        over = metric(port, "logvold_streams_over_cap", "flood")
        hwm = status_kb(proc.pid, "VmHWM") / 1024
    finally:
        proc.terminate()
        proc.wait(60)
    return Run(
        label,
        ready,
        cpu_ready,
        cpu_settled,
        first_rotation,
        statistics.median(times) * 1000,
        items,
        hwm,
        over,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--files", type=int, nargs="+", default=[100_000, 99_000])
    p.add_argument(
        "--dir",
        default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
        help="where the flood directory is made (default /dev/shm: a tmpfs)",
    )
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="logvold-many-", dir=args.dir))
    runs: list[tuple[int, Run, tuple[float, float, int], float]] = []
    try:
        empty = work / "empty"
        empty.mkdir()
        baseline = run("empty", work, empty, 0)
        for count in args.files:
            flood = work / f"flood-{count}"
            flood.mkdir()
            made_s = create_files(flood, count)
            ls = ls_count(flood)
            runs.append((count, run(f"flood-{count}", work, flood, count), ls, made_s))
            shutil.rmtree(flood, ignore_errors=True)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    where = args.dir or "the tmp dir"
    for count, _, (ls_wall, ls_cpu, entries), made_s in runs:
        print(
            f"- {count} files created in {made_s:.1f} s under {where}; `ls -f | wc -l`: "
            f"{entries} entries, {ls_wall * 1000:.0f} ms wall, {ls_cpu:.2f} CPU-s"
        )
    print()
    print(
        "| flood volume | ready s | CPU-s at ready | CPU-s +5 s after rotation | "
        "other volume's first rotation s | GET /logs/ ms (items) | VmHWM MiB | "
        "over_cap gauge |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in [("empty", baseline), *((f"{c} *.log", r) for c, r, _, _ in runs)]:
        print(
            f"| {name} | {r.ready_s:.1f} | {r.cpu_ready_s:.2f} | {r.cpu_settled_s:.2f} | "
            f"{r.first_rotation_s:.2f} | {r.list_ms:.0f} ({r.list_items}) | "
            f"{r.hwm_mib:.0f} | {r.over_cap} |"
        )
    print()
    for count, r, (ls_wall, ls_cpu, _), _ in runs:
        print(
            f"- {count}: GET /logs/ {r.list_ms / max(ls_wall * 1000, 0.001):.1f}x the wall "
            f"time of `ls -f | wc -l`; daemon CPU until ready "
            f"{r.cpu_ready_s / max(ls_cpu, 0.001):.0f}x its CPU "
            f"(+{r.cpu_ready_s - baseline.cpu_ready_s:.2f} CPU-s over the empty volume); "
            f"other volume's first rotation {r.first_rotation_s:.2f} s "
            f"(empty: {baseline.first_rotation_s:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
