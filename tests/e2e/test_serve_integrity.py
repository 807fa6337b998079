"""`logvold serve` as a process against real writer processes: every 64 KiB rotated,
a small maxTotalSize truncating, compression on; then the stream is read back
independently and every event is checked (0 lost, 0 duplicated, 0 split)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.serve_support import (
    free_port,
    metric,
    running,
    stream_bytes,
    wait_for,
    write_config,
    writer,
)
from tests.support.events import event_stream, split_raw, verify

DELIM = b"\n\n"
pytestmark = pytest.mark.slow


def run_once(config: Path, log: Path) -> None:
    from tests.e2e.serve_support import Daemon

    once = Daemon(["--config", str(config), "--once"], log)
    assert once.wait(60) == 0, once.log_text()


@pytest.mark.parametrize("mode", ["append", "offset"])
def test_rotation_and_truncation_keep_exactly_the_newest_whole_events(
    tmp_path: Path, mode: str
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    budget = 256 * 1024
    config = write_config(
        tmp_path / "cfg.yaml",
        vol,
        listen=f"127.0.0.1:{port}",
        policy={"maxSize": "64Ki", "maxFiles": 0, "maxTotalSize": budget, "delimiter": "\n\n"},
    )
    count = 6000
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        w = writer(vol / "app.log", count=count, rate=150, mode=mode)
        assert w.wait(120) == 0
        wait_for(lambda: metric(port, "logvold_rotations_total") >= 5, 60, "rotations")
        rotations = metric(port, "logvold_rotations_total")
        assert daemon.stop() == 0
    run_once(config, tmp_path / "once.log")  # final retention over the live tail too

    segments, live = stream_bytes(vol, "app.log")
    kept = b"".join(segments) + live
    report = verify(split_raw([kept], DELIM), allow_missing_prefix=True)
    assert report.ok, report.summary()
    assert report.last_seq == count - 1
    assert report.first_seq is not None and report.first_seq > 0, "nothing was truncated"
    # Exactly the newest whole events that fit: the kept bytes fit the budget, and
    # one more (older) event would not.
    sizes = [len(e) for e in event_stream(count, seed=1, delimiter=DELIM)]
    assert len(kept) == sum(sizes[report.first_seq :])
    assert len(kept) <= budget < len(kept) + sizes[report.first_seq - 1]
    assert rotations >= 5


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_segments_lose_nothing(tmp_path: Path, compress: str) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    config = write_config(
        tmp_path / "cfg.yaml",
        vol,
        listen=f"127.0.0.1:{port}",
        policy={"maxSize": "64Ki", "maxFiles": 0, "compress": compress, "delimiter": "\n\n"},
    )
    count = 4000
    with running(["--config", str(config)], tmp_path / "daemon.log") as daemon:
        w = writer(vol / "app.log", count=count, rate=150)
        assert w.wait(120) == 0
        suffix = ".gz" if compress == "gzip" else ".zst"
        wait_for(
            lambda: metric(port, "logvold_compressions_total", {"algorithm": compress}) >= 3,
            60,
            "compressions",
        )
        daemon.signal(signal.SIGTERM)
        # Wait for the exit of this one SIGTERM: stop() would send a second one if the
        # shutdown is still running (slow on a loaded machine), and that ends it with -15.
        assert daemon.wait(60) == 0
    assert any(p.name.endswith(suffix) for p in vol.iterdir())
    segments, live = stream_bytes(vol, "app.log")
    report = verify(split_raw([b"".join(segments) + live], DELIM))
    assert report.ok, report.summary()
    assert (report.first_seq, report.last_seq, report.seen) == (0, count - 1, count)
