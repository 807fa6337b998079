"""kill -9 the rotator at random instants, recover, and check every event is there once.

A writer process appends checksummed multi-line events the whole time; a child
process rotates (punch, collapse), enforces retention and compresses in a
tight loop and is SIGKILLed at a random instant; the parent then runs
`recover()` and reads the stream back (segments + active file from the
committed offset). Prints a table: kills, events, lost, dup, split.

    python -m benchmarks.rotator_crash --kills 200
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from logvold.core.streams import StreamInfo
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from tests.integration.rotator_kit import ROOT, leftovers, make_info, start_writer, whole_stream
from tests.support.events import split_raw, verify

DELIM = b"\n\n"
COLLAPSE_MIN = 16 * 1024


def stream_info(directory: Path) -> StreamInfo:
    """The stream under test, with the same policy in the child and in every recovery."""
    return make_info(
        directory,
        max_size_bytes=32 * 1024,
        max_files=0,
        max_total_size_bytes=1024 * 1024,
        delimiter=DELIM,
        compress="gzip",
        collapse="auto",
    )


@dataclass
class CrashStats:
    mode: str
    kills: int = 0
    rotations: int = 0
    collapses: int = 0
    recovered_intents: dict[str, int] = field(default_factory=dict)
    events: int = 0
    lost: int = 0
    dup: int = 0
    split: int = 0
    leftovers: int = 0
    max_allocated: int = 0
    """Largest allocated size of the active file seen after a recovery (mostly live data)."""
    allocated: int = 0
    """Allocated bytes of the active file at the end (after the final rotation)."""
    apparent: int = 0
    written: int = 0
    """Events the writer completed (last sequence number seen + 1)."""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.dup or self.split or self.leftovers or self.failures)


def child(directory: Path, seed: int) -> None:
    """Rotate forever; one line per committed rotation on stdout."""
    rng = random.Random(seed)
    rot = StreamRotator(stream_info(directory), None, collapse_min_bytes=COLLAPSE_MIN)
    rot.recover()
    print("ready", flush=True)
    n = 0
    while True:
        res = rot.rotate("size")
        if res is not None:
            print(f"r {res.collapsed_bytes}", flush=True)
        n += 1
        rot.enforce_retention()
        if n % 2 == 0:
            rot.compress_pending()
        time.sleep(rng.random() * 0.004)


def _check(directory: Path, stats: CrashStats) -> None:
    report = verify(
        split_raw([whole_stream(directory, delimiter=DELIM)], DELIM), allow_missing_prefix=True
    )
    stats.events = report.seen
    stats.written = max(stats.written, (report.last_seq or -1) + 1)
    stats.lost += len(report.lost)
    stats.dup += len(report.duplicated)
    stats.split += len(report.corrupt) + report.out_of_order
    if not report.ok:
        stats.failures.append(f"after kill {stats.kills}: {report.summary()}")
    left = leftovers(directory)
    stats.leftovers += len(left)
    state = load_state(directory, "app.log")
    if state is not None and state.intent is not None:
        stats.failures.append(f"after kill {stats.kills}: intent left {state.intent}")
    st = (directory / "app.log").stat()
    stats.max_allocated = max(stats.max_allocated, st.st_blocks * 512)
    stats.allocated = st.st_blocks * 512
    stats.apparent = st.st_size


def run(
    kills: int,
    *,
    mode: str = "append",
    seed: int = 1,
    directory: Path | None = None,
    max_delay_s: float = 0.15,
    rotation_first: bool = False,
    rotation_timeout_s: float = 120.0,
) -> CrashStats:
    """`kills` SIGKILLs of a rotating child with a live `mode` writer; verify after each.

    With `rotation_first`, every other kill waits (up to `rotation_timeout_s`) until the
    child has committed a rotation before its random delay starts: on a loaded machine a
    fixed delay can pass before the child runs at all, and a run with no rotation proves
    nothing about crashes during one. The other kills keep the plain random instant
    (right after recovery included).
    """
    rng = random.Random(seed)
    stats = CrashStats(mode)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        d = Path(tmp)
        writer = start_writer(
            d / "app.log", mode=mode, count=10**8, rate=400, max_chunk=8192, seed=seed
        )
        try:
            _wait_for_file(d / "app.log", writer, timeout_s=rotation_timeout_s)
            for i in range(kills):
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.rotator_crash",
                        "--child",
                        str(d),
                        "--seed",
                        str(seed * 1000 + i),
                    ],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    bufsize=0,  # unbuffered: select() then sees every line the child printed
                )
                assert proc.stdout is not None
                proc.stdout.readline()  # "ready": recovery in the child is done
                lines: list[str] = []
                if rotation_first and i % 2 == 0:
                    lines.append(_first_rotation(proc, rotation_timeout_s))
                time.sleep(rng.random() * max_delay_s)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                for line in lines + proc.stdout.read().decode().splitlines():
                    stats.rotations += 1
                    stats.collapses += line.split()[1] != "0"
                proc.stdout.close()
                stats.kills += 1
                intent = (load_state(d, "app.log") or _NoState).intent
                if intent is not None:
                    op = intent.op
                    stats.recovered_intents[op] = stats.recovered_intents.get(op, 0) + 1
                StreamRotator(stream_info(d), None, collapse_min_bytes=COLLAPSE_MIN).recover()
                _check(d, stats)
        finally:
            writer.kill()
            writer.wait()
        rot = StreamRotator(stream_info(d), None, collapse_min_bytes=COLLAPSE_MIN)
        rot.recover()
        rot.rotate("final")
        _check(d, stats)
    return stats


def _wait_for_file(path: Path, writer: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until the writer has written its first bytes: on a loaded machine its start can take
    longer than a child's, and every check after a kill reads the active file."""
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.stat().st_size > 0):
        if writer.poll() is not None:
            raise AssertionError(f"writer exited {writer.returncode} before writing")
        if time.monotonic() > deadline:
            raise AssertionError(f"writer wrote nothing to {path} within {timeout_s} s")
        time.sleep(0.05)


def _first_rotation(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The child's first "r ..." line (a committed rotation), waited for with a deadline."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if ready:
            line = proc.stdout.readline().decode()
            if not line:
                raise AssertionError(f"rotating child exited {proc.wait()} before a rotation")
            return line.strip()
    proc.kill()
    raise AssertionError(f"rotating child committed no rotation within {timeout_s} s")


class _NoState:
    intent = None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(Path(args.child), args.seed)
        return 0
    rows = []
    for mode in ("append", "offset"):
        t0 = time.monotonic()
        s = run(args.kills // 2, mode=mode, seed=args.seed, max_delay_s=0.4)
        rows.append((s, time.monotonic() - t0))
    print(
        f"{'writer':8} {'kills':>5} {'rotations':>9} {'collapses':>9} {'written':>7} "
        f"{'kept':>6} {'lost':>4} {'dup':>4} {'split':>5} {'alloc':>6} {'maxalloc':>8} "
        f"{'apparent':>10} {'recovered intents':>20} {'secs':>5}"
    )
    for s, secs in rows:
        intents = ",".join(f"{k}:{v}" for k, v in sorted(s.recovered_intents.items())) or "-"
        print(
            f"{s.mode:8} {s.kills:5} {s.rotations:9} {s.collapses:9} {s.written:7} "
            f"{s.events:6} {s.lost:4} {s.dup:4} {s.split:5} {s.allocated:6} "
            f"{s.max_allocated:8} {s.apparent:10} {intents:>20} {secs:5.1f}"
        )
        for f in s.failures[:5]:
            print("  FAIL", f)
    return 0 if all(s.ok for s, _ in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
