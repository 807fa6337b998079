"""Event integrity through `logvold run` with rotation every 64 KiB: every event found
exactly once, whole, in order across segments; bounded memory for a 100 MiB line."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from tests.support.events import decode_cri, decode_json_file, split_raw, verify

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
RUNNER = [sys.executable, "-m", "logvold", "run"]
WRITER = [sys.executable, "-m", "tests.support.writer", "--max-chunk", "8192"]
MAX_RSS_KIB = 100 * 1024
# Runs a command and prints the peak RSS (KiB) of its largest descendant: the runner.
PEAK_RSS = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def stream_pieces(log: Path) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every segment, oldest first, then the active file."""
    out = []
    for seg in segments_of(log.name, os.listdir(log.parent)):
        data = (log.parent / seg.filename).read_bytes()
        out.append((seg.filename, gzip.decompress(data) if seg.compression == "gz" else data))
    out.append((log.name, log.read_bytes()))
    return out


def run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [*RUNNER, *args], env=ENV, cwd=REPO, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    return done


@pytest.mark.parametrize("delimiter", ["\\n\\n", "\\x1e"], ids=["blank-line", "record-sep"])
def test_multiline_events_across_64k_segments(tmp_path: Path, delimiter: str) -> None:
    log = tmp_path / "app.log"
    count = 6000
    run(
        [
            f"-log-file={log}",
            "-log-file-size=64Ki",
            f"-delimiter={delimiter}",
            *WRITER,
            "--count",
            str(count),
            "--delimiter",
            delimiter,
        ]
    )
    delim = delimiter.encode().decode("unicode_escape").encode("latin-1")
    pieces = stream_pieces(log)
    assert len(pieces) > 10
    for name, data in pieces[:-1]:
        assert data.endswith(delim), f"{name} ends inside an event"
        assert len(data) >= 64 * 1024, f"{name} was cut before the size threshold"
        assert len(data) < 64 * 1024 + 1024, f"{name} ran on past the straddling event"
        # Each segment on its own is whole events: the first one starts at a sequence start.
        report = verify(split_raw([data], delim), allow_missing_prefix=True)
        assert report.ok and not report.corrupt, f"{name}: {report.summary()}"
    report = verify(split_raw((d for _, d in pieces), delim))
    assert report.ok and report.seen == count, report.summary()


