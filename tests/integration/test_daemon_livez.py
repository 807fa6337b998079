"""GET /livez of the real daemon (in-process, HTTP on 127.0.0.1) turns 503 when the
reconcile loop really stalls (its volume scan blocks a worker thread), recovers when the
scan returns, and a stalled event loop leaves a probe unanswered (the kubelet's timeout)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest

from logvold.config.serve_settings import ServeOptions
from logvold.core.policy import Config, ServerConfig, VolumeSpec
from logvold.daemon.lifecycle import Daemon
from logvold.sources.static import ScanReport
from logvold.telemetry.metrics import Metrics

DEADLINE_S = 60.0  # generous: the machine may be loaded; the stall timeout is 3 s


async def _poll_livez(url: str, want: int, body_starts: str = "") -> str:
    """Poll until /livez answers `want` with a body starting `body_starts` (a loaded machine
    may show a late heartbeat or a slow pass on the way; only the end state is asserted)."""
    deadline = time.monotonic() + DEADLINE_S
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as response:
                body = await response.text()
                if response.status == want and body.startswith(body_starts):
                    return body
            assert time.monotonic() < deadline, f"/livez never answered {want}: {body!r}"
            await asyncio.sleep(0.1)


def _daemon(tmp_path: Path) -> Daemon:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "app.log").write_bytes(b"one\ntwo\n")
    config = Config(
        server=ServerConfig(listen="127.0.0.1:0"),
        volumes=(VolumeSpec(name="v", path=str(vol)),),
        rescan_interval_s=0.2,
    )
    return Daemon(config, ServeOptions(config_path=None, stall_timeout_s=3.0), metrics=Metrics())


@pytest.mark.asyncio
async def test_livez_turns_503_while_a_reconcile_pass_is_stuck(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    await daemon.start()
    task = asyncio.create_task(daemon.run())
    assert daemon._runner is not None
    url = f"http://127.0.0.1:{daemon._runner.addresses[0][1]}/livez"
    try:
        assert await _poll_livez(url, 200) == "ok\n"
        release = threading.Event()
        entered = threading.Event()
        real_scan = daemon.source.scan

        def stuck_scan(volumes: Iterable[str] | None = None) -> ScanReport:
            entered.set()
            release.wait(DEADLINE_S * 2)  # a worker thread blocked, as on a hung mount
            return real_scan(volumes)

        daemon.source.scan = stuck_scan  # type: ignore[method-assign]
        body = await _poll_livez(url, 503, "reconcile stuck: a pass has run for ")
        assert entered.is_set()
        assert "(a volume scan or the survey does not return)" in body
        assert daemon.is_ready()  # readiness is another question: still serving logs
        daemon.source.scan = real_scan  # type: ignore[method-assign]
        release.set()
        assert await _poll_livez(url, 200) == "ok\n"
    finally:
        daemon.request_stop()
        assert await task == 0
        await daemon.stop()


@pytest.mark.asyncio
async def test_a_stalled_event_loop_leaves_the_probe_unanswered(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    await daemon.start()
    task = asyncio.create_task(daemon.run())
    assert daemon._runner is not None
    url = f"http://127.0.0.1:{daemon._runner.addresses[0][1]}/livez"
    outcome: list[str] = []
    sending = threading.Event()

    def probe() -> None:  # the kubelet: a GET with a timeout, from outside the loop
        sending.set()
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                outcome.append(str(response.status))
        except (TimeoutError, urllib.error.URLError) as exc:
            outcome.append(f"failed: {exc}")

    try:
        assert await _poll_livez(url, 200) == "ok\n"
        prober = threading.Thread(target=probe)
        prober.start()
        assert sending.wait(DEADLINE_S)
        # Stall the event loop itself, as a blocking call in a handler would.
        stall_until = time.monotonic() + 30.0  # ends as soon as the probe gave up
        while time.monotonic() < stall_until and prober.is_alive():
            time.sleep(0.05)  # the stall under test: a blocking call in the loop
        prober.join(DEADLINE_S)
        assert outcome and outcome[0].startswith("failed: "), outcome
        assert await _poll_livez(url, 200) == "ok\n"  # alive again once it runs
    finally:
        daemon.request_stop()
        assert await task == 0
        await daemon.stop()
