"""Followers against the real rotator, interleaved at the rotator's file-system steps.

A hypothesis state machine on real files (ext4/tmpfs under the test's temp directory):
a writer appends multi-line checksummed events (raw "\\n\\n", docker json-file entries
or cri lines, split in partial lines) in chunks that cut events; the real StreamRotator
rotates by size (punch, pieces, collapse), enforces a byte budget (segment deletes, head
trims, drops of the active file's head), compresses segments (gzip/zstd, no delay: the
plain file renamed away under a follower) and restarts after crashes; followers (StreamReader with
follow, some with tailLines) start and read at any moment. The interleaving seam is
below the rotator: its every state save, rename into place, unlink, punch and collapse
(SafeDir.write_atomically / rename / unlink, stream_files.punch_hole / collapse_range)
goes through a hook that may, as hypothesis draws it, let followers read (or start)
right before or after that step, or crash the rotator there (an exception that unwinds
it; a new StreamRotator then starts from the files, as after kill -9).

Checked after every step: each follower served whole events, each sequence number
higher than the one before. At the end, after the rotator settles and the followers
catch up: each ends on the last event, and every event it skipped is one retention
removed (older than everything kept on disk).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.errors import StreamError
from logvold.fileio import reader as reader_module
from logvold.fileio import stream_files
from logvold.fileio.reader import ReadOptions, StreamReader
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.safedir import SafeDir
from tests.support.events import parse_event, split_raw
from tests.support.format_writer import encode_event

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAX_SIZE = 2048
SEED = 3
ACTIONS = (
    "read-before",
    "read-after",
    "start-before",
    "start-after",
    "crash-before",
    "crash-after",
)


class Crash(BaseException):
    """The rotator process dies here (BaseException: no `except Exception` swallows it)."""


@dataclass
class Follower:
    chunks: Iterator[bytes]
    reader: StreamReader
    first_new: int
    """The first event written entirely after the follower started: it must get it."""
    buf: bytes = b""
    seqs: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Hooks:
    """Wraps the file-system steps of the rotator; `plan` says what happens at which call
    of the current rotator operation."""

    def __init__(self) -> None:
        self.plan: dict[int, str] = {}
        self.calls = 0
        self.active = False
        self.on_read: Callable[[bool], None] = lambda start: None
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        for owner, name in (
            (SafeDir, "write_atomically"),
            (SafeDir, "rename"),
            (SafeDir, "unlink"),
            (stream_files, "punch_hole"),
            (stream_files, "collapse_range"),
        ):
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._wrap(original))

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            action = self.plan.get(self.calls)
            self.calls += 1
            self._act(action, "before")
            result = original(*args, **kwargs)
            self._act(action, "after")
            return result

        return step

    def _act(self, action: str | None, when: str) -> None:
        if action is None or not action.endswith(when):
            return
        if action.startswith("crash"):
            raise Crash(action)
        self.active = False  # the followers' own file access is not a rotator step
        try:
            self.on_read(action.startswith("start"))
        finally:
            self.active = True


class ReaderHooks:
    """The other direction: a rotator operation runs at the Nth file-system step of a
    READER (right after it read the state file; between two events of a backwards tail
    scan), so a step lands between what a reader checked and what it does next."""

    def __init__(self, busy: Callable[[], bool]) -> None:
        self.busy = busy
        """True while a rotator operation runs: one rotator per stream, never two at once."""
        self.armed: tuple[int, Callable[[], None]] | None = None
        self.calls = 0
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        state = StreamReader.current_state
        self._saved.append((StreamReader, "current_state", state))

        def current_state(reader: StreamReader) -> Any:
            result = state(reader)
            self._tick()
            return result

        StreamReader.current_state = current_state  # type: ignore[method-assign,assignment]
        for name in ("reverse_events", "reverse_records"):
            original = getattr(reader_module, name)
            self._saved.append((reader_module, name, original))
            setattr(reader_module, name, self._scan(original))

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _scan(self, original: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def scan(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for item in original(*args, **kwargs):
                yield item
                self._tick()

        return scan

    def _tick(self) -> None:
        if self.armed is None or self.busy():
            return
        self.calls += 1
        at, op = self.armed
        if self.calls >= at:
            self.armed = None
            op()


class FollowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="logvold-interleave-"))
        self.hooks = Hooks()
        self.hooks.install()
        self.hooks.on_read = self._read_inside
        self.running = False
        self.reader_hooks = ReaderHooks(lambda: self.running)
        self.reader_hooks.install()
        self.followers: list[Follower] = []
        self.fd = -1
        self.rotator: StreamRotator | None = None
        self.crashes = 0

    def teardown(self) -> None:
        self.hooks.uninstall()
        self.reader_hooks.uninstall()
        for f in self.followers:
            with contextlib.suppress(Exception):
                f.chunks.close()  # type: ignore[attr-defined]
        if self.fd >= 0:
            os.close(self.fd)
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(
        fmt=st.sampled_from(["raw", "json-file", "cri"]),
        budget=st.sampled_from([0, 5 * MAX_SIZE]),
        collapse=st.sampled_from(["never", "always"]),
        compress=st.sampled_from(["none", "gzip", "zstd"]),
    )
    def setup(self, fmt: str, budget: int, collapse: str, compress: str) -> None:
        self.delimiter = b"\n\n" if fmt == "raw" else b"\n"
        self.budget = budget
        self.info = StreamInfo(
            key=StreamKey("default", "pod", "app"),
            directory=self.dir,
            base="app.log",
            volume="logs",
            policy=LogPolicy(
                format=fmt,  # type: ignore[arg-type]
                delimiter=self.delimiter,
                max_size_bytes=MAX_SIZE,
                max_files=0,
                max_total_size_bytes=budget,
                collapse=collapse,  # type: ignore[arg-type]
                compress=compress,  # type: ignore[arg-type]
                delay_compress=False,
            ),
        )
        self.fd = os.open(self.info.active_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.rng = random.Random(SEED)
        self.next_seq = 0
        self.pending = b""
        self.ends: list[int] = []
        self.written = 0

    # -- the writer -------------------------------------------------------------------

    @rule(nbytes=st.integers(1, 3 * MAX_SIZE))
    def write(self, nbytes: int) -> None:
        while len(self.pending) < nbytes:
            self._encode()
        os.write(self.fd, self.pending[:nbytes])
        self.written += nbytes
        self.pending = self.pending[nbytes:]

    def _encode(self) -> None:
        ev = encode_event(
            self.info.policy.format, self.next_seq, SEED, delimiter=self.delimiter, max_len=400
        )
        self.pending += ev
        self.ends.append((self.ends[-1] if self.ends else 0) + len(ev))
        self.next_seq += 1

    def _first_new(self) -> int:
        """The first event that starts at or after the bytes written so far."""
        whole = bisect.bisect_right(self.ends, self.written)  # events ended by now
        started = self.ends[whole - 1] if whole else 0
        return whole if started == self.written else whole + 1

    # -- the rotator ------------------------------------------------------------------

    def _rotator(self) -> StreamRotator:
        if self.rotator is None:
            self.rotator = StreamRotator(self.info, collapse_min_bytes=MAX_SIZE)
        return self.rotator

    def _run(self, op: Callable[[StreamRotator], object], plan: dict[int, str]) -> None:
        self.hooks.plan, self.hooks.calls, self.hooks.active = plan, 0, True
        self.running = True
        try:
            op(self._rotator())
        except Crash:
            self.rotator = None  # killed: the next operation starts a new one (recover)
            self.crashes += 1
        except StreamError:
            pass  # retriable (e.g. a step that a crash's leftovers made fail): run again
        finally:
            self.hooks.active = self.running = False

    plans = st.dictionaries(st.integers(0, 14), st.sampled_from(ACTIONS), max_size=3)

    @rule(plan=plans)
    def rotate(self, plan: dict[int, str]) -> None:
        self._run(lambda r: r.needs_rotation() and r.rotate("size"), plan)

    @rule(plan=plans)
    def retention(self, plan: dict[int, str]) -> None:
        self._run(lambda r: r.enforce_retention(), plan)

    @rule(plan=plans)
    def compress(self, plan: dict[int, str]) -> None:
        self._run(lambda r: r.compress_pending(), plan)

    @rule(at=st.integers(1, 12), op=st.sampled_from(["rotate", "retention", "compress"]))
    def arm_reader_race(self, at: int, op: str) -> None:
        """The next followers' Nth file-system step runs a whole rotator operation."""

        def run() -> None:
            if op == "rotate":
                self._run(lambda r: r.needs_rotation() and r.rotate("size"), {})
            elif op == "retention":
                self._run(lambda r: r.enforce_retention(), {})
            else:
                self._run(lambda r: r.compress_pending(), {})

        self.reader_hooks.armed, self.reader_hooks.calls = (at, run), 0

    # -- the followers ----------------------------------------------------------------

    @precondition(lambda self: len(self.followers) < 4)
    @rule(tail=st.sampled_from([None, 0, 2, 5000]))
    def start(self, tail: int | None) -> None:
        self._start(tail)

    def _start(self, tail: int | None) -> None:
        reader = StreamReader(
            self.info, ReadOptions(follow=True, tail_events=tail), poll_interval_s=0.0
        )
        follower = Follower(reader.chunks(), reader, self._first_new())
        self.followers.append(follower)
        self._step(follower, 1)

    @rule(data=st.data(), steps=st.integers(1, 8))
    def read(self, data: st.DataObject, steps: int) -> None:
        if self.followers:
            i = data.draw(st.integers(0, len(self.followers) - 1))
            self._step(self.followers[i], steps)

    def _read_inside(self, start: bool) -> None:
        if start and len(self.followers) < 6:
            self._start(self.rng.choice([None, 2, 5000]))
        for f in self.followers:
            self._step(f, 3)

    def _step(self, f: Follower, steps: int) -> None:
        for _ in range(steps):
            chunk = next(f.chunks)
            if not chunk:
                if f.reader.more_ready:
                    f.reader.more_ready = False
                    continue
                return
            f.buf += chunk
            parts = f.buf.split(self.delimiter)
            f.buf = parts.pop()
            for body in parts:
                seq = parse_event(body)
                if seq is None:
                    f.problems.append(f"cut event {body[:50]!r}")
                elif f.seqs and seq <= f.seqs[-1]:
                    f.problems.append(f"{seq} after {f.seqs[-1]}")
                else:
                    f.seqs.append(seq)

    @invariant()
    def followers_never_step_back(self) -> None:
        for f in self.followers:
            assert not f.problems, (f.problems[:3], self.crashes)

    # -- the end ----------------------------------------------------------------------

    def check_end(self) -> None:
        """Called by the test after the run: settle, catch up, compare with the disk."""
        for _ in range(3):  # whole events after every follower's start
            self._encode()
        os.write(self.fd, self.pending)
        self.written += len(self.pending)
        self.pending = b""
        last = self.next_seq - 1
        self.hooks.active = False
        self.reader_hooks.armed = None
        rotator = StreamRotator(self.info, collapse_min_bytes=MAX_SIZE)
        rotator.recover()
        for _ in range(50):
            rotator.enforce_retention()
            rotator.compress_pending()
            if not (rotator.needs_rotation() and rotator.rotate("size")):
                break
        disk = StreamReader(self.info, ReadOptions())
        kept = [parse_event(b) for b in split_raw(disk.read_all(), self.delimiter)]
        assert kept and None not in kept and kept[-1] == last, (kept[-3:], last)
        kept_first = kept[0]
        assert kept_first is not None
        for f in self.followers:
            for _ in range(200):
                if f.seqs and f.seqs[-1] == last:
                    break
                self._step(f, 20)
            assert not f.problems, f.problems[:3]
            assert f.seqs and f.seqs[-1] == last, (f.seqs[-3:], last)
            owed = range(min(f.seqs[0], f.first_new), last + 1)
            wrongly = sorted(set(owed) - set(f.seqs) - set(range(kept_first)))
            assert not wrongly, ("missed, not removed by retention", wrongly[:10])


