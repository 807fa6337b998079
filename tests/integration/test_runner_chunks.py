"""`logvold run -format=cri|json-file` encodes whole reads at once (the chunk path):
multi-line, sequence-numbered events from stdout and stderr, written in random chunks
of up to 256 KiB that cut events and lines anywhere, some lines longer than
-max-event-size, through rotations every 24 KiB. Every event of each stream is found
once, whole and in order; a segment ends inside a line only where a line longer than
-max-event-size was cut, and those cuts are the only P pieces (or partial entries)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_runner_integrity import ENV, REPO, RUNNER, stream_pieces
from tests.support.containerd import check_driver_output, driver_events

MAX_EVENT = 32 * 1024
CHILD = """
import os, random, sys
rng = random.Random(int(sys.argv[3]))
data = {1: open(sys.argv[1], "rb").read(), 2: open(sys.argv[2], "rb").read()}
pos = {1: 0, 2: 0}
while any(pos[fd] < len(data[fd]) for fd in data):
    fd = rng.choice([fd for fd in data if pos[fd] < len(data[fd])])
    end = min(len(data[fd]), pos[fd] + rng.choice([1, 7, 300, 4096, 65536, 262144]))
    view = memoryview(data[fd])[pos[fd]:end]
    while view:
        view = view[os.write(fd, view):]
    pos[fd] = end
"""


@pytest.mark.parametrize("fmt", ["cri", "json-file"])
def test_chunk_path_keeps_every_multiline_event_across_rotations(tmp_path: Path, fmt: str) -> None:
    counts = {"stdout": 2500, "stderr": 1500}
    out = driver_events(counts["stdout"], stream="stdout", seed=11, long_every=400)
    err = driver_events(counts["stderr"], stream="stderr", seed=12, long_every=500)
    (tmp_path / "out.bin").write_bytes(out)
    (tmp_path / "err.bin").write_bytes(err)
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    done = subprocess.run(
        [*RUNNER, f"-log-file={log}", "-log-file-size=24Ki", f"-format={fmt}",
         f"-max-event-size={MAX_EVENT}", sys.executable, "-c", CHILD,
         str(tmp_path / "out.bin"), str(tmp_path / "err.bin"), "5"],
        env=ENV, cwd=REPO, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, b"")

    pieces = stream_pieces(log)
    assert len(pieces) > 50
    data = b"".join(d for _, d in pieces)
    result = check_driver_output(data, fmt, counts)
    for name, report in result.reports.items():
        assert report.ok, f"{name}: {report.summary()}"
    # The lines longer than -max-event-size, and only they, were cut into pieces.
    long_lines = sum(len(line) > MAX_EVENT for stream in (out, err) for line in stream.split(b"\n"))
    assert long_lines > 5
    cut_lines = 0
    for name, piece in pieces[:-1]:
        last = piece.rsplit(b"\n", 2)[-2]
        if not complete(last, fmt):
            assert piece_message_len(last, fmt) == MAX_EVENT, f"{name} ends inside a line"
            cut_lines += 1
    assert result.partial_lines >= long_lines  # each long line: at least one cut piece
    assert 0 < cut_lines <= result.partial_lines  # some segments did end in a long line


def complete(line: bytes, fmt: str) -> bool:
    if fmt == "cri":
        return line.split(b" ", 3)[2] == b"F"
    return str(json.loads(line)["log"]).endswith("\n")


def piece_message_len(line: bytes, fmt: str) -> int:
    if fmt == "cri":
        return len(line.split(b" ", 3)[3])
    return len(str(json.loads(line)["log"]).encode("utf-8", "surrogateescape"))
