"""`logvold serve` as root in a volume a hostile pod controls (the rotation side): while a
real writer writes sequence-numbered multi-line events, the pod plants symlinks at every
temp and segment name, FIFOs / sockets / directories under segment names, swaps
`.logvold` for a symlink, hard-links its active file to an outside file, plants a 3 GiB
sparse state file, deletes its state file; and a fast writer is followed by SIGTERM.

Each test checks the outside canary (bytes, mode, allocated blocks), that nothing of it
is in a segment, a state file or a /logs response, that the stream keeps every event
exactly once (read back from the files, independently of logvold's reader), that the
daemon stays ready, counts the refusal, and stops on SIGTERM within a generous deadline.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logvold.fileio.state import load_state, state_path
from tests.e2e.serve_support import (
    Daemon,
    free_port,
    http_get,
    metric,
    running,
    wait_for,
    write_config,
    writer,
)
from tests.support.events import split_raw, verify
from tests.support.hostile import (
    MARKER,
    Canary,
    complete,
    files_view,
    marker_anywhere,
    nul_bytes_in_segments,
    plant,
    regular_segments,
)

DELIM = b"\n\n"
STOP_DEADLINE_S = 60.0
REFUSED = "logvold_unsafe_files_refused_total"
pytestmark = pytest.mark.slow


def config_for(tmp_path: Path, vol: Path, port: int, **policy: object) -> Path:
    base: dict[str, object] = {"maxSize": "32Ki", "maxFiles": 0, "delimiter": "\n\n"}
    base.update(policy)
    return write_config(
        tmp_path / "cfg.yaml", vol, listen=f"127.0.0.1:{port}", policy=base, rescan="2s"
    )


def ready(port: int) -> bool:
    return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def served(port: int) -> bytes:
    code, body = http_get(f"http://127.0.0.1:{port}/logs/default/p/app", timeout_s=30)
    assert code == 200, body[:300]
    return body


def stop_within_deadline(daemon: Daemon) -> None:
    started = time.monotonic()
    code = daemon.stop(STOP_DEADLINE_S)
    assert code == 0, daemon.log_text()[-3000:]
    assert time.monotonic() - started < STOP_DEADLINE_S


def assert_exactly_once(vol: Path, count: int, *, via_state: bool = True) -> None:
    data = complete(files_view(vol, via_state=via_state), DELIM)
    report = verify(split_raw([data], DELIM))
    assert report.ok, report.summary()
    assert (report.first_seq, report.last_seq, report.seen) == (0, count - 1, count), (
        report.summary()
    )
    assert nul_bytes_in_segments(vol) == 0


def predicted_names(now: datetime) -> list[str]:
    """Segment names the daemon may give in the next seconds (UTC stamp, sequence)."""
    out = []
    for dt in range(3):
        stamp = (now + timedelta(seconds=dt)).strftime("%Y%m%d-%H%M%S")
        out += [f"app.log.{stamp}"] + [f"app.log.{stamp}.{seq:04d}" for seq in (1, 2)]
    return out


class Planter(threading.Thread):
    """The pod: keeps planting symlinks to the canary at every temp and segment name."""

    def __init__(self, vol: Path, canary: Canary) -> None:
        super().__init__(daemon=True)
        self.vol, self.canary = vol, canary
        self.done = threading.Event()
        self.planted = 0

    def _plant(self, name: str) -> None:
        path = self.vol / name
        try:
            if not os.path.lexists(path):
                path.symlink_to(self.canary.path)
                self.planted += 1
        except OSError:
            pass  # the daemon renamed onto it meanwhile: that is the race we want

    def run(self) -> None:
        while not self.done.is_set():
            for name in predicted_names(datetime.now(UTC)):
                for suffix in ("", ".tmp", ".trim", ".trim.tmp"):
                    self._plant(name + suffix)
            try:
                names = os.listdir(self.vol)
            except OSError:
                names = []
            for name in names:
                if name.startswith("app.log.") and not name.endswith((".tmp", ".trim")):
                    for suffix in (".gz.tmp", ".zst.tmp", ".trim", ".trim.tmp"):
                        self._plant(name.removesuffix(".gz").removesuffix(".zst") + suffix)
            if (self.vol / ".logvold").is_dir():
                self._plant(".logvold/app.log.state.json.tmp")
            time.sleep(0.01)


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_symlinks_planted_at_every_temp_and_segment_name_while_rotating(
    tmp_path: Path, compress: str
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    canary = Canary.make(tmp_path / "outside")
    port = free_port()
    config = config_for(tmp_path, vol, port, compress=compress, delayCompress=False)
    count = 3000
    planter = Planter(vol, canary)
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        planter.start()
        w = writer(vol / "app.log", count=count, rate=30)
        assert w.wait(120) == 0
        wait_for(lambda: len(regular_segments(vol)) >= 4, 30, "rotations")
        wait_for(
            lambda: metric(port, "logvold_compressions_total", {"algorithm": compress}) >= 2,
            30,
            "compressions",
        )
        planter.done.set()
        planter.join(10)
        assert ready(port)
        assert MARKER not in served(port)
        assert metric(port, REFUSED, {"kind": "symlink"}) >= 1
        stop_within_deadline(daemon)
    assert planter.planted > 50
    canary.assert_unchanged()
    assert marker_anywhere(vol) == []
    assert_exactly_once(vol, count)
    assert_exactly_once(vol, count, via_state=False)  # a clean stop: the files hold it once


def test_fifo_socket_directory_segments_and_a_swapped_state_dir(tmp_path: Path) -> None:
    """Non-regular files under segment names never block compression (a FIFO would hang
    an open by path) and are never read; `.logvold` swapped for a symlink for a while
    gets nothing written through it; the stream then carries on, every event once."""
    vol = tmp_path / "vol"
    vol.mkdir()
    canary = Canary.make(tmp_path / "outside")
    outside_dir = tmp_path / "outside-dir"
    outside_dir.mkdir()
    for i, kind in enumerate(("fifo", "socket", "directory", "symlink")):
        plant(vol / f"app.log.20200101-000000.{i:04d}", kind, canary.path)
    port = free_port()
    config = config_for(tmp_path, vol, port, compress="gzip", delayCompress=False)
    count = 3000
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        w = writer(vol / "app.log", count=count, rate=20)
        wait_for(
            lambda: (vol / ".logvold").is_dir() and len(regular_segments(vol)) >= 2,
            60,
            "first rotations",
        )
        aside = tmp_path / "state-aside"
        (vol / ".logvold").rename(aside)
        (vol / ".logvold").symlink_to(outside_dir)
        wait_for(
            lambda: metric(port, REFUSED, {"kind": "symlink"}) >= 2,
            30,
            "the swapped .logvold refused",
        )
        assert ready(port)
        (vol / ".logvold").unlink()
        aside.rename(vol / ".logvold")
        assert w.wait(120) == 0
        wait_for(lambda: metric(port, "logvold_compressions_total") >= 3, 30, "compressions")
        assert metric(port, REFUSED, {"kind": "not-regular"}) >= 1
        assert ready(port)
        assert MARKER not in served(port)
        stop_within_deadline(daemon)
    assert os.listdir(outside_dir) == []
    canary.assert_unchanged()
    assert marker_anywhere(vol) == []
    assert_exactly_once(vol, count)


def test_hard_linked_active_file_is_not_punched_or_copied(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    canary = Canary.make(tmp_path / "outside", size=256 * 1024)
    os.link(canary.path, vol / "app.log")
    port = free_port()
    config = config_for(tmp_path, vol, port, maxSize="16Ki", maxTotalSize="32Ki", delimiter="\n")
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: metric(port, REFUSED, {"kind": "hardlink"}) >= 1, 30, "the hard link refused"
        )
        assert ready(port)
        stop_within_deadline(daemon)
    canary.assert_unchanged()
    assert regular_segments(vol) == []
    assert marker_anywhere(vol, exclude=("app.log",)) == []


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_3gib_sparse_state_file_costs_nothing(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    config = config_for(tmp_path, vol, port)
    assert writer(vol / "app.log", count=1000).wait(60) == 0
    once = Daemon(["--config", str(config), "--once"], tmp_path / "once.log")
    assert once.wait(60) == 0, once.log_text()
    path = state_path(vol, "app.log")
    path.unlink()
    with path.open("wb") as f:
        f.truncate(3 * 2**30)
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        wait_for(lambda: ready(port), 30, "ready")
        assert _vm_hwm_kib(daemon.proc.pid) < 400 * 1024
        wait_for(lambda: metric(port, REFUSED, {"kind": "too-big"}) >= 1, 30, "refused")
        assert writer(vol / "app.log", count=1000, start=1000).wait(60) == 0
        wait_for(lambda: metric(port, "logvold_rotations_total") >= 1, 30, "a rotation")
        assert _vm_hwm_kib(daemon.proc.pid) < 400 * 1024
        stop_within_deadline(daemon)
    assert path.stat().st_size < 64 * 1024
    assert_exactly_once(vol, 2000)


def test_a_deleted_state_file_is_rebuilt_not_recopied(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    config = config_for(tmp_path, vol, port)
    with running(["--config", str(config)], tmp_path / "daemon1.log") as daemon:
        assert writer(vol / "app.log", count=2000, rate=300).wait(60) == 0
        wait_for(lambda: metric(port, "logvold_rotations_total") >= 3, 30, "rotations")
        stop_within_deadline(daemon)
    fd = os.open(vol / "app.log", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) > 0, "the active file should start with a hole"
    finally:
        os.close(fd)
    state_path(vol, "app.log").unlink()
    with running(["--config", str(config)], tmp_path / "daemon2.log") as daemon:
        assert writer(vol / "app.log", count=1000, start=2000, seed=2).wait(60) == 0
        wait_for(
            lambda: (
                (load_state(vol, "app.log") or _Never).committed_offset
                > (vol / "app.log").stat().st_size - 32 * 1024
            ),
            30,
            "rotations after restart",
        )
        stop_within_deadline(daemon)
    assert nul_bytes_in_segments(vol) == 0
    data = complete(files_view(vol, via_state=True), DELIM)
    report = verify(split_raw([data], DELIM))
    assert report.ok, report.summary()
    assert (report.first_seq, report.last_seq) == (0, 2999)


class _Never:
    committed_offset = -1


def test_sigterm_right_after_a_fast_writer_leaves_every_event_once_in_the_files(
    tmp_path: Path,
) -> None:
    """A writer as fast as it goes (~16 MB/s here), SIGTERM as it ends: the stop finishes
    the step in flight and zeroes the committed tail, so the files themselves (not only
    logvold's reading of them) hold every event once."""
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    config = config_for(tmp_path, vol, port, maxSize="1Mi")
    count = 100_000
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        assert writer(vol / "app.log", count=count, rate=0).wait(180) == 0
        stop_within_deadline(daemon)
    assert "logvold stopped" in daemon.log_text()
    assert len(regular_segments(vol)) >= 3
    assert_exactly_once(vol, count, via_state=True)
    assert_exactly_once(vol, count, via_state=False)