class _Checked(FollowMachine):
    def teardown(self) -> None:
        try:
            if self.fd >= 0 and self.followers:
                self.check_end()
        finally:
            super().teardown()


_Checked.TestCase.settings = settings(
    max_examples=int(os.environ.get("LOGVOLD_INTERLEAVE_EXAMPLES", "60")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestFollowInterleavings = _Checked.TestCase


def _replay(steps: Callable[[FollowMachine], None]) -> None:
    """One shrunk failing case of the machine, run as a plain test (always the same)."""
    machine = _Checked()
    try:
        steps(machine)
        machine.followers_never_step_back()
    finally:
        machine.teardown()


def test_cri_follower_keeps_a_stream_s_next_event_after_a_removed_range() -> None:
    """A tailLines=0 follower starts mid-event (dropping the first event of each stream);
    retention then removes what it had not read and it jumps to a boundary. The skip
    must end there: it dropped the next whole event of the stream it still waited on."""

    def steps(m: FollowMachine) -> None:
        m.setup(fmt="cri", budget=5 * MAX_SIZE, collapse="never", compress="none")
        m.write(nbytes=2048)
        m.start(tail=None)
        m.write(nbytes=420)
        m.write(nbytes=1361)
        m.start(tail=0)
        m.write(nbytes=3208)
        m.write(nbytes=5092)
        m.write(nbytes=2523)

    _replay(steps)


def test_compression_after_a_crash_never_doubles_a_segment() -> None:
    """A rotator killed after writing a punch's segment, before its commit; the next
    one compresses first. It must settle the step before compressing: a compressed
    uncommitted segment made recovery roll the step back and keep both copies."""

    def steps(m: FollowMachine) -> None:
        m.setup(fmt="raw", budget=0, collapse="never", compress="gzip")
        m.write(nbytes=2048)
        m.rotate(plan={3: "crash-after"})
        m.compress(plan={})
        m.retention(plan={})
        m.start(tail=None)

    _replay(steps)
