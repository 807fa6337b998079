"""`logvold run -copy`: raw output is read through a buffer unless -copy=splice asks for
splice(2); a bad value is refused up front. Both paths keep every event whole:
tests/integration/test_runner_peek.py runs each."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest

from logvold.runner.cli import FLAGS, main_run
from logvold.runner.goflags import parse


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
