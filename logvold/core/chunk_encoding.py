"""Whole-chunk encoding of CRI lines and docker json-file entries for the writers.

A writer reads up to 1 MiB at a time and stamps everything it read with one time,
as containerd's CRI writer stamps a read. Encoding each line of it in Python costs
more than the copy itself, so a chunk of whole lines whose messages all fit in one
line is encoded by a few C-level passes over the whole chunk: `bytes.replace` of the
newline with "end of this line + head of the next" (cri); for json-file, one call of
the C extension `_json_lines.escape_lines` (UTF-8 check, JSON escapes, newline ->
separator; about a quarter of the CPU of the orjson path), or where it is not built,
orjson's string escaper over the whole chunk with the newlines swapped for a
sentinel first; chunks that are not valid UTF-8 take the stdlib path. Everything
else - a line continuing the previous chunk, lines longer than the line limit,
events past maxEventSize - stays per event in the writer.
The bytes are exactly what `formats.encode_cri_line` / `encode_json_entry` make for
each line (tests compare them over generated input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from logvold.core.formats import encode_cri_line, format_rfc3339nano_bytes

NativeEscaper = Callable[["bytes | memoryview", bytes], "bytes | None"]
"""`escape_lines(data, sep)` of the C extension (see `native_escaper`)."""


NativeEscaperInto = Callable[["bytes | memoryview", bytes, bytearray], "bytearray | None"]
"""`escape_lines_into(data, sep, out)`: the same bytes written into a reused bytearray."""


def native_escaper() -> NativeEscaper | None:
    """The C json-file chunk escaper (logvold/core/_json_lines.c), or None where the
    package was installed without a C compiler (the pure-Python paths then)."""
    try:
        from logvold.core._json_lines import escape_lines
    except ImportError:
        return None
    return escape_lines


def native_escaper_into() -> NativeEscaperInto | None:
    """`escape_lines_into` of the C extension (see native_escaper), or None."""
    try:
        from logvold.core._json_lines import escape_lines_into
    except ImportError:
        return None
    return escape_lines_into


LineFormat = Literal["cri", "json-file"]

# The escapes of json.dumps(ensure_ascii=False) for the ASCII bytes it escapes, then
# Go's HTML-safe escapes that dockerd's output has. The backslash goes first: later
# escapes insert backslashes of their own.
_SHORT = {0x08: b"\\b", 0x09: b"\\t", 0x0C: b"\\f", 0x0D: b"\\r"}
_ASCII_ESCAPES: tuple[tuple[bytes, bytes], ...] = (
    (b"\\", b"\\\\"),
    (b'"', b'\\"'),
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    *(
        (bytes([c]), _SHORT.get(c, b"\\u%04x" % c))
        for c in (9, 13, 27, *range(0, 9), 11, 12, *range(14, 27), *range(28, 32))
    ),
)
_WIDE_ESCAPES = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))
_JSON_HEAD = b'{"log":"'
_SENTINEL = b"\x7f"

StringEncoder = Callable[[str], bytes]
"""A JSON string encoder: `json.dumps(text, ensure_ascii=False)` as UTF-8 bytes, quotes
included (e.g. `orjson.dumps`)."""


class ChunkEncoder:
    """Encodes whole lines of one stream read at one time: `encode()` -> (head, body).

    The encoding of the lines is `head + body[:end]`, `end` being just after the
    body's last newline; each newline of the input is the end of one output line,
    and after each one (also the last) the body holds the head of the next: an
    output line ends at every newline of the body, the places to rotate.
    """

    def __init__(
        self,
        fmt: LineFormat,
        string_encoder: StringEncoder | None = None,
        native: NativeEscaper | None = None,
        native_into: NativeEscaperInto | None = None,
        buffers: int = 1,
    ) -> None:
        """`native_into` (with `native`): json-file bodies are written into one
        bytearray kept by this encoder, so a body is valid only until the next
        encode() - for a caller that writes each body out before encoding more.
        `buffers=2` alternates two bytearrays: a body stays valid until the encode()
        after next (a write-behind thread may still be writing the last one)."""
        if fmt not in ("cri", "json-file"):
            raise ValueError(f"no line encoding for format {fmt!r}")
        self.fmt = fmt
        self._dumps = string_encoder
        self._native = native
        self._native_into = native_into
        self._outs = [bytearray() for _ in range(max(1, buffers))]
        self._turn = 0
        self._out = self._outs[0]
        self._key: tuple[str, int] | None = None
        self._head = b""
        self._sep = b""

    def encode(
        self, stream: str, ts: int, data: bytes | memoryview
    ) -> tuple[bytes, bytes | bytearray]:
        """(head, body) for `data`'s lines as full events; `data` should end with a
        newline (bytes after the last one are encoded too, after the last head, and
        must not be written) and be valid UTF-8 for json-file's fast path. A
        memoryview is read in place by the C escaper (copied for the other paths)."""
        if self._key != (stream, ts):
            self._frame(stream, ts)
        if self.fmt == "cri":
            return self._head, bytes(data).replace(b"\n", self._sep)
        if self._native_into is not None:
            if len(self._outs) > 1:
                self._turn = (self._turn + 1) % len(self._outs)
                self._out = self._outs[self._turn]
            try:
                into = self._native_into(data, self._sep, self._out)
            except BufferError:
                # A view of the last body outlived it (a traceback keeps one after a
                # failed write): leave that buffer to it and write into a new one.
                self._out = self._outs[self._turn] = bytearray()
                into = self._native_into(data, self._sep, self._out)
            if into is not None:
                return _JSON_HEAD, into
        elif self._native is not None:
            body = self._native(data, self._sep)
            if body is not None:
                return _JSON_HEAD, body
        if self._native is not None or self._native_into is not None:
            # not valid UTF-8: the stdlib path writes lone-surrogate escapes
            return _JSON_HEAD, json_escape(bytes(data)).replace(b"\n", self._sep)
        data = bytes(data)  # no copy of a bytes object
        if self._dumps is not None and _SENTINEL not in data:
            try:
                text = data.replace(b"\n", _SENTINEL).decode("utf-8")
            except UnicodeDecodeError:
                pass  # lone-surrogate escapes for its invalid bytes: the stdlib path
            else:
                body = _go_escapes(self._dumps(text))  # '"' + escaped + '"'
                return _JSON_HEAD[:-1], body.replace(_SENTINEL, self._sep)
        return _JSON_HEAD, json_escape(data).replace(b"\n", self._sep)

    def _frame(self, stream: str, ts: int) -> None:
        self._key = (stream, ts)
        if self.fmt == "cri":
            head = encode_cri_line(stream, ts, b"")[:-1]  # "<time> <stream> F "
            self._head = head
            self._sep = b"\n" + head
        else:
            time = format_rfc3339nano_bytes(ts)
            self._head = _JSON_HEAD
            self._sep = b'\\n","stream":"%s","time":"%s"}\n{"log":"' % (stream.encode(), time)


def json_escape(data: bytes) -> bytes:
    """The inside of the JSON string `_json_string` makes, newlines left as they are.

    One `bytes.replace` per special byte the chunk holds (a `memchr` tells which):
    those bytes are ASCII, which never occurs inside a UTF-8 sequence, valid or not,
    so escaping them byte-wise is escaping them character-wise. Then, only for
    non-ASCII chunks, U+2028 / U+2029 and - only if the chunk is not valid UTF-8 -
    the lone-surrogate escapes `\\udcXX` of its invalid bytes.
    """
    for byte, escaped in _ASCII_ESCAPES:
        if byte in data:
            data = data.replace(byte, escaped)
    if data.isascii():
        return data
    data = _wide_escapes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        data = data.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace")
    return data


def _go_escapes(data: bytes) -> bytes:
    """Go's HTML-safe escapes (`<`, `>`, `&`, U+2028, U+2029) over JSON-encoded bytes."""
    for byte, escaped in _ASCII_ESCAPES[2:5]:
        if byte in data:
            data = data.replace(byte, escaped)
    return data if data.isascii() else _wide_escapes(data)


def _wide_escapes(data: bytes) -> bytes:
    if b"\xe2" in data:
        for seq, escaped in _WIDE_ESCAPES:
            if seq in data:
                data = data.replace(seq, escaped)
    return data


def long_lines(data: bytes, start: int, end: int, max_line: int) -> list[tuple[int, int]]:
    """Lines of `data[start:end]` (whole lines: `start` begins one, `end` follows a
    newline) whose message is longer than `max_line`, as (start, end-after-newline).

    From each line start j, one `rfind` of a newline within the next max_line + 1
    bytes: found, every line up to it fits, and the search goes on after it (about
    max_line bytes on); not found, the line at j is a long one. So a chunk without
    long lines (the usual case) costs about 64 C-level searches per MiB at the
    kubelet's 16 KiB line limit, instead of measuring every line.
    """
    found: list[tuple[int, int]] = []
    j = start
    span = max_line + 1
    while end - j > span:
        k = data.rfind(b"\n", j, j + span)
        if k >= 0:
            j = k + 1
            continue
        nl = data.find(b"\n", j + span, end)
        line_end = nl + 1 if nl >= 0 else end
        found.append((j, line_end))
        j = line_end
    return found
