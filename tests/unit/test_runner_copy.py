"""`logvold run -copy`: raw output is read through a buffer unless -copy=splice asks for
splice(2); a bad value is refused up front. Both paths keep every event whole:
tests/integration/test_runner_peek.py runs each; the splice path's drop on a full disk
(process._drop) is checked here against a real pipe."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from logvold.core.log_policy import LogPolicy
from logvold.fileio.rotating_writer import RotatingWriter
from logvold.runner.cli import FLAGS, main_run
from logvold.runner.goflags import parse
from logvold.runner.process import _drop


@pytest.mark.parametrize(("argv", "mode"), [([], "read"), (["-copy=splice"], "splice")])
def test_read_is_the_default_and_splice_is_asked_for(argv: list[str], mode: str) -> None:
    assert parse(FLAGS, [*argv, "true"]).values["copy"] == mode


def test_an_unknown_copy_mode_is_refused_before_anything_runs() -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main_run(["-copy=mmap", "-log-file=/nonexistent/dir/app.log", "true"], "logvold run")
    assert code == 2
    first = err.getvalue().splitlines()[0]
    assert "-copy" in first and "mmap" in first, first


def test_a_failed_splice_with_an_empty_pipe_keeps_the_half_written_event(
    tmp_path: Path,
) -> None:
    """-copy=splice on a full disk: when the pipe held nothing more to drop, nothing was
    dropped - the event a partial splice left half-written is kept, for its rest is still
    to come (cutting it back would leave that rest a fragment without its head)."""
    log = tmp_path / "app.log"
    writer = RotatingWriter(str(log), LogPolicy(max_size_bytes=1 << 20))
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        writer.write("stdout", b"whole 1\nhead of 2")  # as a partial splice leaves it
        assert _drop(r, writer) == -1  # nothing in the pipe: nothing dropped
        os.write(w, b" tail of 2\nwhole 3\n")
        assert _drop(r, writer) == len(b" tail of 2\nwhole 3\n")  # this one is dropped
        writer.write("stdout", b"whole 4\n")
    finally:
        writer.close()
        os.close(r)
        os.close(w)
    # The second drop took event 2's rest: its head is cut off the file, event 4 whole.
    assert log.read_bytes() == b"whole 1\nwhole 4\n"


def test_an_empty_pipe_then_more_output_completes_the_event(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    writer = RotatingWriter(str(log), LogPolicy(max_size_bytes=1 << 20))
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        writer.write("stdout", b"whole 1\nhead of 2")
        assert _drop(r, writer) == -1
        writer.write("stdout", b" tail of 2\n")  # the space came back before more output
    finally:
        writer.close()
        os.close(r)
        os.close(w)
    assert log.read_bytes() == b"whole 1\nhead of 2 tail of 2\n"
