"""50 SIGKILLs of `logvold serve` while a writer keeps writing and the daemon keeps
rotating (every 64 KiB) and gzipping; restarted each time. Then every event
must be there exactly once. The 200-kill version is benchmarks/daemon.py's."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from logvold.fileio.state import load_state
from tests.e2e.serve_support import Daemon, free_port, stream_bytes, wait_for, write_config, writer
from tests.support.events import split_raw, verify

DELIM = b"\n\n"
KILLS = 50
MAX_SIZE = 64 * 1024
pytestmark = pytest.mark.slow


def test_fifty_sigkills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    config = write_config(
        tmp_path / "cfg.yaml",
        vol,
        listen=f"127.0.0.1:{port}",
        rescan="1s",
        policy={
            "maxSize": "64Ki",
            "maxFiles": 0,
            "compress": "gzip",
            "delayCompress": False,
            "delimiter": "\n\n",
        },
    )
    rng = random.Random(4)
    w = writer(vol / "app.log", count=10**7, rate=60)
    mid_step = leftovers = 0
    started = time.monotonic()
    try:
        for i in range(KILLS):
            d = Daemon(
                ["--config", str(config), "--log-level", "warning"], tmp_path / f"daemon-{i}.log"
            )
            # Kill somewhere in startup recovery or in the rotate/compress steps after it.
            time.sleep(rng.uniform(0.3, 1.2))
            d.kill()
            assert d.proc.returncode == -signal.SIGKILL, d.log_text()
            state = load_state(vol, "app.log")
            mid_step += state is not None and state.intent is not None
            leftovers += any(p.name.endswith(".tmp") for p in vol.iterdir())
        assert w.poll() is None, "the writer should outlive the kill loop"
    finally:
        w.terminate()
        w.wait(10)
    kill_loop_s = time.monotonic() - started

    # A last clean run settles every intent, rotates and compresses what is due. How many
    # segments the kill loop left depends on how fast a loaded machine let the writer and
    # the daemon run; what must hold is that the clean run converges: no tmp file, every
    # closed segment gzipped (delayCompress: false), nothing of maxSize left un-rotated.
    d = Daemon(["--config", str(config)], tmp_path / "final.log")
    d.wait_serving()

    def settled() -> bool:
        names = os.listdir(vol)
        segs = segments_of("app.log", names)
        if not segs or any(n.endswith(".tmp") for n in names):
            return False
        if any(s.compression != "gz" for s in segs):
            return False
        try:
            _, live = stream_bytes(vol, "app.log")
        except FileNotFoundError:  # a segment compressed under the listing: look again
            return False
        return len(live) < MAX_SIZE

    wait_for(settled, 120, "every due rotation and compression done")
    assert d.stop() == 0, d.log_text()
    state = load_state(vol, "app.log")
    assert state is not None and state.intent is None

    segments, live = stream_bytes(vol, "app.log")
    data = b"".join(segments) + live
    whole = data[: data.rfind(DELIM) + len(DELIM)]  # the writer was stopped mid-event
    report = verify(split_raw([whole], DELIM))
    assert report.ok, report.summary()
    assert report.first_seq == 0
    assert report.last_seq is not None and report.seen == report.last_seq + 1
    gz = [p for p in os.listdir(vol) if p.endswith(".gz")]
    assert len(gz) == len(segments) >= 1
    print(
        f"\nkill -9 loop: {KILLS} kills in {kill_loop_s:.1f} s, {mid_step} with a step "
        f"intent in the state file, {leftovers} with tmp files; {report.seen} events, "
        f"{len(segments)} segments ({len(gz)} gzipped), 0 lost, 0 duplicated"
    )
