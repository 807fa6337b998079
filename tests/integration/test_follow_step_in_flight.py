"""Readers that start while a rotation step is in flight: the rotator (real, in its own
process) has saved the step's intent and done part of it, and then stays there, paused
(SIGSTOP: a rotator descheduled on a loaded node) or killed (SIGKILL while paused: exactly
what a crash at that instant leaves until the next start recovers it).

Regression for followers of tests/integration/test_follow_retention.py that stepped back
(1197 after 1260, 1965 after 2004) on a loaded machine: a follower (re)connecting while
a kill -9 had left a `pieces` intent behind waited out its snapshot attempts, then served
the segments already written for the uncommitted step from the listing AND the same bytes
again from the active file after the committed offset.

Events are the checksummed, sequence-numbered ones of tests.support.format_writer (raw:
multi-line with a "\\n\\n" delimiter; json-file: entries split in several partial lines).
Checked for a plain read taken during the pause and for HTTP followers (with and without
tailLines) attached during it and followed to the last event after the step settles: every
event whole, each exactly once, in order, none missing but what retention removed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from logvold.core.policy import Format, LogPolicy
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.fileio.reader import ReadOptions, StreamReader
from logvold.fileio.state import StreamState, load_state
from tests.support.api_server import RunningServer
from tests.support.events import parse_event, split_raw
from tests.support.format_writer import encode_event

ROOT = Path(__file__).resolve().parents[2]
MAX_SIZE = 16 * 1024
SEED = 5

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@dataclass(frozen=True)
class Case:
    fmt: Format
    at: str
    nth: int
    budget: int = 0
    collapse: str = "never"
    intent: tuple[str, ...] = ()
    """The ops the intent the state file holds while paused may have (a segment is cut
    alone, `punch`, or in a batch, `pieces`, as the backlog at that instant says)."""


CASES = {
    "pieces-first": Case("raw", "segment", 1, intent=("pieces", "punch")),
    "pieces-third": Case("json-file", "segment", 3, intent=("pieces", "punch")),
    "trim-copy": Case("raw", "trim-copy", 1, budget=4 * MAX_SIZE, intent=("trim",)),
    "trim-renamed": Case("json-file", "trim-renamed", 1, budget=4 * MAX_SIZE, intent=("trim",)),
    "collapse": Case("json-file", "collapse", 1, collapse="always", intent=("collapse",)),
    "collapsed": Case("raw", "collapsed", 1, collapse="always", intent=("collapse",)),
}


class Stream:
    """The active file and a writer appending whole events to it in random-sized chunks
    (so a read may meet a partial event), O_APPEND like a container runtime."""

    def __init__(self, info: StreamInfo, delimiter: bytes) -> None:
        self.info = info
        self.delimiter = delimiter
        self.fd = os.open(info.active_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.rng = random.Random(SEED)
        self.next_seq = 0
        self.pending = b""
        self.ends: list[int] = []
        """Where each event ends in the bytes written (index = sequence number)."""
        self.written = 0

    def write(self, nbytes: int) -> None:
        while len(self.pending) < nbytes:
            ev = encode_event(
                self.info.policy.format, self.next_seq, SEED, delimiter=self.delimiter, max_len=700
            )
            self.pending += ev
            self.ends.append((self.ends[-1] if self.ends else 0) + len(ev))
            self.next_seq += 1
        cut = self.rng.randint(nbytes // 2, nbytes)
        self._write(self.pending[:cut])
        self.pending = self.pending[cut:]

    def _write(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.written += len(data)

    def last_whole(self) -> int:
        """The sequence number of the last event written whole."""
        return bisect.bisect_right(self.ends, self.written) - 1

    def flush(self) -> int:
        """Write what is pending (whole events only from here); the last sequence number."""
        self._write(self.pending)
        self.pending = b""
        return self.next_seq - 1

    def close(self) -> None:
        os.close(self.fd)


def rotator(tmp_path: Path, case: Case, *, at: str | None) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "tests.support.rotate_paused",
        "--dir",
        str(tmp_path),
        "--base",
        "app.log",
        "--format",
        case.fmt,
        "--delimiter",
        "\\n\\n" if case.fmt == "raw" else "\\n",
        "--max-size",
        str(MAX_SIZE),
        "--max-total-size",
        str(case.budget),
        "--collapse",
        case.collapse,
    ]
    if at is not None:
        args += ["--at", at, "--nth", str(case.nth)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)


def stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc/<pid>/stat)."""
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] == "T"
    return False


