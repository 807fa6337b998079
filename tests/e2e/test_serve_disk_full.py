"""`logvold serve` on a full disk: a backlog bigger than the free space of its 8 MiB tmpfs
(the rotation's copy cannot fit) recovers by itself once retention frees room: rotation
then goes on in pieces no bigger than the free space, and every event retention did not
delete is there exactly once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from logvold.fileio.state import load_state
from tests.e2e.serve_support import free_port, http_get, running, wait_for, write_config, writer
from tests.integration.rotator_kit import whole_stream
from tests.support.events import split_raw, verify
from tests.support.small_fs import free_bytes, mounted_tmpfs

DELIM = b"\n\n"
MAX_SIZE = 2**20
pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture
def tmpfs8m(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path, "8m") as mnt:
        yield mnt


def _live(d: Path) -> int:
    state = load_state(d, "app.log")
    committed = state.physical_committed if state is not None else 0
    return (d / "app.log").stat().st_size - committed


def _segments(d: Path) -> list[Path]:
    return [d / s.filename for s in segments_of("app.log", os.listdir(d))]


def test_a_backlog_bigger_than_the_free_space_recovers_by_itself(
    tmp_path: Path, tmpfs8m: Path
) -> None:
    vol = tmpfs8m
    port = free_port()
    policy = {"maxSize": "1Mi", "maxFiles": 0, "maxTotalSize": "5Mi", "delimiter": "\n\n"}
    cfg = write_config(
        tmp_path / "cfg.yaml", vol, listen=f"127.0.0.1:{port}", policy=policy, rescan="1s"
    )
    # Old segments first: the daemon cuts a backlog present at its start.
    assert writer(vol / "app.log", count=15_000, rate=0).wait(120) == 0
    with running(["--config", str(cfg)], tmp_path / "daemon1.log") as daemon:
        wait_for(lambda: _live(vol) < MAX_SIZE, 60, "the first backlog cut")
        assert daemon.stop() == 0
    old = _segments(vol)
    assert sum(p.stat().st_size for p in old) > 2 * 2**20
    # While it is stopped: a second backlog, then a filler leaving less than one piece.
    w = writer(vol / "app.log", count=15_000, rate=0, start=15_000)
    assert w.wait(120) == 0
    with (vol / "filler").open("wb") as f:
        f.write(b"x" * max(free_bytes(vol) - 64 * 1024, 0))
    backlog = _live(vol)
    assert backlog > free_bytes(vol) + 2**20

    with running(["--config", str(cfg)], tmp_path / "daemon2.log") as daemon:
        # Retention (maxTotalSize) deletes old segments, then rotation proceeds in pieces.
        wait_for(lambda: _live(vol) < 4096, 120, "the backlog cut on a full disk")
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert daemon.stop() == 0
    assert max(p.stat().st_size for p in _segments(vol)) <= MAX_SIZE
    assert not any(p in _segments(vol) for p in old[:1])  # the oldest went first
    report = verify(
        split_raw([whole_stream(vol, delimiter=DELIM)], DELIM), allow_missing_prefix=True
    )
    assert report.ok, report.summary()
    assert report.last_seq == 29_999 and report.first_seq is not None
    assert report.seen == 30_000 - report.first_seq
    assert not [n for n in os.listdir(vol) if n.endswith((".tmp", ".trim"))]
