"""The container image's default command (Dockerfile ENTRYPOINT + CMD) as a real process:
it needs no config file, manages a mounted /logs on built-in defaults, and listens on
loopback only unless told otherwise (docs/DEPLOY.md, "The container image")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.test_dockerfile import INSTRUCTIONS_OF_FILE, stages


def test_default_command_runs_on_built_in_defaults_over_a_mounted_logs_dir(tmp_path: Path) -> None:
    """The image's ENTRYPOINT + CMD, run as the image would (the installed `logvold`), with
    /logs standing for a mounted directory: no config file needed, the file in it is
    managed, and nothing listens beyond loopback by default."""
    final = {word: a for word, a in stages(INSTRUCTIONS_OF_FILE)[-1]}
    command = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    assert "--config" not in command and "/logs" in command
    assert "install -d -o 10001 -g 10001" in final["RUN"] and " /logs" in final["RUN"]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_bytes(b"hello\n")
    argv = [str(Path(sys.executable).with_name(command[0])), *command[1:]]
    argv = [str(logs) if a == "/logs" else a for a in argv]
    printed = subprocess.run(
        [*argv, "--print-config"], capture_output=True, text=True, timeout=60, check=False
    )
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["server"]["listen"] == "127.0.0.1:8642"
    assert config["volumes"] == [{"name": "local", "path": str(logs), "namespace": "default"}]
    once = subprocess.run(
        [*argv, "--once"], capture_output=True, text=True, timeout=60, check=False
    )
    assert once.returncode == 0, once.stderr
    assert "stream added" in once.stderr and str(logs / "app.log") in once.stderr
