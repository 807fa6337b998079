"""Crash safety of the rotator: a real kill -9 loop, and a crash injected before and after
every step (save, copy, rename, punch, collapse) of a rotation, each followed by recover()."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from benchmarks.rotator_crash import run
from logvold.fileio import stream_files
from logvold.fileio.rotation import base as rotation_base
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from tests.integration.rotator_kit import leftovers, make_info, whole_stream
from tests.support.events import event_stream, split_raw, verify


@pytest.mark.slow
@pytest.mark.parametrize("mode, kills", [("append", 30), ("offset", 20)])
def test_kill_9_loop(tmp_path: Path, mode: str, kills: int) -> None:
    # rotation_first: half the kills wait until the child has committed a rotation (then
    # a random delay), so a loaded machine cannot turn the loop into kills before any
    # rotation started; the other half keep the plain random instant.
    stats = run(
        kills,
        mode=mode,
        seed=11 if mode == "append" else 12,
        directory=tmp_path,
        max_delay_s=0.25,
        rotation_first=True,
    )
    print(f"\n{stats}")
    assert stats.kills == kills
    assert stats.failures == []
    assert (stats.lost, stats.dup, stats.split, stats.leftovers) == (0, 0, 0, 0)
    assert stats.events > 1000 and stats.rotations >= (kills + 1) // 2
    if mode == "append":
        assert stats.collapses > 0


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even except/finally cleanups of ours."""


STEPS: list[tuple[Any, str]] = [
    (rotation_base, "save_state_in"),
    (stream_files, "copy_range"),
    (os, "rename"),  # the os module the rotator calls: patched for the step only
    (stream_files, "punch_hole"),
    (stream_files, "collapse_range"),
    (os, "ftruncate"),
]


@contextmanager
def crash_at(k: int, after: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Raise Crash at the k-th call of any step (before or after it runs)."""
    calls: list[str] = []
    depth = [0]

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:  # inside another step (the state save's own rename): part of it
                return fn(*args, **kwargs)
            calls.append(name)
            me = len(calls) - 1
            if me == k and not after:
                raise Crash(name)
            depth[0] += 1
            try:
                result = fn(*args, **kwargs)
            finally:
                depth[0] -= 1
            if me == k and after:
                raise Crash(name)
            return result

        return wrapped

    with monkeypatch.context() as m:
        for owner, name in STEPS:
            m.setattr(owner, name, wrap(name, getattr(owner, name)))
        yield calls


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@pytest.mark.parametrize("strategy", ["punch", "rename", "copytruncate"])
@pytest.mark.parametrize("after", [False, True], ids=["before-step", "after-step"])
def test_crash_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str, after: bool
) -> None:
    """Each crash point, then recover(): every event once; then the next rotation succeeds."""
    events = list(event_stream(4000, seed=2, delimiter=b"\n\n"))
    blob = b"".join(events)
    rng = random.Random(3)
    k = 0
    while True:
        d = tmp_path / f"k{k}"
        d.mkdir()
        info = make_info(
            d,
            max_size_bytes=16 * 1024,
            max_files=0,
            delimiter=b"\n\n",
            max_total_size_bytes=96 * 1024,
            strategy=strategy,
            collapse="always",
        )
        # Two rotations (and a retention pass) over a file with a partial event at its end.
        cut1, cut2 = rng.randint(40_000, 60_000), rng.randint(90_000, 130_000)
        if strategy == "copytruncate":  # it loses a partial tail by design: cut at boundaries
            cut1, cut2 = (blob.index(b"\n\n", c) + 2 for c in (cut1, cut2))
        _append(d / "app.log", blob[:cut1])
        base = StreamRotator(info, None, collapse_min_bytes=4096)
        base.rotate("size")
        _append(d / "app.log", blob[cut1:cut2])
        rot = StreamRotator(info, None, collapse_min_bytes=4096)
        with crash_at(k, after, monkeypatch) as calls:
            try:
                rot.rotate("size")
                rot.enforce_retention()
                crashed = False
            except Crash:
                crashed = True
        StreamRotator(info, None, collapse_min_bytes=4096).recover()
        assert leftovers(d) == []
        state = load_state(d, "app.log")
        assert state is not None and state.intent is None, (k, calls, state)
        # Every record places its plain segment where it is (a trimmed head included).
        for rec in state.segments:
            if (d / rec.stem).exists():
                assert (d / rec.stem).stat().st_size == rec.logical_end - rec.logical_start, (
                    k,
                    calls,
                    rec,
                )
        report = verify(split_raw([whole_stream(d)], b"\n\n"), allow_missing_prefix=True)
        assert report.ok and report.last_seq is not None, (k, calls, report.summary())
        # After recovery the stream keeps rotating correctly.
        _append(d / "app.log", blob[cut2:])
        final = StreamRotator(info, None, collapse_min_bytes=4096)
        final.rotate("size")
        report = verify(split_raw([whole_stream(d)], b"\n\n"), allow_missing_prefix=True)
        assert report.ok and report.last_seq == 3999, (k, calls, report.summary())
        if strategy != "copytruncate":  # copytruncate drops nothing here: no writer races it
            assert report.first_seq is not None
        if not crashed:
            break
        k += 1
    print(f"\n{strategy} crash points: {k} {calls}")
    assert k >= 4, "the crash points were not all reached"
