"""Bad input never crashes `logvold serve` and never touches a file outside the
volume: symlinks in place of log files, a directory named x.log, non-UTF-8 names,
an unreadable volume, a writer that truncates its own file. Each is logged and
counted; the daemon keeps managing the good streams."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from tests.e2e.serve_support import (
    free_port,
    http_get,
    metric,
    running,
    stream_bytes,
    wait_for,
    write_config,
)
from tests.support.events import event_stream, split_raw, verify

pytestmark = pytest.mark.slow


def events(start: int, count: int) -> bytes:
    return b"".join(event_stream(count, seed=start + 3, start=start))


def segments(vol: Path, base: str) -> int:
    return len(segments_of(base, os.listdir(vol)))


def test_bad_inputs_are_logged_counted_and_survived(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    outside = tmp_path / "outside.log"
    outside.write_bytes(events(0, 1000))  # ~170 KB: far above maxSize
    outside_bytes = outside.read_bytes()
    missing = tmp_path / "not-there"
    cfg = write_config(
        tmp_path / "cfg.yaml",
        vol,
        listen=f"127.0.0.1:{port}",
        rescan="1s",
        policy={"maxSize": "16Ki", "maxFiles": 0},
        extra=f"  - name: gone\n    path: {missing}\n",
    )
    (vol / "good.log").write_bytes(b"")
    (vol / "victim.log").write_bytes(events(0, 200))
    (vol / "planted.log").symlink_to(outside)
    (vol / "dir.log").mkdir()
    (vol / "dir.log" / "inner.log").write_bytes(events(0, 500))
    raw_name = os.fsencode(vol) + b"/caf\xe9-latin1.log"
    fd = os.open(raw_name, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, events(0, 500))
    os.close(fd)

    # serve refuses to start on a missing volume (check-config's words); one that goes
    # away while it runs is logged, counted and survived.
    missing.mkdir()
    with running(["--config", str(cfg)], tmp_path / "daemon.log") as daemon:
        # ~34 KB at maxSize 16Ki: cut into several maxSize segments at once.
        wait_for(lambda: segments(vol, "victim.log") >= 2, 60, "victim.log rotated")
        shutil.rmtree(missing)  # with the .logvold/lock the daemon keeps in it
        # planted symlink, dir.log, non-UTF-8 name, the vanished volume
        wait_for(
            lambda: metric(port, "logvold_watch_errors_total", {"source": "static"}) >= 4,
            30,
            "every bad input counted",
        )

        # A managed file replaced by a symlink pointing outside the volume.
        (vol / "victim.log").unlink()
        (vol / "victim.log").symlink_to(outside)
        wait_for(
            lambda: (
                metric(
                    port,
                    "logvold_rotation_failures_total",
                    {"container": "victim", "error": "unsafe"},
                )
                >= 1
            ),
            60,
            "the symlinked stream refused",
        )

        # A writer that truncates its own file and starts again.
        good = vol / "good.log"
        good.write_bytes(events(0, 300))
        # Cut in several maxSize segments: wait until all of them are there.
        wait_for(
            lambda: b"".join(stream_bytes(vol, "good.log")[0]) == events(0, 300),
            60,
            "good.log rotated",
        )
        first_cut = segments(vol, "good.log")
        with good.open("r+b") as f:
            f.truncate(0)
        with good.open("ab") as f:
            f.write(events(300, 300))
        wait_for(lambda: segments(vol, "good.log") > first_cut, 60, "rotation after the truncation")
        wait_for(
            lambda: (
                metric(port, "logvold_truncations_total", {"container": "good", "reason": "writer"})
                >= 1
            ),
            60,
            "the writer's truncation counted",
        )

        # Still alive, still serving, SIGHUP still fine, and nothing outside was touched.
        daemon.signal(signal.SIGHUP)
        wait_for(
            lambda: metric(port, "logvold_config_reloads_total", {"result": "success"}) == 1,
            60,
            "reload",
        )
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0

    log = daemon.log_text()
    assert "Traceback" not in log
    for needle in (
        "planted.log is a symlink",
        "dir.log is a directory",
        "non-UTF-8",
        "caf\\\\xe9-latin1.log",
        "not-there",
        "victim.log is a symlink",
    ):
        assert needle in log, needle
    assert outside.read_bytes() == outside_bytes
    assert os.stat(outside).st_blocks * 512 >= len(outside_bytes)  # no hole punched in it
    assert (vol / "dir.log" / "inner.log").read_bytes() == events(0, 500)
    with open(raw_name, "rb") as f:
        assert f.read() == events(0, 500)
    # good.log: everything written after the truncation is there exactly once.
    segs, live = stream_bytes(vol, "good.log")
    report = verify(split_raw([b"".join(segs[first_cut:]) + live]), expected=range(300, 600))
    assert report.ok and report.seen == 300, report.summary()
