"""Whole-chunk encoding of CRI lines and docker json-file entries for the writers.

A writer reads up to 1 MiB at a time and stamps everything it read with one time,
as containerd's CRI writer stamps a read. Encoding each line of it in Python costs
more than the copy itself, so a chunk of whole lines whose messages all fit in one
line is encoded by a few C-level passes over the whole chunk: `bytes.replace` of the
newline with "end of this line + head of the next" (cri), or the json module's C
string escaper over the whole chunk with the newlines swapped for a sentinel first
(json-file). Everything else - a line continuing the previous chunk, lines longer
than the line limit, events past maxEventSize - stays per event in the writer.
The bytes are exactly what `formats.encode_cri_line` / `encode_json_entry` make for
each line (tests compare them over generated input).
"""

from __future__ import annotations

import json.encoder
from collections.abc import Callable
from typing import Literal

from logvold.core.formats import encode_cri_line, format_rfc3339nano_bytes

LineFormat = Literal["cri", "json-file"]

_encode_basestring: Callable[[str], str] = json.encoder.encode_basestring
"""The json module's C escaper (what json.dumps(ensure_ascii=False) runs on a str)."""
_SENTINEL = b"\x7f"
"""Stands for a newline while the json escaper runs: it passes DEL through unescaped,
and a chunk holding a DEL of its own takes the per-event path instead."""
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"))
_GO_ESCAPES_WIDE = (("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_JSON_HEAD = b'{"log":'


class ChunkEncoder:
    """Encodes whole lines of one stream read at one time: `encode()` -> (head, body).

    The encoding of the lines is `head + body[:end]`, `end` being just after the
    body's last newline; each newline of the input is the end of one output line,
    and after each one (also the last) the body holds the head of the next. So the
    lines after the first newline alone are `body[body.find(b"\\n") + 1 : end]`,
    and an output line ends at every newline of the body: the places to rotate.
    """

    def __init__(self, fmt: LineFormat) -> None:
        if fmt not in ("cri", "json-file"):
            raise ValueError(f"no line encoding for format {fmt!r}")
        self.fmt = fmt
        self._key: tuple[str, int] | None = None
        self._head = b""
        self._sep: bytes | str = b""

    def encode(self, stream: str, ts: int, data: bytes) -> tuple[bytes, bytes] | None:
        """(head, body) for `data`'s lines as full events; None when a chunk cannot be
        done in whole (json-file: it holds a DEL byte) and the caller encodes per event.

        Bytes after the last newline are encoded too (they follow the last head) and
        must not be written: they are the start of a line still to come.
        """
        if self._key != (stream, ts):
            self._frame(stream, ts)
        if self.fmt == "cri":
            assert isinstance(self._sep, bytes)
            return self._head, data.replace(b"\n", self._sep)
        if _SENTINEL in data:
            return None
        assert isinstance(self._sep, str)
        text = _encode_basestring(
            data.replace(b"\n", _SENTINEL).decode("utf-8", "surrogateescape")
        )
        # Go's encoding/json also escapes these (HTML safety); dockerd's output has them.
        for char, escaped in _GO_ESCAPES:
            if char in text:
                text = text.replace(char, escaped)
        if not text.isascii():
            for char, escaped in _GO_ESCAPES_WIDE:
                if char in text:
                    text = text.replace(char, escaped)
        # `"` opened the string; each newline closes an entry and opens the next.
        text = text.replace("\x7f", self._sep)
        # Bytes that are not UTF-8 came back as lone surrogates: `\\udcXX`, as before.
        return _JSON_HEAD, text.encode("utf-8", "backslashreplace")

    def _frame(self, stream: str, ts: int) -> None:
        self._key = (stream, ts)
        if self.fmt == "cri":
            head = encode_cri_line(stream, ts, b"")[:-1]  # "<time> <stream> F "
            self._head = head
            self._sep = b"\n" + head
        else:
            time = format_rfc3339nano_bytes(ts).decode("ascii")
            self._head = _JSON_HEAD
            self._sep = f'\\n","stream":"{stream}","time":"{time}"}}\n{{"log":"'


def long_lines(data: bytes, start: int, end: int, max_line: int) -> list[tuple[int, int]]:
    """Lines of `data[start:end]` (whole lines: `start` begins one, `end` follows a
    newline) whose message is longer than `max_line`, as (start, end-after-newline).

    Looks for a newline in each aligned window of (max_line + 2) // 2 bytes: a run of
    more than max_line bytes without one contains a whole window, so when every
    window has a newline (the usual case) there is no long line, found in a few
    hundred C-level `find`s per MiB instead of measuring every line.
    """
    window = (max_line + 2) // 2
    found: list[tuple[int, int]] = []
    j = start
    while j + window <= end:
        if data.find(b"\n", j, j + window) >= 0:
            j += window
            continue
        line_start = data.rfind(b"\n", start, j) + 1 or start
        nl = data.find(b"\n", j + window, end)
        line_end = nl + 1 if nl >= 0 else end
        if line_end - 1 - line_start > max_line:
            found.append((line_start, line_end))
        j = line_end
    return found