def bodies_of(chunks: Iterator[bytes], sep: bytes) -> list[bytes]:
    return list(split_raw(chunks, sep))


@dataclass
class Seen:
    seqs: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sessions: int = 0


async def follow(url: str, sep: bytes, seen: Seen, done: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        buf = b""
        while not done.is_set():
            try:
                chunk = await asyncio.wait_for(resp.content.readany(), 0.2)
            except TimeoutError:
                continue
            if not chunk:
                seen.problems.append("the follow ended")
                return
            buf += chunk
            parts = buf.split(sep)
            buf = parts.pop()
            for body in parts:
                seq = parse_event(body)
                if seq is None:
                    seen.problems.append(f"cut event {body[:60]!r}")
                elif seen.seqs and seq <= seen.seqs[-1]:
                    seen.problems.append(f"{seq} after {seen.seqs[-1]}")
                else:
                    seen.seqs.append(seq)


def check_run(name: str, seqs: list[int], last: int, kept_first: int) -> None:
    """Ascending whole events up to `last`; missing ones only those retention removed."""
    assert seqs, f"{name}: nothing served"
    assert seqs[-1] == last, (name, seqs[-1], last)
    missing = sorted(set(range(seqs[0], last + 1)) - set(seqs))
    wrongly = [m for m in missing if m >= kept_first]
    assert not wrongly, (name, "missing", wrongly[:10])


@pytest.mark.parametrize("resume", ["continue", "kill"])
@pytest.mark.parametrize("name", list(CASES))
def test_readers_during_a_step_in_flight_serve_every_event_once(
    tmp_path: Path, name: str, resume: str
) -> None:
    case = CASES[name]
    delimiter = b"\n\n" if case.fmt == "raw" else b"\n"
    info = StreamInfo(
        key=StreamKey("default", "writer", "app"),
        directory=tmp_path,
        base="app.log",
        volume="logs",
        policy=LogPolicy(
            format=case.fmt,
            delimiter=delimiter,
            max_size_bytes=MAX_SIZE,
            max_files=0,
            max_total_size_bytes=case.budget,
            collapse=case.collapse,  # type: ignore[arg-type]
        ),
    )
    stream = Stream(info, delimiter)
    registry = StreamRegistry()
    registry.put(info)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # 1. Write while the rotator runs, until it pauses inside the step.
        paused = rotator(tmp_path, case, at=case.at)
        procs.append(paused)
        deadline = time.monotonic() + 60
        while not stopped(paused.pid):
            assert paused.poll() is None, f"rotator exited ({paused.returncode})"
            assert time.monotonic() < deadline, "the rotator never reached the pause point"
            stream.write(3000)
            time.sleep(0.01)
        if resume == "kill":
            paused.kill()
            paused.wait(10)
        state = load_state(tmp_path, "app.log")
        assert state is not None and state.intent is not None
        assert state.intent.op in case.intent, state.intent
        written_so_far = stream.last_whole()

        # 2. A plain read now: what it serves is whole, once, in order, with no gap.
        plain = StreamReader(info, ReadOptions(), busy_limit_s=0.5)
        plain_problems = plain_read_problems(
            [parse_event(b) for b in bodies_of(plain.read_all(), delimiter)],
            # A read without follow waits busy_limit_s for a punch or a collapse in flight
            # (the active file's layout is undecided), then ends with what is committed.
            # (No retention in these cases: a logical offset is a byte count written.)
            bisect.bisect_right(stream.ends, state.committed_offset) - 1
            if state.intent.op in ("collapse", "punch")
            else written_so_far,
            written_so_far,
        )

        # 3. Followers attached during the step, then the step settles and more is written.
        sep = delimiter
        with RunningServer(registry) as srv:
            url = srv.base + "/logs/default/writer/app?follow=true"

            async def run() -> tuple[list[Seen], int]:
                done = asyncio.Event()
                followers = [Seen(), Seen()]
                tasks = [
                    asyncio.create_task(follow(url, sep, followers[0], done)),
                    asyncio.create_task(follow(url + "&tailLines=5000", sep, followers[1], done)),
                ]
                until = time.monotonic() + 60
                while min(len(f.seqs) for f in followers) == 0 and time.monotonic() < until:
                    await asyncio.sleep(0.05)
                if resume == "continue":
                    paused.send_signal(signal.SIGCONT)
                else:
                    procs.append(rotator(tmp_path, case, at=None))  # recovers, then rotates
                for _ in range(40):
                    stream.write(4000)
                    await asyncio.sleep(0.01)
                last = stream.flush()
                until = time.monotonic() + 60
                while time.monotonic() < until and any(
                    (f.seqs[-1] if f.seqs else -1) < last and not f.problems for f in followers
                ):
                    await asyncio.sleep(0.05)
                done.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
                return followers, last

            followers, last = asyncio.run(run())
        # The rotator settled the step: no intent left behind.
        settled = _wait_settled(tmp_path)
        assert settled.intent is None, settled
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        stream.close()
    kept = [parse_event(b) for b in bodies_of(StreamReader(info, ReadOptions()).read_all(), sep)]
    assert None not in kept and kept and kept[-1] == last
    kept_first = kept[0]
    assert kept_first is not None
    for label, f in zip(("follow", "follow+tailLines"), followers, strict=True):
        assert not f.problems, (label, f.problems[:5], _dups_and_gaps(f.seqs), plain_problems)
        check_run(label, f.seqs, last, kept_first)
    assert not plain_problems, plain_problems


def plain_read_problems(seqs: list[int | None], least: int, most: int) -> list[str]:
    """What is wrong with a read without follow that had to end between event `least`
    and event `most`: cut events, duplicates, gaps."""
    problems = [f"{seqs.count(None)} cut events"] if None in seqs else []
    whole = [s for s in seqs if s is not None]
    if not whole:
        return [*problems, "nothing served"]
    if whole != list(range(whole[0], whole[-1] + 1)):
        problems.append("plain read: " + _dups_and_gaps(whole))
    if not least <= whole[-1] <= most:
        problems.append(f"plain read ends at {whole[-1]}, not in [{least}, {most}]")
    return problems


def _dups_and_gaps(seqs: list[int]) -> str:
    back = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
    gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b > a + 1]
    return f"{len(seqs)} events, steps back {back[:5]}, gaps {gaps[:5]}"


