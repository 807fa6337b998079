"""The four kube-log-runner README invocations give what their shell forms give:
the same file contents (appended), the same stdout and stderr, the same order
of interleaved stdout / stderr events."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.events import split_raw, verify

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# Alternates whole events between stdout and stderr, unbuffered: one pipe keeps their order.
CHILD = [sys.executable, "-m", "tests.support.writer", "--count", "300", "--stderr-tag", "X"]
CHILD += ["--max-len", "900"]
RUNNER = [sys.executable, "-m", "logvold", "run"]
PRELUDE = b"line already in the file\n"


def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, env=ENV, cwd=REPO, timeout=60, check=False)


def shell(redirections: str) -> subprocess.CompletedProcess[bytes]:
    return run(["/bin/sh", "-c", f"{shlex.join(CHILD)} {redirections}"])


def check_interleaved(data: bytes) -> None:
    events = list(split_raw([data]))
    assert len(events) == 600
    # Exactly alternating E, X, E, X ... as written: one pipe kept the order.
    assert [e[:1] for e in events] == [b"E", b"X"] * 300
    assert verify(e for e in events if e.startswith(b"E")).ok
    assert verify((e for e in events if e.startswith(b"X")), tag="X").ok


def test_no_log_file_is_2_and_1(tmp_path: Path) -> None:
    ours = run([*RUNNER, *CHILD])
    sh = shell("2>&1")
    assert ours.returncode == sh.returncode == 0
    assert ours.stdout == sh.stdout
    assert ours.stderr == sh.stderr == b""
    check_interleaved(ours.stdout)


# "direct": the child appends to the file itself; "-log-file-size=1Gi": through the
# one pipe and the rotating writer (the order must survive the pump too).
MODES = pytest.mark.parametrize(
    "flags",
    [["-log-file={}"], ["--log-file", "{}"], ["-log-file={}", "-log-file-size=1Gi"]],
    ids=["direct", "space", "pumped"],
)


@MODES
def test_log_file_is_append_and_2_and_1(tmp_path: Path, flags: list[str]) -> None:
    ours_file, sh_file = tmp_path / "ours.log", tmp_path / "sh.log"
    ours_file.write_bytes(PRELUDE)
    sh_file.write_bytes(PRELUDE)
    ours = run([*RUNNER, *(f.format(ours_file) for f in flags), *CHILD])
    sh = shell(f"1>>{sh_file} 2>&1")
    assert ours.returncode == sh.returncode == 0
    assert ours.stdout == sh.stdout == b""
    assert ours.stderr == sh.stderr == b""
    assert ours_file.read_bytes() == sh_file.read_bytes()
    check_interleaved(ours_file.read_bytes()[len(PRELUDE) :])


def test_also_stdout_is_tee_a(tmp_path: Path) -> None:
    ours_file, sh_file = tmp_path / "ours.log", tmp_path / "sh.log"
    ours_file.write_bytes(PRELUDE)
    sh_file.write_bytes(PRELUDE)
    ours = run([*RUNNER, f"-log-file={ours_file}", "-also-stdout", *CHILD])
    sh = shell(f"2>&1 | tee -a {sh_file}")
    assert ours.returncode == sh.returncode == 0
    assert ours.stdout == sh.stdout
    assert ours.stderr == sh.stderr == b""
    assert ours_file.read_bytes() == sh_file.read_bytes()
    check_interleaved(ours.stdout)


@MODES
def test_redirect_stderr_false_is_append_stdout_only(tmp_path: Path, flags: list[str]) -> None:
    ours_file, sh_file = tmp_path / "ours.log", tmp_path / "sh.log"
    ours_file.write_bytes(PRELUDE)
    sh_file.write_bytes(PRELUDE)
    ours = run([*RUNNER, *(f.format(ours_file) for f in flags), "-redirect-stderr=false", *CHILD])
    sh = shell(f"1>>{sh_file}")
    assert ours.returncode == sh.returncode == 0
    assert ours.stdout == sh.stdout == b""
    assert ours.stderr == sh.stderr
    assert ours_file.read_bytes() == sh_file.read_bytes()
    assert verify(split_raw([ours_file.read_bytes()[len(PRELUDE) :]])).seen == 300
    assert verify(split_raw([ours.stderr]), tag="X").seen == 300


def test_kube_log_runner_alias_same_bytes(tmp_path: Path) -> None:
    """The `kube-log-runner` entry point is the same program under the Go binary's name."""
    exe = Path(sys.executable).parent / "kube-log-runner"
    if not exe.exists():
        pytest.skip("kube-log-runner entry point not installed in this environment")
    log = tmp_path / "k.log"
    done = run([str(exe), f"--log-file={log}", *CHILD])
    assert done.returncode == 0 and done.stderr == b""
    check_interleaved(log.read_bytes())
