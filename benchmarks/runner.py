"""Throughput, memory and integrity of `logvold run` against `cat >> file` (and
kube-log-runner when it is on PATH), in one run.

    .venv/bin/python benchmarks/runner.py [--size-mib 1024] [--rounds 3] [--dir /tmp/lvbench]
        [--rotate-sizes 100Ki,1Mi,10Mi]

`--logvold PATH` runs another install's `logvold` (e.g. a non-editable
`pip install .` in its own venv: what users run; an editable install's import
finder adds ~10 ms to every start). Before timing, every logvold source tree used
is byte-compiled: with PYTHONDONTWRITEBYTECODE set, a tree without __pycache__
would be compiled again at every start (~40 ms).

`--kube-log-runner PATH` names the Go binary (default: `kube-log-runner` on PATH
unless that is logvold's own alias); its rows get the same integrity counts,
with its rotated files (`app-YYYYMMDD-HHMMSS.log`) read in name order, and the
table ends with logvold / kube-log-runner ratios per size.

Each tool moves the same file of checksummed, sequence-numbered events
(`cat SRC` is the child of both runners); `logvold run` rotates at each of
--rotate-sizes. Prints MB/s (best and median of the rounds), the ratio to
`cat >> file`, the runner's CPU seconds and peak RSS, and integrity counts: the
output (every segment, then the active file) must be byte-identical to the
source, and for logvold every event is found once, whole and in order, and every
segment ends at an event boundary. Then the start-up time of `logvold run true`
against `true` itself. Not run in CI.

Each run writes into a new directory under a TOPDIR parent (ext4 then puts it in a
block group of its own, away from the inodes the last runs deleted) and starts right
after the last run's files were deleted (their page cache is free and warm again);
`--inode-settle-s 31` also waits out ext4's 30 s recently-deleted window, writing and
deleting a source-sized file just before the run so the pause does not leave the
memory cold (see refresh_page_cache and RESULTS.md, 2026-12-01 04:05).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from logvold.core.layout import segments_of  # noqa: E402
from tests.support.events import parse_event  # noqa: E402

_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+/"


def make_source(path: Path, size_bytes: int) -> int:
    """Write events `E#<seq> <crc> <payload>\\n` (20-600 byte payloads) up to size_bytes."""
    rng = random.Random(1)
    pool = bytes(rng.choice(_ALPHABET) for _ in range(1 << 16))
    count = 0
    written = 0
    with path.open("wb") as out:
        buf: list[bytes] = []
        while written < size_bytes:
            n = rng.randint(20, 600)
            start = rng.randrange(0, len(pool) - n)
            payload = pool[start : start + n]
            head = b"E#%010d " % count
            crc = zlib.crc32(payload, zlib.crc32(head)) & 0xFFFFFFFF
            event = head + b"%08x " % crc + payload + b"\n"
            buf.append(event)
            written += len(event)
            count += 1
            if len(buf) >= 4096:
                out.write(b"".join(buf))
                buf.clear()
        out.write(b"".join(buf))
    return count


@dataclass
class Result:
    name: str
    seconds: list[float] = field(default_factory=list)
    peak_rss_kib: int = 0
    cpu_s: list[float] = field(default_factory=list)
    segments: int = 0
    identical: bool = True
    events_ok: int | None = None
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    segments_cut_mid_event: int = 0


def run_once(
    argv: list[str], stdout_path: Path | None, *, quiet: bool = False
) -> tuple[float, int, int, float]:
    """Wall seconds, peak RSS (KiB) of the process itself, exit status, its CPU seconds.

    The peak is VmHWM sampled from /proc while it runs: getrusage would report
    this script's own size, which a forked child carries until it execs. The CPU
    time is the process's own (utime + stime), read after it exits, before it is
    reaped - its child (`cat`) is not in it.
    """
    out = stdout_path.open("ab") if stdout_path else None
    peak = 0
    try:
        t0 = time.perf_counter()
        stderr = subprocess.DEVNULL if quiet else None  # kube-log-runner logs its command line
        proc = subprocess.Popen(argv, stdout=out or subprocess.DEVNULL, stderr=stderr)
        status_file = Path(f"/proc/{proc.pid}/status")
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            peak = max(peak, _vm_hwm_kib(status_file))
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_seconds(proc.pid)
        proc.wait()
    finally:
        if out:
            out.close()
    return elapsed, peak, proc.returncode, cpu


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm_hwm_kib(status_file: Path) -> int:
    try:
        for line in status_file.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def output_pieces(log: Path) -> list[Path]:
    names = os.listdir(log.parent)
    return [log.parent / s.filename for s in segments_of(log.name, names)] + [log]


def klr_pieces(log: Path) -> list[Path]:
    """kube-log-runner's rotated files, `<stem>-YYYYMMDD-HHMMSS<ext>`, oldest first, then
    the active file. Its names have one-second resolution: a second rotation within
    the same second renames over the first (those bytes are gone, counted as lost)."""
    pattern = re.compile(re.escape(log.stem) + r"-\d{8}-\d{6}" + re.escape(log.suffix) + "$")
    names = sorted(n for n in os.listdir(log.parent) if pattern.match(n))
    return [log.parent / n for n in names] + [log]


def check_output(
    result: Result, log: Path, source_sha: str, *, events: bool, klr: bool = False
) -> None:
    pieces = klr_pieces(log) if klr else output_pieces(log)
    result.segments = len(pieces) - 1
    digest = hashlib.sha256()
    for piece in pieces:
        with piece.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    result.identical = digest.hexdigest() == source_sha
    if not events:
        return
    expected, ok, lost, dup, corrupt, mid = 0, 0, 0, 0, 0, 0
    carry = b""
    for i, piece in enumerate(pieces):
        data = piece.read_bytes()
        if i < len(pieces) - 1 and not data.endswith(b"\n"):
            mid += 1
        data = carry + data
        lines = data.split(b"\n")
        carry = lines.pop()
        for line in lines:
            seq = parse_event(line)
            if seq is None:
                corrupt += 1
            elif seq == expected:
                ok += 1
                expected += 1
            elif seq > expected:
                lost += seq - expected
                ok += 1
                expected = seq + 1
            else:
                dup += 1
    if carry:
        corrupt += 1
    result.events_ok, result.lost, result.duplicated = ok, lost, dup
    result.corrupt, result.segments_cut_mid_event = corrupt, mid


_FRESH_MEMORY_S = 1.0


def refresh_page_cache(src: Path, scratch: Path) -> None:
    """Write and delete a file as big as the source, then sync: the run that follows
    finds that much page cache just freed. On this VM, memory left free for more than
    a few seconds is handed back to the host and costs a fault per page when the next
    run's output takes it (`cat >> file` measured 700-1000 MB/s after a 31 s pause,
    ~3000 right after a delete), so a long --inode-settle-s pause would tax whichever
    row follows it."""
    shutil.copyfile(src, scratch)
    scratch.unlink()
    subprocess.run(["sync"], check=True)


_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(directory: Path) -> bool:
    """Mark `directory` TOPDIR (`chattr +T`): ext4 then places each new subdirectory, and
    so each run's files, in a block group of its own choosing rather than the parent's.
    Why: an ext4 without a journal skips, at every file creation, each inode of the
    group freed in the last 30 s (an inode-table look-up apiece), so a run that creates
    thousands of segments right after another run's thousands were deleted pays for
    that clean-up (~0.25 ms per file here) - a cost of the benchmark, not of the tool.
    False where the file system has no such flag (then --inode-settle-s helps)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(struct.pack("i", 0))
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        value = struct.unpack("i", flags)[0] | _FS_TOPDIR_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", value))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/tmp/logvold-bench-runner")
    p.add_argument("--rotate-sizes", default="100Ki,1Mi,10Mi")
    p.add_argument("--settle-s", type=float, default=2.0, help="pause after sync between runs")
    p.add_argument(
        "--inode-settle-s",
        type=float,
        default=0.0,
        help="pause after a run that made (or deleted) many files: ext4 without a journal "
        "skips inodes freed in the last 30 s, one inode-table lookup each, so the next "
        "run's file creations pay for the last run's clean-up (31 removes that)",
    )
    p.add_argument(
        "--splice-rows",
        action="store_true",
        help="also run `logvold run -copy=splice` at each size (read is the default)",
    )
    p.add_argument(
        "--baseline-src",
        default="",
        metavar="DIR",
        help="another logvold source tree (e.g. `git archive main | tar -x -C DIR`): adds "
        "its `run` rows, started with PYTHONPATH=DIR, interleaved with this tree's",
    )
    p.add_argument(
        "--only",
        default="",
        metavar="WORDS",
        help="comma-separated words: run only the rows whose name holds one (and `cat >> file`)",
    )
    p.add_argument(
        "--logvold",
        default="",
        metavar="PATH",
        help="the logvold executable to measure (default: this venv's, an editable install)",
    )
    p.add_argument(
        "--kube-log-runner",
        default="",
        metavar="PATH",
        help="the kube-log-runner binary to compare with (default: on PATH, if it is the Go one)",
    )
    args = p.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"source-{args.size_mib}MiB.log"
    if not src.exists() or src.stat().st_size < args.size_mib << 20:
        t0 = time.perf_counter()
        n = make_source(src, args.size_mib << 20)
        print(f"generated {src} ({n} events) in {time.perf_counter() - t0:.1f}s", flush=True)
    size = src.stat().st_size
    sha = hashlib.sha256()
    with src.open("rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    source_sha = sha.hexdigest()
    total_events = sum(1 for _ in src.open("rb"))

    venv_bin = Path(sys.executable).parent
    logvold = str(venv_bin / "logvold") if (venv_bin / "logvold").exists() else "logvold"
    logvold = args.logvold or logvold
    precompile(logvold, args.baseline_src)
    sizes = [size.strip() for size in args.rotate_sizes.split(",") if size.strip()]
    tools: list[tuple[str, list[str] | None, bool]] = [("cat >> file", None, False)]
    # What one pipe hop alone costs (any runner that frames bytes needs it).
    tools.append(("cat | cat >> file (pipe hop)", ["PIPE"], False))
    klr = args.kube_log_runner or shutil.which("kube-log-runner")
    if klr and Path(klr).resolve().parent == venv_bin.resolve():
        klr = None  # our own alias, not the Go binary
    for rot in sizes:
        if klr:
            tools.append((f"kube-log-runner -log-file-size={rot}",
                          [klr, f"-log-file-size={rot}"], True))  # fmt: skip
        tools.append(
            (f"logvold run -log-file-size={rot}", [logvold, "run", f"-log-file-size={rot}"], True)
        )
        if args.splice_rows:
            tools.append(
                (
                    f"logvold run -copy=splice -log-file-size={rot}",
                    [logvold, "run", "-copy=splice", f"-log-file-size={rot}"],
                    True,
                )
            )
        if args.baseline_src:
            base = ["env", f"PYTHONPATH={Path(args.baseline_src).resolve()}", logvold, "run"]
            tools.append(
                (f"baseline run -log-file-size={rot}", [*base, f"-log-file-size={rot}"], True)
            )
    fsync_size = "1Mi" if "1Mi" in sizes else sizes[0]
    tools.append(
        (
            f"  -log-file-size={fsync_size} -flush-interval=1s",
            [logvold, "run", f"-log-file-size={fsync_size}", "-flush-interval=1s"],
            True,
        )
    )
    tools.append(("logvold run (no rotation: direct)", [logvold, "run"], False))
    if args.only:
        keep = [word.strip() for word in args.only.split(",") if word.strip()]
        tools = [t for t in tools if t[1] is None or any(w in t[0] for w in keep)]
    results = {name: Result(name) for name, _, _ in tools}
    many_files = False
    outs = work / "outs"
    shutil.rmtree(outs, ignore_errors=True)
    outs.mkdir()
    spread = spread_subdirectories(outs)
    print(f"output directories spread over block groups (TOPDIR): {spread}", flush=True)
    runs = 0
    for rnd in range(args.rounds):
        for name, prefix, events in tools:
            # A new directory per run (TOPDIR parent: likely another block group than
            # the runs deleted before it); the last run's files are deleted first, so
            # their page cache is free again for this run (as `cat >> file` finds it).
            for old in outs.iterdir():
                shutil.rmtree(old, ignore_errors=True)
            runs += 1
            out_dir = outs / f"run-{runs}"
            out_dir.mkdir()
            log = out_dir / "app.log"
            # No write-back or discard of the last run's blocks during this one.
            subprocess.run(["sync"], check=True)
            pause = max(args.settle_s, args.inode_settle_s if many_files else 0.0)
            if pause > _FRESH_MEMORY_S:
                time.sleep(pause - _FRESH_MEMORY_S)
                refresh_page_cache(src, outs / "scratch")
                pause = _FRESH_MEMORY_S
            time.sleep(pause)
            many_files = "-log-file-size" in name
            if prefix is None:
                elapsed, rss, rc, cpu = run_once(["cat", str(src)], log)
            elif prefix == ["PIPE"]:
                script = f'cat "{src}" | cat >> "{log}"'
                elapsed, rss, rc, cpu = run_once(["sh", "-c", script], None)
                cpu = 0.0  # the shell's own CPU, not the copy's: not shown
            else:
                argv = [*prefix, f"-log-file={log}", "cat", str(src)]
                elapsed, rss, rc, cpu = run_once(argv, None, quiet=name.startswith("kube"))
            if rc != 0:
                print(f"{name}: exit status {rc}", file=sys.stderr)
                return 1
            res = results[name]
            res.seconds.append(elapsed)
            res.cpu_s.append(cpu)
            res.peak_rss_kib = max(res.peak_rss_kib, rss)
            if rnd == 0:
                check_output(res, log, source_sha, events=events, klr=name.startswith("kube"))
            print(f"round {rnd + 1} {name}: {size / elapsed / 1e6:.0f} MB/s", flush=True)
    shutil.rmtree(outs, ignore_errors=True)

    cat_best = min(results["cat >> file"].seconds)
    cat_median = statistics.median(results["cat >> file"].seconds)
    print()
    print(
        f"{size / 2**20:.0f} MiB, {total_events} events, {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs"
    )
    header = (
        f"{'tool':40} {'MB/s best':>9} {'x cat':>6} {'MB/s med':>9} {'x cat':>6} "
        f"{'CPU s':>6} {'peak RSS MB':>11} {'segments':>8} {'identical':>9}  integrity"
    )
    print(header)
    print("-" * len(header))
    for res in results.values():
        best, median = min(res.seconds), statistics.median(res.seconds)
        integrity = ""
        if res.events_ok is not None:
            integrity = (
                f"events ok={res.events_ok}/{total_events} lost={res.lost} "
                f"dup={res.duplicated} corrupt={res.corrupt} "
                f"segments cut mid-event={res.segments_cut_mid_event}"
            )
        cpu_text = f"{min(res.cpu_s):.2f}" if any(res.cpu_s) else "-"
        print(
            f"{res.name:40} {size / best / 1e6:9.0f} {cat_best / best:6.2f} "
            f"{size / median / 1e6:9.0f} {cat_median / median:6.2f} {cpu_text:>6} "
            f"{res.peak_rss_kib / 1024:11.1f} {res.segments:8d} {res.identical!s:>9}  {integrity}"
        )
    if not klr:
        print(
            "kube-log-runner: not on PATH and no --kube-log-runner, no row. It is a Go "
            "binary of kubernetes/component-base with no release artifact."
        )
    for rot in sizes:
        ours_res = results.get(f"logvold run -log-file-size={rot}")
        if ours_res is None:
            continue  # left out by --only
        ratio = statistics.median(results["cat >> file"].seconds) / statistics.median(
            ours_res.seconds
        )
        target = "  (target >= 0.5x at 1Mi)" if rot == "1Mi" else ""
        line = f"logvold run -log-file-size={rot}: {ratio:.2f}x cat >> file (median){target}"
        klr_res = results.get(f"kube-log-runner -log-file-size={rot}")
        if klr_res is not None:
            theirs = statistics.median(klr_res.seconds)
            ours = statistics.median(ours_res.seconds)
            line += f", {theirs / ours:.2f}x kube-log-runner (target >= 1.0)"
        print(line)
    print(f"logvold: {logvold} ({install_kind(logvold)})")
    print_startup(logvold, args.baseline_src)
    return 0


def install_kind(logvold: str) -> str:
    """`editable` or `non-editable`: whether `logvold`'s interpreter imports this tree."""
    done = subprocess.run(
        [*python_of(logvold), "-c", "import logvold; print(logvold.__file__)"],
        capture_output=True, text=True, check=False, cwd="/",
    )  # fmt: skip
    where = done.stdout.strip()
    return "editable" if where.startswith(str(REPO)) else f"non-editable, {where or '?'}"


def python_of(logvold: str) -> list[str]:
    """The interpreter of a console script (its #! line), else this one."""
    path = shutil.which(logvold) or logvold
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError:
        return [sys.executable]
    return [first[2:].decode().strip()] if first.startswith(b"#!") else [sys.executable]


def precompile(logvold: str, baseline_src: str) -> None:
    """Byte-compile the logvold trees timed here (the environment may say not to write
    bytecode, and then every start would compile them again)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    trees = [REPO / "logvold"] + ([Path(baseline_src) / "logvold"] if baseline_src else [])
    for tree in trees:
        subprocess.run(
            [*python_of(logvold), "-m", "compileall", "-q", str(tree)],
            env=env, check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip


def print_startup(logvold: str, baseline_src: str = "", runs: int = 20) -> None:
    """Median wall time of `logvold run true` (no log file: spawn and wait) and of
    `logvold run -log-file=F -log-file-size=1Mi true` against `true` alone (and the
    baseline tree's, interleaved, with --baseline-src)."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "logvold-bench-startup.log"
    commands = {
        "true": ["true"],
        "logvold run true": [logvold, "run", "true"],
        "logvold run -log-file -log-file-size=1Mi true": [
            logvold, "run", f"-log-file={out}", "-log-file-size=1Mi", "true",
        ],
    }  # fmt: skip
    if baseline_src:
        base = ["env", f"PYTHONPATH={Path(baseline_src).resolve()}", logvold, "run"]
        commands["baseline run true"] = [*base, "true"]
        commands["baseline run -log-file -log-file-size=1Mi true"] = [
            *base, f"-log-file={out}", "-log-file-size=1Mi", "true",
        ]  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):  # interleaved: load changes hit every row alike
        for name, argv in commands.items():
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, cwd="/")
            times[name].append(time.perf_counter() - t0)
    print()
    print(f"start-up, median of {runs} runs (interleaved)")
    for name in commands:
        print(f"  {name:52} {statistics.median(times[name]) * 1000:7.1f} ms")
    out.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