def _wait_settled(directory: Path) -> StreamState:
    deadline = time.monotonic() + 30
    while True:
        state = load_state(directory, "app.log")
        assert state is not None
        if state.intent is None or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


@pytest.mark.parametrize(("tail", "at"), [(200, 1), (400, 150), (600, 300)])
def test_a_collapse_during_a_tail_scan_of_the_active_file_is_planned_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: int, at: int
) -> None:
    """tailLines on an O_APPEND stream with collapse: the backwards scan of a large active
    file reads it by physical offsets; a rotation that cuts, punches and collapses it
    between two blocks of the scan (run from a wrapper around the reader's scan: a
    test-only seam, the rotator and the files are real) moved every byte under it. The
    scan then found too few events in the active file and started the follower hundreds
    of events early. Now the start is planned again on the new layout: exactly `tail`
    events, then every new one, each once."""
    from logvold.fileio.reader_events import reverse_events
    from logvold.fileio.rotator import StreamRotator

    max_size = 64 * 1024
    info = StreamInfo(
        key=StreamKey("default", "writer", "app"),
        directory=tmp_path,
        base="app.log",
        volume="logs",
        policy=LogPolicy(
            format="raw",
            delimiter=b"\n\n",
            max_size_bytes=max_size,
            max_files=0,
            collapse="always",
        ),
    )
    stream = Stream(info, b"\n\n")
    rot = StreamRotator(info, collapse_min_bytes=max_size)
    try:
        stream.write(150_000)
        assert rot.rotate("size") is not None
        stream.write(250_000)  # the live part: several 64 KiB scan blocks
        written = stream.last_whole()
        scanned = [0]

        def racing_scan(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for item in reverse_events(*args, **kwargs):
                yield item
                scanned[0] += 1
                if scanned[0] == at:
                    assert rot.rotate("size") is not None  # cut, punch, collapse

        monkeypatch.setattr("logvold.fileio.reader.reverse_events", racing_scan)
        reader = StreamReader(info, ReadOptions(follow=True, tail_events=tail), poll_interval_s=0.0)
        chunks = reader.chunks()
        out = [next(chunks) for _ in range(200)]
        monkeypatch.undo()
        state = load_state(tmp_path, "app.log")
        assert state is not None and state.collapsed_bytes > 0 and scanned[0] >= at
        stream.write(20_000)
        last = stream.flush()
        idle = 0
        while idle < 3:  # caught up: three idle steps in a row
            chunk = next(chunks)
            idle = 0 if chunk or reader.more_ready else idle + 1
            reader.more_ready = False
            out.append(chunk)
    finally:
        stream.close()
    seqs = [parse_event(b) for b in split_raw(out, b"\n\n")]
    assert None not in seqs
    assert seqs == list(range(max(0, written - tail + 1), last + 1)), _dups_and_gaps(
        [s for s in seqs if s is not None]
    )


@pytest.mark.parametrize(
    ("fmt", "tail", "collapse", "first_rotation"),
    [
        ("raw", None, "never", False),
        ("json-file", 5000, "never", False),
        ("raw", 5000, "always", False),
        ("raw", 0, "always", True),
        ("json-file", 2, "always", True),
    ],
)
def test_a_rotation_between_the_snapshot_and_the_start_loses_and_repeats_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: Format,
    tail: int | None,
    collapse: str,
    first_rotation: bool,
) -> None:
    """A whole rotation (cut, commit, punch, maybe collapse) runs right after a starting
    follower read the state for its snapshot (from a wrapper around the reader's state
    read: a test-only seam; rotator and files are real). Found by
    test_follow_interleavings.py: the cursor then took the hole the punch left at the
    snapshot's committed offset for lost bytes and jumped past it (the events were in
    the new segments: lost), and a tail planned before a stream's first rotation took
    the collapsed file's physical offsets for logical ones (old events and a cut one)."""
    from logvold.fileio.rotator import StreamRotator

    delimiter = b"\n\n" if fmt == "raw" else b"\n"
    max_size = 2048
    info = StreamInfo(
        key=StreamKey("default", "writer", "app"),
        directory=tmp_path,
        base="app.log",
        volume="logs",
        policy=LogPolicy(
            format=fmt,
            delimiter=delimiter,
            max_size_bytes=max_size,
            max_files=0,
            collapse=collapse,  # type: ignore[arg-type]
        ),
    )
    stream = Stream(info, delimiter)
    rot = StreamRotator(info, collapse_min_bytes=max_size)
    try:
        if not first_rotation:
            stream.write(4000)
            assert rot.rotate("size") is not None
        stream.write(12_000)
        stream.flush()
        written = stream.next_seq - 1
        reads = [0]
        state_of = StreamReader.current_state

        def racing_state(reader: StreamReader) -> StreamState | None:
            state = state_of(reader)
            reads[0] += 1
            if reads[0] == 2:  # the snapshot's second look: consistent, then this
                assert rot.rotate("size") is not None
            return state

        monkeypatch.setattr(StreamReader, "current_state", racing_state)
        reader = StreamReader(info, ReadOptions(follow=True, tail_events=tail), poll_interval_s=0.0)
        chunks = reader.chunks()
        out = [next(chunks)]
        monkeypatch.undo()
        state = load_state(tmp_path, "app.log")
        assert state is not None and reads[0] >= 2
        assert state.collapsed_bytes > 0 if collapse == "always" else True
        stream.write(3000)
        last = stream.flush()
        idle = 0
        while idle < 3:
            chunk = next(chunks)
            idle = 0 if chunk or reader.more_ready else idle + 1
            reader.more_ready = False
            out.append(chunk)
    finally:
        stream.close()
    seqs = [parse_event(b) for b in split_raw(out, delimiter)]
    assert None not in seqs, "a cut event"
    first = 0 if tail is None else max(0, written - tail + 1)
    assert seqs == list(range(first, last + 1)), _dups_and_gaps([s for s in seqs if s is not None])
