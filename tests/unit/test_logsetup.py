"""logvold's own log lines: logfmt and JSON, extras as keys, hostile values escaped."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from logvold.telemetry.logsetup import configure_logging


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    for h in list(root.handlers):
        if h.get_name() == "logvold-structured":
            root.removeHandler(h)
    yield stream
    for h in list(root.handlers):
        if h.get_name() == "logvold-structured":
            root.removeHandler(h)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_logfmt_quotes_and_escapes(capture: io.StringIO) -> None:
    configure_logging("logfmt", "info", capture)
    logging.getLogger("logvold.x").info(
        "rotated %s",
        "a.log",
        extra={"stream": "ns/pod/c", "path": 'we ird"\n\udcff.log', "bytes": 12},
    )
    logging.getLogger("logvold.x").debug("hidden")
    line = capture.getvalue()
    assert line.count("\n") == 1
    assert line.startswith("time=") and " level=info logger=logvold.x " in line
    assert 'msg="rotated a.log"' in line and "stream=ns/pod/c" in line and "bytes=12" in line
    assert 'path="we ird\\"\\n\\\\udcff.log"' in line


def test_json_lines_and_reconfigure(capture: io.StringIO) -> None:
    configure_logging("json", "debug", capture)
    configure_logging("json", "debug", capture)  # idempotent: still one handler
    log = logging.getLogger("logvold.y")
    log.debug("checked", extra={"n": 3})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(x) for x in capture.getvalue().splitlines())
    assert first["msg"] == "checked" and first["n"] == 3 and first["level"] == "debug"
    assert second["error"] == "ValueError: bad" and "Traceback" in second["traceback"]


def test_bad_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "info")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "loud")
