"""packaging/systemd/logvold.service checked by the real systemd-analyze (252)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "logvold.service"
MAX_EXPOSURE = 3.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's logvold: verify needs it to exist."""
    logvold = Path(sys.executable).with_name("logvold")
    assert logvold.exists(), f"{logvold} missing: pip install -e . first"
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/logvold serve --config /etc/logvold/config.yaml\n" in text
    copy = tmp_path / "logvold.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/logvold", f"ExecStart={logvold}"))
    return copy


def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    # verify exits 0 even for unknown keys or bad values: only stderr tells.
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_security_exposure_is_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(_unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    match = re.search(
        r"Overall exposure level for logvold\.service: (\d+\.\d+) (\w+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure} {match.group(2)}")
    assert exposure <= MAX_EXPOSURE
    assert match.group(2) == "OK"


def test_unit_has_the_settings_the_daemon_relies_on() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]  # sdnotify.Notifier sends from the main pid
    assert settings["WatchdogSec"] == ["30s"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["ReadWritePaths"] == ["/var/log/pods /var/lib/kubelet/pods /var/lib/logvold"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # AF_UNIX is what sd_notify needs; the datagram socket type is not filtered.
    assert "CAP_SYS_ADMIN" not in settings["CapabilityBoundingSet"][0]
    # Descriptors for many clients (the daemon raises soft to hard) and the socket's dir.
    assert int(settings["LimitNOFILE"][0]) >= 65536
    assert settings["RuntimeDirectory"] == ["logvold"]


def test_verify_would_catch_a_misspelt_setting(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    assert "ProtectSystm" in result.stderr  # why the test above asserts an empty stderr
