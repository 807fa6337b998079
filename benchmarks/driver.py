"""Throughput of a container writing through `logvold driver` against containerd's own
`file://` log URI, in one run, on a private containerd + runc.

    .venv/bin/python benchmarks/driver.py [--size-mib 256] [--rounds 3] [--dir /tmp/lvd-bench]

A busybox container (image built from busybox-static, imported with `ctr image
import`) runs `cat /data/source.log` - checksummed, sequence-numbered events - with
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
import shutil
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

from benchmarks.runner import make_source, output_pieces  # noqa: E402
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
    """Peak VmHWM of live processes whose argv contains `marker` (the driver of a run)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker.encode()
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if self.marker not in (proc / "cmdline").read_bytes():
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/tmp/lvd-bench", help="short: holds containerd's socket")
    p.add_argument("--max-size", default="10Mi", help="the driver's rotation size")
    p.add_argument("--settle-s", type=float, default=1.0, help="pause after sync between runs")
    args = p.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    work = Path(args.dir)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    src = data / "source.log"
    if not src.exists() or src.stat().st_size < args.size_mib << 20:
        make_source(src, args.size_mib << 20)
    size = src.stat().st_size
    source_sha = sha256(decoded_blocks([src], "raw"))
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
                cmd = "true" if fmt is None else "cat /data/source.log"
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
    print(f"{size / 2**20:.0f} MiB through one container's stdout, {args.rounds} rounds")
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
