"""`logvold run -copy`: raw output is spliced into big segments and read through a
buffer into small ones (auto), or as the flag says; a bad value is refused up front.
Both paths keep every event whole: tests/integration/test_runner_peek.py runs each."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest

from logvold.core.log_policy import LogPolicy
from logvold.runner.cli import main_run
from logvold.runner.process import SPLICE_MIN_SEGMENT, RunOptions, uses_splice


def options(copy: str, max_size: int) -> RunOptions:
    return RunOptions(
        argv=("true",),
        log_file="/tmp/app.log",
        copy=copy,  # type: ignore[arg-type]
        policy=LogPolicy(max_size_bytes=max_size),
    )


@pytest.mark.parametrize(
    ("copy", "max_size", "spliced"),
    [
        ("auto", 0, True),  # never cut by size: nothing to frame between cuts
        ("auto", SPLICE_MIN_SEGMENT, True),
        ("auto", 10 * SPLICE_MIN_SEGMENT, True),
        ("auto", SPLICE_MIN_SEGMENT - 1, False),
        ("auto", 100 * 1024, False),
        ("splice", 100 * 1024, True),
        ("read", 0, False),
        ("read", 10 * SPLICE_MIN_SEGMENT, False),
    ],
)
def test_auto_splices_only_segments_of_at_least_the_pipe_chunk(
    copy: str, max_size: int, spliced: bool
) -> None:
    assert uses_splice(options(copy, max_size)) is spliced


def test_an_unknown_copy_mode_is_refused_before_anything_runs() -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main_run(["-copy=mmap", "-log-file=/nonexistent/dir/app.log", "true"], "logvold run")
    assert code == 2
    first = err.getvalue().splitlines()[0]
    assert "-copy" in first and "mmap" in first, first
