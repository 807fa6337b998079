"""containerd's shim closes the container's pipes and then sends SIGTERM: whenever that
signal lands - while the driver drains, closes its file or is already on its way
out - the driver must drain, close and exit 0, never die by the signal (-15), and
every event the container wrote must be in the log exactly once."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.integration.test_driver_protocol import Shim, read_stream, shims, spawn_like_shim
from tests.support.containerd import EVENT_DELIMITER, check_driver_output, driver_events
from tests.support.events import split_raw, verify

__all__ = ["shims"]  # the fixture, imported for the tests below

ROUNDS = 20


@pytest.mark.parametrize("fmt", ["cri", "json-file", "raw"])
def test_sigterm_right_after_the_pipes_close_exits_0_with_every_event(
    tmp_path: Path, shims: list[Shim], fmt: str
) -> None:
    rng = random.Random(fmt)
    statuses = []
    for round_no in range(ROUNDS):
        counts = {"stdout": rng.randint(1, 300), "stderr": rng.randint(0, 100)}
        out = driver_events(counts["stdout"], stream="stdout", seed=round_no)
        err = driver_events(counts["stderr"], stream="stderr", seed=1000 + round_no)
        log = tmp_path / f"r{round_no}.log"
        delimiter = ["delimiter", "\\x1e\\n"] if fmt == "raw" else []
        shim = spawn_like_shim(
            [
                "format",
                fmt,
                "log-path",
                str(log),
                "max-size",
                "16Ki",
                "max-file",
                "1000",
                *delimiter,
            ],
            container_id=f"c{round_no}",
            namespace="default",
        )
        shims.append(shim)
        shim.wait_ready()
        # The whole output (< the 64 KiB pipe buffer: writing never blocks) ...
        for fd, data in ((shim.stdout_w, out), (shim.stderr_w, err)):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:32768]) :]
        # ... then what the shim does on task delete: close its ends, then SIGTERM. The
        # signal lands at a different moment each round: at once, while the driver
        # drains or closes its file, or as it is leaving (a 0-57 ms sweep).
        shim.close_container_ends()
        time.sleep(round_no * 0.003)
        shim.proc.send_signal(signal.SIGTERM)
        _, stderr = shim.proc.communicate(timeout=60)
        statuses.append(shim.proc.returncode)
        assert stderr == b"", stderr
        data, _files = read_stream(log)
        if fmt == "raw":
            # One shared file: each stream's events whole, in order, once.
            bodies = list(split_raw([data], EVENT_DELIMITER))
            for name, tag in (("stdout", "O"), ("stderr", "R")):
                mine = [b for b in bodies if not b.startswith(b"R#" if tag == "O" else b"O#")]
                report = verify(mine, tag=tag, expected=range(counts[name]))
                assert report.ok, f"round {round_no} {name}: {report.summary()}"
        else:
            result = check_driver_output(data, fmt, counts)
            for name, report in result.reports.items():
                assert report.ok, f"round {round_no} {name}: {report.summary()}"
    assert statuses == [0] * ROUNDS
