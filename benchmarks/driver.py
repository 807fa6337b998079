"""Throughput of `logvold driver` against a plain copy and against containerd's own
`file://` log URI, in one run.

    .venv/bin/python benchmarks/driver.py [--size-mib 256] [--rounds 3] [--dir /tmp/lvd-bench]
        [--pipe-only] [--compare-driver before=/path/to/other/.venv/bin/logvold-driver]

Part 1, the driver alone (no containerd): the driver is started exactly as the shim
starts it (fd 3/4/5, env) and `cat SOURCE` writes into its fd 3 pipe; the plain copy
is `cat SOURCE | cat > file` - what containerd's `file://` logger does with that pipe.
The source is typical log lines (40-300 B with quotes, tabs, backslashes and UTF-8).
Prints MB/s and the ratio to the plain copy for raw, cri and json-file, the driver's
CPU time and peak RSS, and integrity (the decoded output equals the source).

Part 2 (skipped with --pipe-only or without root): a busybox container (image built
from busybox-static, imported with `ctr image import`) runs `cat /data/SOURCE` with
each log URI in turn; the time is `ctr run --rm` from start to return (container
start and delete included; the row `empty container` shows that fixed part).
Prints MB/s (best and median), the ratio to `file://`, the driver's peak RSS, the
number of files, and integrity: the stream (segments, then the active file; cri /
json-file decoded back to the bytes written) must be byte-identical to the source.
Needs root; not run in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.runner import output_pieces  # noqa: E402
from tests.support.containerd import (  # noqa: E402
    IMAGE_NAME,
    Containerd,
    build_busybox_image,
    private_containerd,
    unavailable_reason,
)

DRIVER = Path(sys.executable).parent / "logvold-driver"


@dataclass
class Result:
    name: str
    seconds: list[float] = field(default_factory=list)
    peak_rss_kib: int = 0
    files: int = 0
    identical: bool | None = None


def decoded_blocks(pieces: list[Path], fmt: str) -> Iterator[bytes]:
    """The bytes the container wrote, rebuilt from the log files (stdout only here)."""
    for piece in pieces:
        with piece.open("rb") as f:
            if fmt in ("raw", "file"):
                while block := f.read(1 << 20):
                    yield block
                continue
            for line in f:
                if fmt == "cri":
                    _ts, _stream, tag, msg = line.rstrip(b"\n").split(b" ", 3)
                    yield msg + b"\n" if tag == b"F" else msg
                else:
                    yield json.loads(line)["log"].encode("utf-8", "surrogateescape")


def sha256(blocks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


class RssSampler:
    """Peak VmHWM of live processes whose argv contains `marker` (the driver of a run),
    or of the one process `pid` when it is known: reading every process's cmdline
    takes each one's mmap lock (access_remote_vm) 20 times a second, which cost a
    driver in a measured run up to 0.1 CPU s of lock spinning; /proc/PID/status does
    not."""

    def __init__(self, marker: str, pid: int | None = None) -> None:
        self.marker = marker.encode()
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            procs = [Path(f"/proc/{self.pid}")] if self.pid else Path("/proc").iterdir()
            for proc in procs:
                if not proc.name.isdigit():
                    continue
                try:
                    if not self.pid and self.marker not in (proc / "cmdline").read_bytes():
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                except (OSError, ValueError):
                    continue

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def run_container(cd: Containerd, log_uri: str, data: Path, cmd: str, cid: str) -> float:
    t0 = time.perf_counter()
    done = cd.ctr(
        "run", "--rm", "--log-uri", log_uri,
        "--mount", f"type=bind,src={data},dst=/data,options=rbind:ro",
        IMAGE_NAME, cid, "sh", "-c", cmd, timeout_s=600,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"ctr run ({log_uri}) failed: {done.stderr}\n{cd.log_tail()}")
    return elapsed


_WORDS = [
    b"GET", b"POST", b"/api/v1/namespaces/default/pods", b'"status":"ok"', b"\tat",
    b"C:\\Windows\\path", "caf\u00e9".encode(), "na\u00efve".encode(), b"level=info",
    b"msg=\"request done\"", b"latency_ms=12.5", b"user=alice", b"path=/a/b?c=1",
    b"0123456789abcdef", b"ERROR", b"trace_id=4bf92f3577b34da6",
]  # fmt: skip


_CJK = ["\u65e5\u672c\u8a9e".encode(), "\u30ed\u30b0".encode()]


def make_typical_source(path: Path, size_bytes: int, *, cjk: bool = False) -> None:
    """Log lines of 40-300 bytes: words with quotes, tabs, backslashes and UTF-8 (accented
    Latin; with `cjk`, also CJK words - text CPython holds as 2-byte characters)."""
    rng = random.Random(3)
    words = _WORDS + _CJK * 2 if cjk else _WORDS
    written = 0
    with path.open("wb") as out:
        while written < size_bytes:
            lines = []
            for _ in range(4096):
                line = b"%d " % written
                target = rng.randint(40, 300)
                while len(line) < target:
                    line += rng.choice(words) + b" "
                # Cut at a character boundary: valid UTF-8, like most programs' output.
                lines.append(line[:target].decode("utf-8", "ignore").encode() + b"\n")
            block = b"".join(lines)
            out.write(block)
            written += len(block)


def _labelled(spec: str) -> tuple[str, Path]:
    """--compare-driver LABEL=PATH -> (" LABEL", PATH)."""
    label, sep, path = spec.partition("=")
    if not sep or not Path(path).is_file():
        raise SystemExit(f"--compare-driver wants LABEL=PATH to a logvold-driver, not {spec!r}")
    return f" ({label})", Path(path)


def spawn_driver(
    argv: list[str], cid: str, driver: Path = DRIVER
) -> tuple[subprocess.Popen[bytes], int, int]:
    """The driver as containerd's shim starts it: (process, stdout pipe's write end,
    ready pipe's read end); its stderr pipe is closed at once (no output there)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def place_fds() -> None:
        high = [os.dup2(fd, 100 + i) for i, fd in enumerate((out_r, err_r, ready_w))]
        for target, fd in zip((3, 4, 5), high, strict=True):
            os.dup2(fd, target)
            os.close(fd)

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONTAINER_ID": cid,
           "CONTAINER_NAMESPACE": "bench"}  # fmt: skip
    proc = subprocess.Popen(
        [str(driver), *argv], env=env, stdin=subprocess.DEVNULL, close_fds=False,
        preexec_fn=place_fds,
    )  # fmt: skip
    for fd in (out_r, err_r, ready_w, err_w):
        os.close(fd)
    return proc, out_w, ready_r


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (read just before it is reaped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pipe_part(args: argparse.Namespace, work: Path, src: Path, source_sha: str) -> bool:
    """The driver fed by `cat SOURCE` through its fd 3 pipe vs `cat SOURCE | cat > file`."""
    size = src.stat().st_size
    out = work / "pipe-out"
    drivers = [("", DRIVER), *(_labelled(spec) for spec in args.compare_driver)]
    runs: dict[str, tuple[Path, str]] = {}  # row name -> (driver, format)
    for fmt in ("raw", "cri", "json-file"):
        for label, driver in drivers:
            runs[f"logvold driver{label} format={fmt} max-size={args.max_size}"] = (driver, fmt)
    names = ["cat SOURCE | cat > file (plain copy)", *runs]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, float] = {}
    rss: dict[str, int] = {}
    identical: dict[str, bool] = {}
    files: dict[str, int] = {}
    for rnd in range(args.rounds):
        for i, name in enumerate(names):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            subprocess.run(["sync"], check=True)
            time.sleep(args.settle_s)
            if i == 0:
                t0 = time.perf_counter()
                subprocess.run(["sh", "-c", f'cat "{src}" | cat > "{out}/file.log"'], check=True)
                seconds[name].append(time.perf_counter() - t0)
                if rnd == 0:
                    copied = sha256(decoded_blocks([out / "file.log"], "raw"))
                    identical[name] = copied == source_sha
                    files[name] = 1
                continue
            driver, fmt = runs[name]
            argv = ["root", str(out), "format", fmt, "max-size", args.max_size,
                    "max-file", "100000"]  # fmt: skip
            proc, pipe_w, ready_r = spawn_driver(argv, f"p{rnd}-{i}", driver)
            select.select([ready_r], [], [], 30)
            os.close(ready_r)
            cpu_at_ready = cpu_seconds(proc.pid)  # start-up excluded from the CPU column
            sampler = RssSampler(str(out), proc.pid)
            t0 = time.perf_counter()
            subprocess.run(["cat", str(src)], stdout=pipe_w, check=True)
            os.close(pipe_w)  # what the shim does on task delete: close, then SIGTERM
            proc.send_signal(signal.SIGTERM)
            # The driver's CPU time, read once it has exited but before it is reaped.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            cpu_s = cpu_seconds(proc.pid) - cpu_at_ready
            proc.wait()
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{name}: driver exit status {proc.returncode}")
            seconds[name].append(elapsed)
            cpu[name] = min(cpu.get(name, cpu_s), cpu_s)
            rss[name] = max(rss.get(name, 0), sampler.stop())
            if rnd == 0:
                log = out / "bench" / f"p0-{i}" / f"p0-{i}.log"
                pieces = output_pieces(log)
                files[name] = len(pieces)
                identical[name] = sha256(decoded_blocks(pieces, fmt)) == source_sha
            print(f"round {rnd + 1} {name}: {size / elapsed / 1e6:.0f} MB/s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    base = seconds[names[0]]
    print()
    print(
        f"Part 1: {size / 2**20:.0f} MiB of typical log lines through fd 3, "
        f"{args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    width = max(42, *map(len, names))
    header = (
        f"{'writer':{width}} {'MB/s best':>9} {'x copy':>6} {'MB/s med':>9} {'x copy':>6} "
        f"{'CPU s':>6} {'RSS MB':>6} {'files':>5} {'identical':>9}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        best, med = min(seconds[name]), statistics.median(seconds[name])
        cpu_text = f"{cpu[name]:.2f}" if name in cpu else "-"
        rss_text = f"{rss[name] / 1024:.0f}" if rss.get(name) else "-"
        print(
            f"{name:{width}} {size / best / 1e6:9.0f} {min(base) / best:6.2f} "
            f"{size / med / 1e6:9.0f} {statistics.median(base) / med:6.2f} {cpu_text:>6} "
            f"{rss_text:>6} {files[name]:5d} {'yes' if identical[name] else 'NO':>9}"
        )
    targets = {"raw": 0.9, "cri": 0.5, "json-file": 0.5}
    for name, (_driver, fmt) in runs.items():
        ratio = statistics.median(base) / statistics.median(seconds[name])
        print(f"{name}: {ratio:.2f}x the plain copy (median; target >= {targets[fmt]}x)")
    print()
    return all(identical.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/tmp/lvd-bench", help="short: holds containerd's socket")
    p.add_argument("--max-size", default="10Mi", help="the driver's rotation size")
    p.add_argument("--settle-s", type=float, default=1.0, help="pause after sync between runs")
    p.add_argument("--pipe-only", action="store_true", help="skip the containerd part")
    p.add_argument("--cjk", action="store_true", help="CJK words in the source lines too")
    p.add_argument(
        "--compare-driver", action="append", default=[], metavar="LABEL=PATH",
        help="part 1 also runs this logvold-driver (e.g. another checkout's venv), "
        "interleaved with this one in every round",
    )  # fmt: skip
    args = p.parse_args()
    work = Path(args.dir)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    src = data / ("source-cjk.log" if args.cjk else "source.log")
    if not src.exists() or src.stat().st_size < args.size_mib << 20:
        make_typical_source(src, args.size_mib << 20, cjk=args.cjk)
    source_sha = sha256(decoded_blocks([src], "raw"))
    ok = pipe_part(args, work, src, source_sha)
    if args.pipe_only:
        return 0 if ok else 1
    reason = unavailable_reason()
    if reason is not None:
        print(f"Part 2 (containerd) not run: {reason}")
        return 0 if ok else 1
    return containerd_part(args, work, src, source_sha) or (0 if ok else 1)


def containerd_part(args: argparse.Namespace, work: Path, src: Path, source_sha: str) -> int:
    """Part 2: a busybox container's `cat SOURCE` with each log URI, under a private containerd."""
    data = src.parent
    size = src.stat().st_size
    out = work / "out"

    def driver_uri(fmt: str) -> str:
        query = {"root": str(out), "format": fmt, "max-size": args.max_size, "max-file": "100000"}
        return f"binary://{DRIVER}?{urlencode(query, safe='/')}"

    # name, log URI maker, output format (None: no output to check)
    tools: list[tuple[str, Callable[[], str], str | None]] = [
        ("empty container (ctr run overhead)", lambda: f"file://{out}/empty.log", None),
        ("containerd file:// (raw, no rotation)", lambda: f"file://{out}/file.log", "file"),
        (f"logvold driver format=raw max-size={args.max_size}", lambda: driver_uri("raw"), "raw"),
        (f"logvold driver format=cri max-size={args.max_size}", lambda: driver_uri("cri"), "cri"),
        (
            f"logvold driver format=json-file max-size={args.max_size}",
            lambda: driver_uri("json-file"),
            "json-file",
        ),
    ]
    results = {name: Result(name) for name, _, _ in tools}
    image = build_busybox_image(work / "busybox.tar")
    with private_containerd(work / "cd", namespace="bench") as cd:
        cd.import_image(image)
        for rnd in range(args.rounds):
            for i, (name, uri, fmt) in enumerate(tools):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                subprocess.run(["sync"], check=True)
                time.sleep(args.settle_s)
                sampler = RssSampler(str(out)) if fmt not in (None, "file") else None
                cmd = "true" if fmt is None else f"cat /data/{src.name}"
                elapsed = run_container(cd, uri(), data, cmd, f"b{rnd}-{i}")
                res = results[name]
                res.seconds.append(elapsed)
                if sampler is not None:
                    res.peak_rss_kib = max(res.peak_rss_kib, sampler.stop())
                if rnd == 0 and fmt is not None:
                    log = out / "file.log" if fmt == "file" else out / "bench" / f"b0-{i}"
                    if fmt != "file":
                        log = log / f"b0-{i}.log"
                    pieces = output_pieces(log)
                    res.files = len(pieces)
                    res.identical = sha256(decoded_blocks(pieces, fmt)) == source_sha
                rate = "" if fmt is None else f"{size / elapsed / 1e6:.0f} MB/s"
                print(f"round {rnd + 1} {name}: {elapsed:.2f} s {rate}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / "cd", ignore_errors=True)  # containerd's root; the source stays

    base = results["containerd file:// (raw, no rotation)"]
    base_best, base_median = min(base.seconds), statistics.median(base.seconds)
    print()
    print(f"Part 2: {size / 2**20:.0f} MiB through one container's stdout, {args.rounds} rounds")
    header = (
        f"{'log URI':46} {'MB/s best':>9} {'x file':>6} {'MB/s med':>9} {'x file':>6} "
        f"{'driver RSS MB':>13} {'files':>5} {'identical':>9}"
    )
    print(header)
    print("-" * len(header))
    for res in results.values():
        best, median = min(res.seconds), statistics.median(res.seconds)
        if res.identical is None:
            print(
                f"{res.name:46} {'':>9} {'':>6} {'':>9} {'':>6} {'':>13} {'':>5} "
                f"{'':>9}  {best:.2f} s best"
            )
            continue
        rss = f"{res.peak_rss_kib / 1024:.0f}" if res.peak_rss_kib else "-"
        print(
            f"{res.name:46} {size / best / 1e6:9.0f} {base_best / best:6.2f} "
            f"{size / median / 1e6:9.0f} {base_median / median:6.2f} {rss:>13} "
            f"{res.files:5d} {'yes' if res.identical else 'NO':>9}"
        )
    return 0 if all(r.identical is not False for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
