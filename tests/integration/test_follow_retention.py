"""follow=true over HTTP on a stream that retention truncates to a small byte budget while
the rotator process is killed -9 over and over (regression for a follower that stepped
back or got a cut event when a collapse, a segment trim or a drop of the active file's
head raced its read).

A writer process appends checksummed events at a high rate; the real rotator runs in
its own process (tests.support.rotate_loop) with maxTotalSize = 3 x maxSize, so it trims
the oldest segment's head, deletes segments, and (after each kill, while the file grows
unrotated) drops the active file's head. Three followers hold sessions of random length
and reconnect with tailLines. Checked: within a session every event is whole and each
sequence number is higher than the one before; every event a follower did not get (in
a session or between sessions) is one retention removed, i.e. older than everything
kept on disk at the end; the followers end on the last event written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from logvold.core.policy import Format, LogPolicy
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.fileio.reader import ReadOptions, StreamReader
from tests.support.api_server import serving
from tests.support.events import parse_event, split_raw

ROOT = Path(__file__).resolve().parents[2]
MAX_SIZE = 64 * 1024
BUDGET = 3 * MAX_SIZE
RATE = 500_000
TOTAL = 5 * 2**20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@dataclass
class Follower:
    name: str
    last_seen: int = -1
    sessions: int = 0
    missed: dict[int, str] = field(default_factory=dict)
    """Sequence numbers skipped, inside a session or between two (-> where)."""
    problems: list[str] = field(default_factory=list)


async def follow(
    url: str, sep: bytes, f: Follower, rng: random.Random, done: asyncio.Event
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not done.is_set():
            # A tail longer than the budget holds: a new session starts at or before the
            # event after the last one seen unless retention removed that event meanwhile.
            query = "follow=true" if f.last_seen < 0 else "follow=true&tailLines=5000"
            until = time.monotonic() + rng.uniform(0.3, 2.5)
            async with http.get(f"{url}?{query}") as resp:
                assert resp.status == 200, await resp.text()
                f.sessions += 1
                buf = b""
                previous: int | None = None
                while time.monotonic() < until and not done.is_set():
                    try:
                        chunk = await asyncio.wait_for(resp.content.readany(), 0.2)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    buf += chunk
                    parts = buf.split(sep)
                    buf = parts.pop()
                    for body in parts:
                        seq = parse_event(body)
                        if seq is None:
                            f.problems.append(f"session {f.sessions}: cut event {body[:60]!r}")
                            continue
                        if previous is not None and seq <= previous:
                            f.problems.append(f"session {f.sessions}: {seq} after {previous}")
                        where = "within" if previous is not None else "between"
                        for m in range(max(previous or -1, f.last_seen) + 1, seq):
                            f.missed[m] = f"{where} session {f.sessions}"
                        previous = seq
                        f.last_seen = max(f.last_seen, seq)


def kept_on_disk(info: StreamInfo, sep: bytes) -> list[int]:
    reader = StreamReader(info, ReadOptions())
    bodies = list(split_raw(reader.read_all(), sep))
    seqs = [parse_event(b) for b in bodies]
    assert None not in seqs, "a cut event on disk"
    return [s for s in seqs if s is not None]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fmt", "collapse", "compress"),
    [
        ("json-file", "auto", "none"),
        ("cri", "always", "gzip"),
        ("raw", "never", "none"),
    ],
)
async def test_followers_of_a_budget_truncated_stream_never_step_back(
    tmp_path: Path, fmt: Format, collapse: str, compress: str
) -> None:
    delimiter = b"\n\n" if fmt == "raw" else b"\n"
    sep = delimiter
    info = StreamInfo(
        key=StreamKey("default", "writer", "app"),
        directory=tmp_path,
        base="app.log",
        volume="logs",
        policy=LogPolicy(
            format=fmt,
            delimiter=delimiter,
            max_size_bytes=MAX_SIZE,
            max_files=0,
            max_total_size_bytes=BUDGET,
        ),
    )
    info.active_path.touch()
    registry = StreamRegistry()
    registry.put(info)
    rng = random.Random(7)
    steps: list[dict[str, object]] = []
    kills = 0

    def start_rotator() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.rotate_loop",
                "--dir",
                str(tmp_path),
                "--base",
                "app.log",
                "--format",
                fmt,
                "--delimiter",
                delimiter.decode("unicode_escape").encode("unicode_escape").decode(),
                "--max-size",
                str(MAX_SIZE),
                "--max-total-size",
                str(BUDGET),
                "--compress",
                compress,
                "--collapse",
                collapse,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )

    def collect(proc: subprocess.Popen[bytes]) -> None:
        out, _ = proc.communicate()
        steps.extend(json.loads(line) for line in out.splitlines())

    async with serving(registry) as srv:
        url = srv.base + "/logs/default/writer/app"

        async def run() -> list[Follower]:
            nonlocal kills
            done = asyncio.Event()
            followers = [Follower(f"f{i}") for i in range(3)]
            tasks = [
                asyncio.create_task(follow(url, sep, f, random.Random(i), done))
                for i, f in enumerate(followers)
            ]
            writer = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.format_writer",
                "--path",
                str(info.active_path),
                "--format",
                fmt,
                "--mode",
                "append",
                "--bytes",
                str(TOTAL),
                "--rate",
                str(RATE),
                "--max-len",
                "3000",
                "--report",
                str(tmp_path / "report.json"),
                cwd=ROOT,
            )
            while writer.returncode is None:
                rotator = start_rotator()
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                rotator.send_signal(signal.SIGKILL)
                await asyncio.to_thread(collect, rotator)
                kills += 1
                # Down for a while: the file grows unrotated, past the budget.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writer.wait(), rng.uniform(0.2, 0.8))
            last = json.loads((tmp_path / "report.json").read_text())["events"] - 1
            rotator = start_rotator()  # a last pass that is not killed
            deadline = time.monotonic() + 60
            while min(f.last_seen for f in followers) < last and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            done.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            rotator.terminate()
            await asyncio.to_thread(collect, rotator)
            return followers

        followers = await run()

    last = json.loads((tmp_path / "report.json").read_text())["events"] - 1
    ops = [s["op"] for s in steps]
    counts = {op: ops.count(op) for op in set(ops)}
    assert kills >= 5 and counts.get("drop", 0) >= 1 and counts.get("delete", 0) >= 3, counts
    if compress == "none":  # compressed segments are kept whole, never trimmed
        assert counts.get("trim", 0) >= 3, counts
    else:
        assert counts.get("compress", 0) >= 3, counts
    kept = kept_on_disk(info, sep)
    assert kept == list(range(kept[0], last + 1)), "disk keeps a contiguous newest run"
    print(
        f"\n{fmt}: {last + 1} events, {kills} kills, steps {counts}, kept "
        f"[{kept[0]}, {last}]; followers: "
        + ", ".join(
            f"{f.name} {f.sessions} sessions, {len(f.problems)} problems, "
            f"{len(f.missed)} missed (all removed)"
            for f in followers
        )
    )
    for f in followers:
        assert not f.problems, (f.name, f.problems[:5])
        assert f.last_seen == last, (f.name, f.last_seen, last)
        wrongly_missed = sorted((s, w) for s, w in f.missed.items() if s >= kept[0])
        assert not wrongly_missed, (f.name, wrongly_missed[:10])
        assert f.sessions >= 3
