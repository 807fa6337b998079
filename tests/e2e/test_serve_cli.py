"""`logvold serve` on the command line: built-in defaults, --print-config, --once,
--log-format json, exit codes of bad configs and bad usage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logvold.config.yaml_file import load_config_text
from logvold.core.layout import segments_of
from tests.e2e.serve_support import ROOT, free_port, http_get, running, wait_for, write_config
from tests.support.events import event_stream

pytestmark = pytest.mark.slow


def serve(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "logvold", "serve", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_builtin_defaults_serve_the_logs_dir_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    with running(
        ["--listen", f"127.0.0.1:{port}"], tmp_path / "daemon.log", cwd=tmp_path
    ) as daemon:
        assert (tmp_path / "logs").is_dir()  # created when missing
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, "readyz")
        (tmp_path / "logs" / "app.log").write_bytes(b"".join(event_stream(10)))

        def listed() -> bool:
            code, body = http_get(f"http://127.0.0.1:{port}/logs/")
            return code == 200 and b'"app"' in body and b'"local"' in body

        wait_for(listed, 60, "the new file listed under /logs/")
        code, body = http_get(f"http://127.0.0.1:{port}/logs/default/local/app")
        assert code == 200 and body == b"".join(event_stream(10))
        assert daemon.stop() == 0
    assert "level=info" in daemon.log_text() and "logvold serving" in daemon.log_text()


def test_print_config_shows_the_effective_config(tmp_path: Path) -> None:
    result = serve("--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = load_config_text(result.stdout, "printed.yaml")
    assert config.server.listen == "127.0.0.1:8642"
    assert [(v.name, v.path) for v in config.volumes] == [("local", "./logs")]
    assert not (tmp_path / "logs").exists()  # printing starts nothing
    result = serve("--print-config", "--logs-dir", "/srv/logs", "--listen", "0.0.0.0:9000")
    config = load_config_text(result.stdout, "printed.yaml")
    assert (config.server.listen, config.volumes[0].path) == ("0.0.0.0:9000", "/srv/logs")


def test_bad_config_exits_2_with_every_problem_located(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "server: {listen: '127.0.0.1:1'}\n"
        "defaults:\n"
        "  maxSize: huge\n"
        "  rotate: Weekly\n"
        "volumes:\n"
        "  - name: v\n"
    )
    result = serve("--config", str(cfg))
    assert result.returncode == 2
    assert f"{cfg}:3: defaults.maxSize" in result.stderr
    assert f"{cfg}:4: defaults.rotate" in result.stderr
    assert "volumes[0]" in result.stderr and "path" in result.stderr
    assert "Traceback" not in result.stderr
    missing = serve("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    "args",
    [["--listen", "nonsense"], ["--bogus"], ["--log-format", "xml"], ["--rotation-workers", "0"]],
    ids=["listen", "unknown-flag", "log-format", "workers"],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = serve(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_once_rotates_compresses_and_exits(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    data = b"".join(event_stream(2000))
    (vol / "app.log").write_bytes(data)
    cfg = write_config(
        tmp_path / "cfg.yaml",
        vol,
        listen="127.0.0.1:1",
        policy={"maxSize": "64Ki", "compress": "zstd", "delayCompress": False},
    )
    result = serve("--config", str(cfg), "--once", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    segments = segments_of("app.log", os.listdir(vol))
    # Cut in maxSize (64Ki) pieces at once, each compressed.
    assert len(segments) >= len(data) // (64 * 1024)
    assert {s.compression for s in segments} == {"zst"}
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "logger", "msg"} <= set(lines[0])
    assert any(line["msg"] == "logvold stopped" for line in lines)
    # At the default level the daemon says what it did, and --once names no listener.
    by_msg = {line["msg"]: line for line in lines}
    assert by_msg["stream added"]["stream"] == "default/p/app"
    assert by_msg["stream added"]["path"] == str(vol / "app.log")
    rotated = by_msg["stream rotated"]
    assert rotated["level"] == "info" and rotated["reason"] == "size"
    assert rotated["segment"].startswith("app.log.") and rotated["bytes"] > 0
    assert "listen" not in by_msg["logvold checking every stream once"]
    assert "logvold serving" not in by_msg
    # Nothing is due any more: a second pass changes nothing.
    before = sorted(os.listdir(vol))
    assert serve("--config", str(cfg), "--once").returncode == 0
    assert sorted(os.listdir(vol)) == before


def test_listen_address_in_use_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve("--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: address already in use; " in result.stderr
    assert "Errno" not in result.stderr
    assert "logvold stopped" not in result.stderr  # it never started


def test_serve_refuses_a_missing_volume_with_check_configs_words(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    cfg = write_config(tmp_path / "cfg.yaml", missing, listen="127.0.0.1:1")
    env = {"LOGVOLD_SYSTEMD_UNIT": ""}
    result = serve("--config", str(cfg), env=env)
    assert result.returncode == 2
    words = f"volumes[0].path: {missing} does not exist; create it (mkdir -p {missing})"
    assert words in result.stderr and "nothing started" in result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "logvold", "check-config", str(cfg)],
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0 and check.stdout.startswith("OK: ")
    assert f"warning: {cfg}:" in check.stderr and words in check.stderr
    assert not missing.exists()


def test_serve_refuses_a_volume_the_systemd_unit_cannot_write(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    unit = tmp_path / "logvold.service"
    unit.write_text("[Service]\nProtectSystem=strict\nReadWritePaths=/var/log/pods\n")
    cfg = write_config(tmp_path / "cfg.yaml", vol, listen="127.0.0.1:1")
    result = serve("--config", str(cfg), "--once", env={"LOGVOLD_SYSTEMD_UNIT": str(unit)})
    assert result.returncode == 2
    assert (
        f"{vol} is not writable under the systemd unit {unit} (ProtectSystem=strict makes "
        f"it read-only); allow it with a drop-in"
    ) in result.stderr
    (tmp_path / "logvold.service.d").mkdir()
    (tmp_path / "logvold.service.d" / "volumes.conf").write_text(
        f"[Service]\nReadWritePaths={vol}\n"
    )
    result = serve("--config", str(cfg), "--once", env={"LOGVOLD_SYSTEMD_UNIT": str(unit)})
    assert result.returncode == 0, result.stderr
