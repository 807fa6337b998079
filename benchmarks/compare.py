"""Peer comparison, one run: the same stream of checksummed events through logvold and
the log rotators a node might use instead; then the reader figures (benchmarks/reader.py)
next to GNU tail/grep. Prints Markdown (the body of benchmarks/RESULTS.md). Not in CI.

    .venv/bin/python -m benchmarks.compare --size-mib 256 [--rotate-size 1Mi] [--dir DIR]

Rows: `cat >> file` (no rotation, the baseline); `logvold run` (logvold is the writer);
kube-log-runner, multilog, s6-log, svlogd, rotatelogs when installed (a missing one is a
row saying so); logrotate copytruncate driven in a loop against `cat >> file`; and
`logvold serve` rotating (punch) while `cat >> file` writes (a foreign writer). Every
tool rotates every --rotate-size. The output of each (rotated files oldest first, then
the current file; for logvold serve the active file after the committed offset) is
checked event by event: lost, duplicated, and split (a file that does not end at an
event boundary, or an event that is not whole and intact in the concatenation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.runner import make_source  # noqa: E402
from logvold.core.layout import segments_of  # noqa: E402
from logvold.core.units import parse_size  # noqa: E402
from tests.support.events import parse_event  # noqa: E402


@dataclass
class Row:
    tool: str
    seconds: float = 0.0
    peak_rss_kib: int = 0
    files: int = 0
    lost: int | None = None
    duplicated: int | None = None
    split: int | None = None
    note: str = ""


# ---- running a tool ------------------------------------------------------------------


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_pipeline(
    src: Path, argv: list[str] | None, *, stdout: Path | None = None, cwd: Path | None = None
) -> tuple[float, int]:
    """`cat src | argv` (argv None: `cat src >> stdout`); wall seconds until the tool has
    exited, and the tool's peak RSS (VmHWM sampled every 10 ms)."""
    t0 = time.perf_counter()
    if argv is None:
        assert stdout is not None
        with stdout.open("ab") as out:
            cat = subprocess.Popen(["cat", str(src)], stdout=out)
            peak = 0
            while cat.poll() is None:
                peak = max(peak, _vm_hwm_kib(cat.pid))
                time.sleep(0.01)
        if cat.returncode:
            raise RuntimeError(f"cat exited {cat.returncode}")
        return time.perf_counter() - t0, peak
    cat = subprocess.Popen(["cat", str(src)], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    tool = subprocess.Popen(
        argv, stdin=cat.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd
    )
    cat.stdout.close()
    peak = 0
    while tool.poll() is None:
        peak = max(peak, _vm_hwm_kib(tool.pid))
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    cat.wait()
    if tool.returncode:
        err = tool.stderr.read().decode(errors="replace") if tool.stderr else ""
        raise RuntimeError(f"{argv[0]} exited {tool.returncode}: {err[-300:]}")
    return elapsed, peak


# ---- checking the output -------------------------------------------------------------


def check(pieces: list[tuple[Path, int]], total_events: int, row: Row) -> None:
    """pieces: (file, start offset) oldest first. Counts lost / duplicated / split."""
    row.files = len(pieces)
    seen = bytearray(total_events)
    split = 0
    carry = b""
    for i, (path, start) in enumerate(pieces):
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
        if data and not data.endswith(b"\n") and i < len(pieces) - 1:
            split += 1  # the file ends inside an event
        data = carry + data
        lines = data.split(b"\n")
        carry = lines.pop()
        for line in lines:
            seq = parse_event(line)
            if seq is None or seq >= total_events:
                split += 1
            elif seen[seq] < 255:
                seen[seq] += 1
    if carry:
        split += 1
    row.lost = seen.count(0)
    row.duplicated = sum(c - 1 for c in seen if c > 1)
    row.split = split


def numbered(directory: Path, pattern: str) -> list[Path]:
    """Files whose names match `pattern` with one integer group, by that number."""
    rx = re.compile(pattern)
    found = [
        (int(m.group(1)), directory / n) for n in os.listdir(directory) if (m := rx.fullmatch(n))
    ]
    return [p for _, p in sorted(found)]


def daemontools_pieces(directory: Path) -> list[tuple[Path, int]]:
    """multilog / s6-log: rotated files `@<tai64n>.s` (name order = time order), then current."""
    rotated = sorted(n for n in os.listdir(directory) if n.startswith("@"))
    return [(directory / n, 0) for n in rotated] + [(directory / "current", 0)]


# ---- the rows ------------------------------------------------------------------------


def bench_all(
    src: Path, work: Path, total_events: int, rotate: int, logvold: str, pace: float
) -> list[Row]:
    rows: list[Row] = []

    def fresh(name: str) -> Path:
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        subprocess.run(["sync"], check=True)
        return d

    d = fresh("cat")
    row = Row("`cat >> file` (no rotation)")
    row.seconds, row.peak_rss_kib = run_pipeline(src, None, stdout=d / "app.log")
    check([(d / "app.log", 0)], total_events, row)
    rows.append(row)

    d = fresh("logvold-run")
    row = Row(f"`logvold run -log-file-size={rotate}`")
    row.seconds, row.peak_rss_kib = run_runner(
        [logvold, "run", f"-log-file={d / 'app.log'}", f"-log-file-size={rotate}"], src
    )
    check(
        [(d / s.filename, 0) for s in segments_of("app.log", os.listdir(d))] + [(d / "app.log", 0)],
        total_events,
        row,
    )
    rows.append(row)

    klr = shutil.which("kube-log-runner")
    venv_bin = Path(sys.executable).parent.resolve()
    if klr and Path(klr).resolve().parent != venv_bin:
        d = fresh("klr")
        row = Row("kube-log-runner (rotation by size)")
        try:
            row.seconds, row.peak_rss_kib = run_runner(
                [klr, f"-log-file={d / 'app.log'}", f"-log-file-size={rotate}"], src
            )
            pieces = sorted(p for p in d.iterdir() if p.name != "app.log")
            check([(p, 0) for p in pieces] + [(d / "app.log", 0)], total_events, row)
        except (RuntimeError, OSError) as e:
            row.note = f"failed: {e}"
        rows.append(row)
    else:
        rows.append(Row("kube-log-runner", note="not on PATH (skipped)"))

    line_tools: list[
        tuple[str, Callable[[Path], list[str]], Callable[[Path], list[tuple[Path, int]]]]
    ] = [
        ("multilog", lambda d: ["multilog", f"s{rotate}", "n100000", str(d)], daemontools_pieces),
        ("s6-log", lambda d: ["s6-log", "-b", "n100000", f"s{rotate}", str(d)], daemontools_pieces),
        ("svlogd", lambda d: ["svlogd", str(d)], daemontools_pieces),
        (
            "rotatelogs",
            lambda d: ["rotatelogs", "-n", "100000", str(d / "app.log"), f"{rotate // 1024}K"],
            lambda d: [(d / "app.log", 0)] + [(p, 0) for p in numbered(d, r"app\.log\.(\d+)")],
        ),
    ]
    for name, argv_of, pieces_of in line_tools:
        if shutil.which(name) is None:
            rows.append(Row(name, note="not installed (skipped)"))
            continue
        d = fresh(name)
        if name == "svlogd":
            (d / "config").write_text(f"s{rotate}\nn100000\n")
        row = Row(f"{name} (size {rotate // 1024} KiB)")
        try:
            row.seconds, row.peak_rss_kib = run_pipeline(src, argv_of(d))
            check(pieces_of(d), total_events, row)
        except (RuntimeError, OSError) as e:
            row.note = f"failed: {e}"
        rows.append(row)

    rows.append(bench_copytruncate(src, fresh("logrotate"), total_events, rotate, 0))
    rows.append(bench_copytruncate(src, fresh("logrotate-paced"), total_events, rotate, pace))
    rows.append(bench_daemon(src, fresh("serve"), total_events, rotate, logvold, 0))
    rows.append(bench_daemon(src, fresh("serve-paced"), total_events, rotate, logvold, pace))
    return rows


PACED_WRITER = """
import os, sys, time
src, dst, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
fd = os.open(dst, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
t0, done = time.monotonic(), 0
with open(src, "rb") as f:
    while block := f.read(65536):
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view):]
        done += len(block)
        ahead = done / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
"""


def writer_argv(src: Path, dst: Path, pace: float) -> list[str]:
    """`cat src >> dst`, or at `pace` bytes/s (64 KiB O_APPEND writes) when pace > 0."""
    if pace <= 0:
        return ["sh", "-c", 'exec cat "$0" >> "$1"', str(src), str(dst)]
    return [sys.executable, "-c", PACED_WRITER, str(src), str(dst), str(pace)]


def run_runner(argv: list[str], src: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([*argv, "cat", str(src)], stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_kib(proc.pid))
        time.sleep(0.01)
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}")
    return time.perf_counter() - t0, peak


def bench_copytruncate(src: Path, d: Path, total_events: int, rotate: int, pace: float) -> Row:
    """A writer appending while `logrotate` (copytruncate, size) runs in a tight loop."""
    row = Row(f"logrotate copytruncate in a loop (size {rotate // 1024} KiB), {_writer_name(pace)}")
    if shutil.which("logrotate") is None:
        row.note = "not installed (skipped)"
        return row
    log = d / "app.log"
    log.touch()
    conf = d / "logrotate.conf"
    conf.write_text(
        f"{log} {{\n  size {rotate}\n  copytruncate\n  rotate 100000\n"
        "  start 1\n  nocompress\n  missingok\n}\n"
    )
    state = d / "logrotate.state"
    runs = 0
    t0 = time.perf_counter()
    writer = subprocess.Popen(writer_argv(src, log, pace))
    while writer.poll() is None:
        subprocess.run(
            ["logrotate", "-s", str(state), str(conf)], check=False, stderr=subprocess.DEVNULL
        )
        runs += 1
    row.seconds = time.perf_counter() - t0
    subprocess.run(
        ["logrotate", "-s", str(state), str(conf)], check=False, stderr=subprocess.DEVNULL
    )
    rotated = numbered(d, r"app\.log\.(\d+)")
    # logrotate shifts: app.log.1 is the newest rotated file.
    check([(p, 0) for p in reversed(rotated)] + [(log, 0)], total_events, row)
    row.note = f"{runs} logrotate runs during the write"
    return row


def _writer_name(pace: float) -> str:
    return f"writer paced at {pace / 1e6:.0f} MB/s" if pace > 0 else "writer `cat >> file`"


def bench_daemon(
    src: Path, d: Path, total_events: int, rotate: int, logvold: str, pace: float
) -> Row:
    """`logvold serve` (punch) rotating while a foreign writer appends; throughput is the
    writer's; RSS is the daemon's; checked after the daemon has settled and stopped."""
    from logvold.fileio.state import load_state

    vol = d / "vol"
    vol.mkdir()
    (vol / "app.log").touch()
    cfg = d / "cfg.yaml"
    port = _free_port()
    cfg.write_text(
        f'server: {{listen: "127.0.0.1:{port}"}}\nrescanInterval: 1s\n'
        f"defaults: {{maxSize: {rotate}, maxFiles: 0}}\n"
        f"volumes:\n  - name: v\n    pod: p\n    path: {json.dumps(str(vol))}\n"
    )
    row = Row(
        f"`logvold serve` (punch, maxSize {rotate // 1024} KiB), foreign {_writer_name(pace)}"
    )
    log = (d / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [logvold, "serve", "--config", str(cfg), "--log-level", "warning"], stdout=log, stderr=log
    )
    peak = 0
    try:
        _wait_http(port, daemon)
        t0 = time.perf_counter()
        writer = subprocess.Popen(writer_argv(src, vol / "app.log", pace))
        while writer.poll() is None:
            peak = max(peak, _vm_hwm_kib(daemon.pid))
            time.sleep(0.01)
        row.seconds = time.perf_counter() - t0
        # Let it catch up: live part of the active file below maxSize, no intent.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            peak = max(peak, _vm_hwm_kib(daemon.pid))
            st = load_state(vol, "app.log")
            size = (vol / "app.log").stat().st_size
            if st is not None and st.intent is None and size - st.physical_committed < rotate:
                break
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        log.close()
    st = load_state(vol, "app.log")
    start = st.physical_committed if st is not None else 0
    check(
        [(vol / s.filename, 0) for s in segments_of("app.log", os.listdir(vol))]
        + [(vol / "app.log", start)],
        total_events,
        row,
    )
    row.peak_rss_kib = peak
    return row


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(port: int, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"logvold serve exited {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("logvold serve not ready")


# ---- report --------------------------------------------------------------------------


def machine() -> str:
    mem = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        "?",
    )
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{int(mem) // 1024} MiB RAM, Linux {platform.release()}"
    )


def filesystem(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout
    parts = out.splitlines()[-1].split()
    return parts[1] if len(parts) > 1 else "?"


def table(rows: list[Row], size: int) -> str:
    cat = rows[0].seconds
    lines = [
        "| tool | MB/s | ratio to `cat >> file` | peak RSS (MiB) | files | events lost "
        "| duplicated | split | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.lost is None:
            lines.append(f"| {r.tool} | - | - | - | - | - | - | - | {r.note} |")
            continue
        lines.append(
            f"| {r.tool} | {size / r.seconds / 1e6:.0f} | {cat / r.seconds:.2f} | "
            f"{r.peak_rss_kib / 1024:.1f} | {r.files} | {r.lost} | {r.duplicated} | "
            f"{r.split} | {r.note} |"
        )
    return "\n".join(lines)


def reader_figures(size_mib: int, followers: int) -> str:
    """benchmarks/reader.py's own table (it times logvold against GNU tail and grep)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.reader",
            "--size",
            f"{size_mib}MiB",
            "--followers",
            str(followers),
            "--follow-seconds",
            "5",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode:
        return f"benchmarks/reader.py failed ({done.returncode}):\n\n```\n{done.stderr[-1500:]}```"
    rows = [line.split(" | ") for line in done.stdout.strip().splitlines()]
    out = ["| reader figure | logvold | GNU tool | comparison |", "|---|---|---|---|"]
    out += ["| " + " | ".join(c.strip() for c in r) + " |" for r in rows]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--rotate-size", default="1Mi")
    p.add_argument("--dir", default="/tmp/logvold-bench-compare")
    p.add_argument("--reader-size-mib", type=int, default=256)
    p.add_argument("--followers", type=int, default=20)
    p.add_argument(
        "--pace-mbps",
        type=float,
        default=16.0,
        help="rate of the paced foreign writer (rows where rotation happens "
        "during the write: copytruncate and logvold serve)",
    )
    args = p.parse_args()
    rotate = parse_size(args.rotate_size)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"source-{args.size_mib}MiB.log"
    if not src.exists() or src.stat().st_size < args.size_mib << 20:
        make_source(src, args.size_mib << 20)
    size = src.stat().st_size
    total_events = sum(1 for _ in src.open("rb"))
    venv_bin = Path(sys.executable).parent
    logvold = str(venv_bin / "logvold") if (venv_bin / "logvold").exists() else "logvold"
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = bench_all(src, work, total_events, rotate, logvold, args.pace_mbps * 1e6)
    for name in os.listdir(work):
        if not name.startswith("source-"):
            shutil.rmtree(work / name, ignore_errors=True)
    reader = reader_figures(args.reader_size_mib, args.followers)
    print(f"Run {started} on {machine()}, filesystem {filesystem(work)}.\n")
    print(
        f"Command: `.venv/bin/python -m benchmarks.compare --size-mib {args.size_mib} "
        f"--rotate-size {args.rotate_size} --reader-size-mib {args.reader_size_mib} "
        f"--followers {args.followers} --pace-mbps {args.pace_mbps:g}`\n"
    )
    print(
        f"Stream: {size / 2**20:.0f} MiB, {total_events} newline-terminated events "
        f"(`E#<seq> <crc32> <payload>`, 20-600 byte payloads), rotation every "
        f"{rotate // 1024} KiB, one run each.\n"
    )
    print(table(rows, size))
    print()
    print(reader)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
