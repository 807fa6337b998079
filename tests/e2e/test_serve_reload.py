"""Hot reload of a running `logvold serve`: SIGHUP and config file changes; a bad
config is rejected (logged with file:line, counted) and the old one keeps working;
SIGTERM exits 0 with the state written."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from logvold.core.layout import segments_of
from logvold.fileio.state import load_state
from tests.e2e.serve_support import free_port, http_get, metric, running, wait_for, write_config
from tests.support.events import event_stream

pytestmark = pytest.mark.slow


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


def append_events(path: Path, start: int, count: int) -> int:
    data = b"".join(event_stream(count, seed=start + 7, start=start))
    with path.open("ab") as f:
        f.write(data)
    return len(data)


def segment_count(vol: Path) -> int:
    return len(segments_of("app.log", os.listdir(vol)))


def reloads(port: int, result: str) -> float:
    return metric(port, "logvold_config_reloads_total", {"result": result})


def test_sighup_and_file_changes_reload_bad_configs_are_rejected(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = free_port()
    cfg = tmp_path / "cfg.yaml"

    def config_text(policy: dict[str, object]) -> str:
        write_config(cfg.with_suffix(".tmpl"), vol, listen=f"127.0.0.1:{port}", policy=policy)
        return cfg.with_suffix(".tmpl").read_text()

    cfg.write_text(config_text({"maxSize": "1Mi"}))
    active = vol / "app.log"
    with running(["--config", str(cfg)], tmp_path / "daemon.log") as daemon:
        append_events(active, 0, 600)  # ~100 KB: below 1 MiB
        wait_for(lambda: metric(port, "logvold_streams") == 1, 60, "the stream")
        assert segment_count(vol) == 0

        # 1. A valid change of the file reloads by itself and takes effect.
        atomic_write(cfg, config_text({"maxSize": "64Ki"}))
        wait_for(lambda: reloads(port, "success") == 1, 60, "file-change reload")
        # ~100 KB at 64Ki: cut into two maxSize segments at once.
        wait_for(lambda: segment_count(vol) >= 2, 60, "rotation under the new maxSize")
        first = segment_count(vol)

        # 2. SIGHUP re-reads even an unchanged file.
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: reloads(port, "success") == 2, 60, "SIGHUP reload")

        # 3. An invalid file is rejected: logged with file:line:key, counted, old config kept.
        atomic_write(cfg, config_text({"maxSize": "banana", "maxFiles": -1}))
        wait_for(lambda: reloads(port, "error") == 1, 60, "rejected file-change reload")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: reloads(port, "error") == 2, 60, "rejected SIGHUP reload")
        log = daemon.log_text()
        assert "config reload rejected" in log
        assert f"{cfg}:2: defaults.maxSize" in log
        assert "defaults.maxFiles" in log
        assert "Traceback" not in log
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        append_events(active, 600, 600)  # another ~100 KB: the old 64Ki policy still rotates
        wait_for(lambda: segment_count(vol) > first, 60, "rotation under the kept config")
        assert reloads(port, "success") == 2

        # 4. SIGTERM: exit 0, the state file holds the committed offset.
        assert daemon.stop() == 0
    state = load_state(vol, "app.log")
    assert state is not None and state.intent is None and state.committed_offset > 0
    assert "logvold stopped" in daemon.log_text()
