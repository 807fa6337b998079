"""The status page at `GET /` in a real headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright) against a real `logvold serve` doing real work: the page lists the
streams and volumes, the live tail shows a line appended to the active file, and the
browser logs no console error. A screenshot goes to $LOGVOLD_STATUS_SCREENSHOT (the one in
docs/status-page.png was made this way) or the test's temp dir.

Hostile names are escaped: a second test renders a registry whose pod and container names
carry markup (the registry does not check names; pods choose theirs) and checks the HTML.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from logvold.core.streams import StreamKey, StreamRegistry
from tests.e2e.serve_support import free_port, metric, running, wait_for, write_config
from tests.support.api_server import RunningServer, get
from tests.support.events import event_stream
from tests.support.streams import build_stream, make_events

if TYPE_CHECKING:
    from playwright.sync_api import Playwright

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")


def _browser() -> AbstractContextManager[Playwright]:
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt package chromium)")
    return sync_playwright()


def test_status_page_lists_streams_and_tails_live_in_chromium(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    events = list(event_stream(400, seed=5, delimiter=b"\n", max_len=200))
    with (volume / "app.log").open("wb") as f:
        f.write(b"".join(events[:300]))
    (volume / "web.log").write_bytes(b"".join(events[300:]))
    port = free_port()
    cfg = write_config(
        tmp_path / "cfg.yaml",
        volume,
        listen=f"127.0.0.1:{port}",
        policy={
            "maxSize": "8Ki",
            "maxFiles": 3,
            "compress": "gzip",
            "delayCompress": False,
            "maxTotalSize": "64Ki",
        },
        rescan="1s",
        volume_extra="\n    maxTotalSize: 1Mi",
    )
    shot = Path(os.environ.get("LOGVOLD_STATUS_SCREENSHOT") or tmp_path / "status-page.png")
    with running(["--config", str(cfg)], tmp_path / "daemon.log"), _browser() as pw:
        wait_for(
            lambda: metric(port, "logvold_stream_segments", {"container": "app"}) >= 1,
            30,
            "a segment of app",
        )
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "requestfailed",
                lambda r: (
                    problems.append(f"request failed: {r.url} {r.failure}")
                    if "follow=true" not in r.url
                    else None
                ),
            )  # the tail is aborted on close
            resp = page.goto(f"http://127.0.0.1:{port}/")
            assert resp is not None and resp.status == 200
            assert "default-src 'none'" in resp.headers["content-security-policy"]
            rows = page.locator("#streams tbody tr")
            assert rows.count() == 2
            cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(2)]
            assert [c[:3] for c in cells] == [["default", "p", "app"], ["default", "p", "web"]]
            assert int(cells[0][4]) >= 1 and int(cells[0][6]) >= 1  # segments, rotations
            assert "gzip" in cells[0][3] and "/ 64.0 KiB" in cells[0][5]
            assert page.locator("#volumes tbody tr").count() == 1
            assert page.locator("#volumes tbody tr td").first.inner_text() == "v"
            page.select_option("#stream", "logs/default/p/app")
            # locator assertions (the page's CSP forbids eval, so no wait_for_function)
            expect = pytest.importorskip("playwright.sync_api").expect
            expect(page.locator("#tail-state")).to_have_text("following", timeout=15_000)
            last_old = events[299].split(b" ", 1)[0].decode()
            expect(page.locator("#tail")).to_contain_text(last_old, timeout=15_000)
            marker = "E#live-status-page-marker"
            t0 = time.monotonic()
            with (volume / "app.log").open("ab") as f:
                f.write(marker.encode() + b" appended while the page follows\n")
            expect(page.locator("#tail")).to_contain_text(marker, timeout=20_000)
            print(f"live tail latency: {time.monotonic() - t0:.3f} s")
            page.screenshot(path=str(shot), full_page=True)
            page.click("#stop")
            assert page.locator("#tail-state").inner_text() == "stopped"
            assert problems == []
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_status_page_escapes_pod_controlled_names(tmp_path: Path) -> None:
    registry = StreamRegistry()
    evil = '<img src=x onerror="alert(1)">'
    registry.put(
        build_stream(
            tmp_path / "s",
            make_events(5, "raw"),
            layout=(),
            key=StreamKey("ns", f"pod{evil}", f"c'&\"{evil}"),
        )
    )
    with RunningServer(registry) as srv:
        status, body, headers = get(srv.base + "/")
        status_js, js, js_headers = get(srv.base + "/status.js")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<img" not in text and "onerror=&quot;alert(1)&quot;" in text
    assert "pod&lt;img src=x" in text and "c&#x27;&amp;&quot;&lt;img" in text
    # the tail URL is percent-encoded, then HTML-escaped
    assert 'data-tail="logs/ns/pod%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E/' in text
    assert status_js == 200 and js_headers["Content-Type"].startswith("text/javascript")
    assert b"textContent" in js and b"innerHTML" not in js
