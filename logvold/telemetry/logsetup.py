"""logvold's own log lines: structured (logfmt or JSON), one line per record.

Extra fields passed with `extra={...}` become keys of the line, so a message
stays constant and the variable parts are machine-readable.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("logfmt", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_HANDLER_NAME = "logvold-structured"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "time": datetime.fromtimestamp(record.created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            out[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        out["traceback"] = logging.Formatter().formatException(record.exc_info)
    return out


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    # Names read from disk may carry surrogate escapes; never let them break a line.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if text and not any(c in text for c in ' ="\\\n\t') and text.isprintable():
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """`time=... level=info logger=... msg="..." key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as logfmt."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            k: v
            if isinstance(v, int | float | bool | None)
            else str(v).encode("utf-8", "backslashreplace").decode("utf-8")
            for k, v in _fields(record).items()
        }
        return json.dumps(fields, ensure_ascii=False)


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """(Re)configure the root logger; idempotent, so a reload can change format or level."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.set_name(_HANDLER_NAME)
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root.setLevel(LEVELS[level.lower()])
    # aiohttp's access log would write one line per request: keep it at warning.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
