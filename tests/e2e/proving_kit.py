"""Pieces of the proving-ground scenario (test_proving_ground.py): the daemon process, /metrics
snapshots, and the follower process (`python -m tests.e2e.proving_kit follow ...`)
that holds three `follow=true` connections to one stream and checks every event it
receives, session by session.

A follower *session* is one HTTP response. Within a session the follower must receive
a contiguous run of whole events (each CRC-intact, seq = previous + 1: no loss, no
duplicate, no split, in order). When the connection ends (the daemon was killed or
stopped) the follower reconnects with `tailLines=K`; that session must start at or
before the event after the last one it had (the overlap, which it skips by sequence
number), so the sessions together cover the stream without a gap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.events import parse_event

ROOT = Path(__file__).resolve().parents[2]
MAX_TAIL = 10_000_000
"""The server's tailLines limit: asking for it returns the whole stream."""


# ---- the daemon -----------------------------------------------------------------------


class ServeProcess:
    """One lifetime of `logvold serve` (stdout+stderr to a file)."""

    def __init__(self, config: Path, log_path: Path, *, extra: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "logvold",
                "serve",
                "--config",
                str(config),
                "--log-format",
                "json",
                *extra,
            ],
            stdout=self._log,
            stderr=self._log,
            env=env,
            cwd=ROOT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while "logvold serving" not in self.log_text():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon not serving after {timeout_s} s")
            time.sleep(0.02)

    def kill9(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(10)
        self._log.close()
        return code

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric_sum(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    )


# ---- followers ------------------------------------------------------------------------


@dataclass
class Session:
    """One HTTP response of a follower."""

    first: int | None = None
    last: int | None = None
    events: int = 0
    """Events received in this session (overlap included)."""
    new_events: int = 0
    """Events after the last one an earlier session had."""
    gap_before: int = 0
    """Events missing between the previous session's last and this one's first."""
    discontinuities: list[tuple[int, int]] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    trailing_partial: int = 0
    """Bytes of an incomplete event when the connection broke (a kill): not an event."""
    end: str = ""


@dataclass
class FollowerReport:
    name: str
    sessions: list[Session] = field(default_factory=list)
    last_seen: int = -1
    connect_failures: int = 0
    probes: int = 0
    """Reconnects whose tail did not reach back to the last event seen (retried)."""


async def follow_one(
    url: str, fmt: str, report: FollowerReport, tail_lines: int, stop: asyncio.Event
) -> None:
    import aiohttp

    sep = b"\n\n" if fmt == "raw" else b"\n"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        k = tail_lines
        while not stop.is_set():
            query = "follow=true" if report.last_seen < 0 else f"follow=true&tailLines={k}"
            session = Session()
            buf = b""
            try:
                async with http.get(f"{url}?{query}") as resp:
                    if resp.status != 200:
                        report.connect_failures += 1
                        await asyncio.sleep(0.1)
                        continue
                    report.sessions.append(session)
                    async for chunk in resp.content.iter_any():
                        buf += chunk
                        parts = buf.split(sep)
                        buf = parts.pop()
                        for body in parts:
                            if session.first is None and _no_overlap(body, report, k):
                                # The follower lagged further behind than k events: this
                                # response cannot continue its run. Not a session: retry
                                # with a larger tail (the largest is the whole stream).
                                report.sessions.pop()
                                report.probes += 1
                                k = min(k * 4, MAX_TAIL)
                                raise _Retry
                            _take(body, session, report)
                    session.end = "eof"
            except _Retry:
                continue
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                if session in report.sessions:
                    session.end = type(e).__name__
                else:
                    report.connect_failures += 1
                    await asyncio.sleep(0.05)
            session.trailing_partial = len(buf)
            if session.first is not None:
                k = tail_lines


class _Retry(Exception):
    pass


def _no_overlap(body: bytes, report: FollowerReport, k: int) -> bool:
    seq = parse_event(body)
    return report.last_seen >= 0 and seq is not None and seq > report.last_seen + 1 and k < MAX_TAIL


def _take(body: bytes, session: Session, report: FollowerReport) -> None:
    seq = parse_event(body)
    if seq is None:
        session.corrupt.append(body[:100].decode("latin-1"))
        return
    if session.first is None:
        session.first = seq
        session.gap_before = max(0, seq - report.last_seen - 1) if report.last_seen >= 0 else 0
    elif session.last is not None and seq != session.last + 1:
        session.discontinuities.append((session.last, seq))
    session.last = seq
    session.events += 1
    if seq > report.last_seen:
        session.new_events += 1
        report.last_seen = seq


async def follow_main(url: str, fmt: str, n: int, tail_lines: int, out: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reports = [FollowerReport(f"f{i}") for i in range(n)]
    tasks = [asyncio.create_task(follow_one(url, fmt, r, tail_lines, stop)) for r in reports]
    progress = out.with_suffix(".progress")
    while not stop.is_set():
        _write_json(progress, [r.last_seen for r in reports])
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for r in reports:
        if r.sessions and not r.sessions[-1].end:
            r.sessions[-1].end = "stopped"
    _write_json(out, [asdict(r) for r in reports])


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def start_followers(
    url: str, fmt: str, n: int, tail_lines: int, out: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.proving_kit",
            "follow",
            "--url",
            url,
            "--format",
            fmt,
            "-n",
            str(n),
            "--tail-lines",
            str(tail_lines),
            "--out",
            str(out),
        ],
        env=env,
        cwd=ROOT,
    )


def read_progress(out: Path) -> list[int]:
    try:
        return list(json.loads(out.with_suffix(".progress").read_text()))
    except (OSError, ValueError):
        return []


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["follow"])
    p.add_argument("--url", required=True)
    p.add_argument("--format", required=True)
    p.add_argument("-n", type=int, default=3)
    p.add_argument("--tail-lines", type=int, default=100_000)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    # The entry point of a separate follower process (started by the e2e test), not a
    # test: asyncio.run is how a program runs its loop, so pytest-asyncio has no part here.
    asyncio.run(follow_main(a.url, a.format, a.n, a.tail_lines, Path(a.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
