"""`logvold serve` (and `--once`) against the segment bound: a file present at start is cut
into maxSize segments; a 1 TiB sparse active file is skipped, not read (the daemon stays
ready with a small RSS, stops on SIGTERM within seconds, no segment holds a NUL byte);
a writer as fast as it goes never makes a segment over maxSize. Every event once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

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
from tests.integration.rotator_kit import whole_stream
from tests.support.events import split_raw, verify
from tests.support.hostile import nul_bytes_in_segments, regular_segments

DELIM = b"\n\n"
pytestmark = pytest.mark.slow


def config_for(tmp_path: Path, vol: Path, port: int, **policy: object) -> Path:
    base: dict[str, object] = {"maxSize": "64Ki", "maxFiles": 0, "delimiter": "\n\n"}
    base.update(policy)
    return write_config(
        tmp_path / "cfg.yaml", vol, listen=f"127.0.0.1:{port}", policy=base, rescan="2s"
    )


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _exactly_once(vol: Path, count: int, start: int = 0) -> None:
    # Segments, then the active file from its committed offset (never the 1 TiB hole).
    data = whole_stream(vol, delimiter=DELIM)
    report = verify(split_raw([data], DELIM))
    assert report.ok, report.summary()
    assert (report.first_seq, report.last_seq, report.seen) == (start, start + count - 1, count), (
        report.summary()
    )
    assert nul_bytes_in_segments(vol) == 0


def test_a_megabyte_present_at_start_is_cut_in_one_pass(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    assert writer(vol / "app.log", count=6000).wait(60) == 0
    size = (vol / "app.log").stat().st_size
    assert size > 2**20
    config = config_for(tmp_path, vol, free_port())
    once = Daemon(["--config", str(config), "--once"], tmp_path / "once.log")
    assert once.wait(120) == 0, once.log_text()[-3000:]
    segs = regular_segments(vol)
    assert len(segs) >= size // (64 * 1024)
    assert max(p.stat().st_size for p in segs) <= 64 * 1024
    _exactly_once(vol, 6000)


def test_a_1tib_sparse_active_file_costs_nothing_and_stops_on_sigterm(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    config = config_for(tmp_path, vol, port)
    assert writer(vol / "app.log", count=500).wait(60) == 0
    active = vol / "app.log"
    os.truncate(active, active.stat().st_size + 2**40)  # a hostile pod's truncate
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "ready")
        assert writer(active, count=1500, start=500).wait(60) == 0
        wait_for(
            lambda: metric(port, "logvold_truncations_total", {"reason": "hole"}) >= 1,
            60,
            "the hole skipped",
        )
        wait_for(lambda: active.stat().st_size - _committed(vol) < 64 * 1024, 60, "cut")
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        hwm = _vm_hwm_kib(daemon.proc.pid)
        assert hwm < 300 * 1024, hwm
        started = time.monotonic()
        assert daemon.stop(30) == 0, daemon.log_text()[-3000:]
        stopped_s = time.monotonic() - started
    assert stopped_s < 30
    assert max(p.stat().st_size for p in regular_segments(vol)) <= 64 * 1024
    _exactly_once(vol, 2000)
    st = active.stat()
    assert st.st_size > 2**40 and st.st_blocks * 512 <= 64 * 1024
    print(
        f"\n1 TiB sparse: VmHWM={hwm} KiB, stop {stopped_s:.2f} s, "
        f"{len(regular_segments(vol))} segments"
    )


def _committed(vol: Path) -> int:
    from logvold.fileio.state import load_state

    state = load_state(vol, "app.log")
    return 0 if state is None else state.physical_committed


@pytest.mark.parametrize("max_size", ["64Ki", "1Mi"])
def test_a_fast_writer_never_makes_a_segment_over_maxsize(tmp_path: Path, max_size: str) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    config = config_for(tmp_path, vol, port, maxSize=max_size)
    count = 80_000
    limit = 64 * 1024 if max_size == "64Ki" else 2**20
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "ready")
        assert writer(vol / "app.log", count=count, rate=0, max_chunk=65536).wait(180) == 0
        wait_for(
            lambda: (vol / "app.log").stat().st_size - _committed(vol) < limit, 60, "backlog cut"
        )
        assert daemon.stop(30) == 0, daemon.log_text()[-3000:]
    segs = regular_segments(vol)
    biggest = max(p.stat().st_size for p in segs)
    assert biggest <= limit, biggest
    _exactly_once(vol, count)
    print(f"\nmaxSize={max_size}: {len(segs)} segments, max/maxSize={biggest / limit:.2f}")
