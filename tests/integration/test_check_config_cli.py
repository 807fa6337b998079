"""`logvold check-config FILE` as a real process: exit codes, messages, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"


UNIT = REPO / "packaging" / "systemd" / "logvold.service"
VOLUME_LINE = next(
    n
    for n, line in enumerate(EXAMPLE.read_text().splitlines(), 1)
    if line.strip().startswith("path: /var/log/pods-static/web")
)


def _check_config(
    *args: str, stdin: str | None = None, unit: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # The unit to judge volumes against is named, so the host's own install does not matter.
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOGVOLD_SYSTEMD_UNIT": str(unit or "")}
    return subprocess.run(
        [sys.executable, "-m", "logvold", "check-config", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )


def _assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def test_example_config_is_ok() -> None:
    result = _check_config(str(EXAMPLE))
    _assert_no_traceback(result)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"OK: {EXAMPLE}"
    assert lines[1].startswith("1 volume, 2 streams, ")
    if Path("/var/log/pods-static/web").is_dir():
        assert result.stderr == ""
    else:  # valid, but this host lacks the volume: a warning, not an error
        assert result.stderr.splitlines() == [
            f"warning: {EXAMPLE}:{VOLUME_LINE}: volumes[0].path: /var/log/pods-static/web"
            " does not exist; create it (mkdir -p /var/log/pods-static/web) or correct the path",
            "check-config: 1 warning for this host: `logvold serve` here refuses to start until"
            " it is fixed",
        ]


def test_example_volume_is_outside_the_shipped_units_writable_paths() -> None:
    result = _check_config(str(EXAMPLE), unit=UNIT)
    assert result.returncode == 0 and result.stdout.startswith(f"OK: {EXAMPLE}\n")
    assert (
        f"warning: {EXAMPLE}:{VOLUME_LINE}: volumes[0].path: /var/log/pods-static/web is"
        f" not writable under the systemd unit {UNIT} (ProtectSystem=strict makes it"
        " read-only); allow it with a drop-in: `systemctl edit logvold.service`, then"
        " under [Service] add ReadWritePaths=/var/log/pods-static/web"
    ) in result.stderr.splitlines()


def test_an_existing_volume_inside_the_units_paths_gives_no_warning(tmp_path: Path) -> None:
    unit = tmp_path / "logvold.service"
    unit.write_text(f"[Service]\nProtectSystem=strict\nReadWritePaths={tmp_path}\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"volumes:\n  - name: v\n    path: {tmp_path}\n")
    result = _check_config(str(config), unit=unit)
    assert (result.returncode, result.stderr) == (0, "")


def test_every_problem_is_printed_with_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """\
server:
  listen: "8642"
defaults:
  rotate: weekly
  maxsize: 10Mi
volumes:
  - name: web
    path: /var/log/web
    containers:
      - name: app
        policy:
          logs:
            delimiter: ""
            timezone: Mars/Olympus
""",
        encoding="utf-8",
    )
    result = _check_config(str(path))
    _assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2: server.listen: expected host:port such as 127.0.0.1:8642, 0.0.0.0:8642 or"
        ' [::1]:8642, got "8642"',
        f"{path}:4: defaults.rotate: expected Hourly, Daily, Never or a period such as 15m,"
        ' got "weekly"',
        f"{path}:5: defaults.maxsize: unknown key; did you mean maxSize?",
        f"{path}:13: volumes[0].containers[0].policy.logs.delimiter: must not be empty; the default"
        ' is "\\n"',
        f"{path}:14: volumes[0].containers[0].policy.logs.timezone: unknown time zone"
        ' "Mars/Olympus"; use an IANA name such as Europe/Berlin',
        f"check-config: 5 problems in {path}",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("defaults:\n  rotate: Daily\n    maxSize: 1Mi\n", encoding="utf-8")
    result = _check_config(str(path))
    _assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"{path}:3: invalid YAML: mapping values are not allowed here"
    )


def test_missing_file_is_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    result = _check_config(str(path))
    _assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"{path}: cannot read: No such file or directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of mode bits")
def test_unreadable_file_is_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("defaults: {}\n", encoding="utf-8")
    path.chmod(0)
    result = _check_config(str(path))
    _assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"{path}: cannot read: Permission denied"


def test_directory_is_a_clear_message(tmp_path: Path) -> None:
    result = _check_config(str(tmp_path))
    _assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"{tmp_path}: cannot read: Is a directory"


@pytest.mark.parametrize(
    "args",
    [pytest.param((), id="no-argument"), pytest.param(("a.yaml", "b.yaml"), id="two-files"),
     pytest.param(("--bogus",), id="unknown-option")],
)  # fmt: skip
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = _check_config(*args)
    _assert_no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: logvold check-config FILE")


def test_help_exits_0() -> None:
    result = _check_config("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: logvold check-config FILE")


def test_stdin_dash() -> None:
    result = _check_config("-", stdin="defaults:\n  maxFiles: many\n")
    _assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        '<stdin>:2: defaults.maxFiles: expected a whole number, got "many"'
    )