def test_stdout_and_stderr_one_pipe_with_gzip_and_max_files(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    run(
        [
            f"-log-file={log}",
            "-log-file-size=64Ki",
            "-compress=gzip",
            "-max-files=5",
            *WRITER,
            "--count",
            "3000",
            "--stderr-tag",
            "X",
        ]
    )
    names = sorted(os.listdir(tmp_path))
    segs = segments_of(log.name, names)
    assert len(segs) == 5 and all(s.compression == "gz" for s in segs), names
    assert not [n for n in names if n.endswith(".tmp")]
    events = list(split_raw(d for _, d in stream_pieces(log)))
    out = verify((e for e in events if e.startswith(b"E")), allow_missing_prefix=True)
    err = verify((e for e in events if e.startswith(b"X")), tag="X", allow_missing_prefix=True)
    assert out.ok and out.last_seq == 2999, out.summary()
    assert err.ok and err.last_seq == 2999, err.summary()


def test_cri_keeps_streams_apart(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    run(
        [
            f"-log-file={log}",
            "-log-file-size=64Ki",
            "-format=cri",
            "-max-event-size=100",
            *WRITER,
            "--count",
            "1500",
            "--stderr-tag",
            "X",
            "--delimiter",
            "\\n",
        ]
    )
    pieces = stream_pieces(log)
    assert len(pieces) > 3
    tags = [line.split(b" ", 3)[2] for _, data in pieces for line in data.splitlines()]
    assert b"P" in tags  # events above 100 bytes were cut into P pieces, even across segments
    events = list(decode_cri(b"".join(d for _, d in pieces).splitlines()))
    out = verify(m for s, m in events if s == "stdout")
    err = verify((m for s, m in events if s == "stderr"), tag="X")
    assert out.ok and out.seen == 1500, out.summary()
    assert err.ok and err.seen == 1500, err.summary()


def test_flush_interval_json_file_and_log_file_age(tmp_path: Path) -> None:
    """-flush-interval fsyncs as it goes, json-file keeps the streams, and -log-file-age
    removes rotated files older than it (1ns: every one, as soon as it is closed)."""
    log = tmp_path / "app.log"
    run(
        [
            f"-log-file={log}",
            "-log-file-size=16Ki",
            "-flush-interval=10ms",
            "-format=json-file",
            "-log-file-age=1ns",
            *WRITER,
            "--count",
            "800",
            "--stderr-tag",
            "X",
        ]
    )
    assert os.listdir(tmp_path) == ["app.log"]
    events = list(decode_json_file(log.read_bytes().splitlines()))
    assert {s for s, _ in events} <= {"stdout", "stderr"}
    # What is left is the active file: a whole suffix of each stream (it may hold
    # no event of a stream, or none at all, if the last rotation came after it).
    out = verify((m for s, m in events if s == "stdout"), allow_missing_prefix=True)
    err = verify((m for s, m in events if s == "stderr"), allow_missing_prefix=True, tag="X")
    for report in (out, err):
        assert report.ok, report.summary()
        assert report.last_seq in (None, 799), report.summary()
    assert out.seen + err.seen < 2 * 800  # rotated files were removed by -log-file-age


def test_cri_stream_closed_early_while_the_other_rotates(tmp_path: Path) -> None:
    """stdout ends first; stderr keeps writing through many rotations."""
    log = tmp_path / "app.log"
    script = "exec 1>&-; i=0; while [ $i -lt 3000 ]; do echo line $i >&2; i=$((i+1)); done"
    run([f"-log-file={log}", "-log-file-size=8Ki", "-format=cri", "sh", "-c", script])
    pieces = stream_pieces(log)
    assert len(pieces) > 10
    events = list(decode_cri(b"".join(d for _, d in pieces).splitlines()))
    assert events == [("stderr", b"line %d" % i) for i in range(3000)]


@pytest.mark.parametrize("fmt", ["raw", "cri"])
def test_100mib_single_line_bounded_memory(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "app.log"
    line_mib = 100
    child = ["sh", "-c", f"head -c {line_mib * 2**20} /dev/zero | tr '\\0' x; echo; echo after"]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK_RSS,
            *RUNNER,
            f"-log-file={log}",
            "-log-file-size=16Mi",
            f"-format={fmt}",
            *child,
        ],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stdout.split()[-1])
    assert peak_kib < MAX_RSS_KIB, f"peak RSS {peak_kib} KiB"
    pieces = stream_pieces(log)
    assert len(pieces) >= 6  # cut at maxEventSize (1 MiB) pieces once past 16 MiB
    if fmt == "raw":
        data = b"".join(d for _, d in pieces)
        assert data == b"x" * (line_mib * 2**20) + b"\nafter\n"
        assert all(len(d) <= 17 * 2**20 for _, d in pieces)
    else:
        lines = [ln for _, d in pieces for ln in d.splitlines()]
        tags = [ln.split(b" ", 3)[2] for ln in lines]
        assert tags == [b"P"] * (line_mib - 1) + [b"F", b"F"]
        events = list(decode_cri(lines))
        assert [len(m) for _, m in events] == [line_mib * 2**20, 5]


def test_rotation_by_a_fixed_period(tmp_path: Path) -> None:
    """-rotate=1s (no size trigger): a rate-limited writer running ~3.5 s gets a segment
    per second, each cut at an event boundary, every event once."""
    log = tmp_path / "app.log"
    run(
        [
            f"-log-file={log}",
            "-rotate=1s",
            "-log-file-size=0",
            "-delimiter=\\n\\n",
            *WRITER,
            "--count",
            "3500",
            "--rate",
            "1400",
            "--max-chunk",
            "256",
            "--delimiter",
            "\\n\\n",
        ]
    )
    pieces = stream_pieces(log)
    assert 3 <= len(pieces) - 1 <= 20, [name for name, _ in pieces]  # ~1 per second run
    for name, data in pieces[:-1]:
        assert data.endswith(b"\n\n"), name  # each segment ends with a whole event
    report = verify(split_raw((d for _, d in pieces), b"\n\n"))
    assert report.ok and report.seen == 3500, report.summary()
