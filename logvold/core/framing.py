"""Incremental event framing: where do events end in a byte stream (raw, cri, json-file).

Framers keep only what they need to decide boundaries (a few carry bytes, or
the current line up to `max_event_size`), never whole events, so a writer can
frame an unbounded stream in bounded memory. See ARCHITECTURE.md "Framing contract".
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator

from logvold.core.formats import CRI_HEAD_BYTES, rfc3339nano_ns, split_cri_line, split_json_entry
from logvold.core.raw_framing import (  # re-exported: every framer, one import away
    DEFAULT_MAX_EVENT_SIZE as DEFAULT_MAX_EVENT_SIZE,
)
from logvold.core.raw_framing import FORMATS as FORMATS
from logvold.core.raw_framing import Framer as Framer
from logvold.core.raw_framing import RawFramer as RawFramer
from logvold.core.raw_framing import _check_max, _OffsetFramer

# Line classes for cri / json-file: a stream bit, plus _PARTIAL when the line
# leaves its stream's event open. 0 = malformed: changes no stream's state.
_STDOUT = 1
_STDERR = 2
_PARTIAL = 4
_STREAM_BITS = {b"stdout": _STDOUT, b"stderr": _STDERR}
_STREAM_BIT_OF = {"stdout": _STDOUT, "stderr": _STDERR}
_NEWLINE = re.compile(b"\n")


def classify_cri_line(head: bytes | None) -> int:
    """Class of a CRI line from its first CRI_HEAD_BYTES bytes (0 = malformed).

    The codec's grammar (core.formats.split_cri_line): a valid time, stdout or
    stderr, a tag whose first `:`-separated part `P` means partial. The reader
    applies the same grammar, so both agree on where events end.
    """
    if head is None:
        return 0
    fields = split_cri_line(head)
    if fields is None:
        return 0
    bit = _STREAM_BIT_OF[fields[1]]
    return bit | _PARTIAL if fields[2] else bit


_JSON_PREFIX = b'{"log":"'
_JSON_STREAM_KEY = b'","stream":"'
_JSON_TIME_KEY = b',"time":"'


def _backslashes_before(data: bytes, i: int, lo: int) -> int:
    """How many consecutive backslashes end at data[i-1] (not looking below lo)."""
    j = i
    while j > lo and data[j - 1] == 0x5C:
        j -= 1
    return i - j


def classify_json_line(line: bytes | None) -> int:
    """Class of a whole docker json-file line (0 = malformed or longer than the event limit).

    Fast path for docker's own layout (`{"log":"...","stream":"...","time":"..."}`):
    the first `","stream":"` in a valid line can only follow the end of the log
    string (a quote inside a JSON string is always escaped). The fast path
    trusts the inside of the log string of a line that has dockerd's shape at
    both ends (so a line truncated by a crash is still malformed) and checks the
    time as the codec does; anything else is parsed by the codec
    (core.formats.split_json_entry), the reader's grammar.
    """
    if line is None:
        return 0
    if line.startswith(_JSON_PREFIX):
        tail = 3 if line.endswith(b'"}\n') else 2 if line.endswith(b'"}') else 0
        k = line.find(_JSON_STREAM_KEY, len(_JSON_PREFIX)) if tail else -1
        if k >= 0 and _backslashes_before(line, k, len(_JSON_PREFIX)) % 2 == 0:
            bit = _STREAM_BITS.get(line[k + 12 : k + 18], 0)
            t = k + 19 + len(_JSON_TIME_KEY)
            if (
                bit
                and line[k + 18 : t] == b'"' + _JSON_TIME_KEY
                and rfc3339nano_ns(line[t : len(line) - tail]) is not None
            ):
                ends_nl = (
                    k - 2 >= len(_JSON_PREFIX)
                    and line[k - 2 : k] == b"\\n"
                    and _backslashes_before(line, k - 1, len(_JSON_PREFIX)) % 2 == 1
                )
                return bit if ends_nl else bit | _PARTIAL
    entry = split_json_entry(line)
    if entry is None:
        return 0
    bit = _STREAM_BIT_OF[entry[1]]
    return bit if entry[2].endswith(b"\n") else bit | _PARTIAL


class LineFramer(_OffsetFramer):
    """Framer for line formats where partial lines join the next line of their stream.

    A line ends at b"\\n". An event ends after a line when no stream (stdout,
    stderr) is left with an open partial; the two streams may interleave. An
    event reaching `max_event_size` bytes is cut there, the cut closes every
    open partial, and line tracking carries on (the cut may fall inside a line;
    that line's class still applies when it ends).

    State between calls: which streams are open, the event start and the
    current incomplete line - only its first CRI_HEAD_BYTES bytes for cri, the
    whole line up to `max_event_size` for json-file (longer lines are malformed).
    """

    def __init__(
        self,
        classify: Callable[[bytes | None], int],
        *,
        whole_line: bool,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        _check_max(max_event_size, 1)
        self.max_event_size = max_event_size
        self.split_count = 0
        self._classify = classify
        self._whole_line = whole_line
        self._keep = max_event_size if whole_line else CRI_HEAD_BYTES
        self._offset = 0
        self._start = 0
        self._opens = 0  # bitmask of streams with an open partial
        self._line = bytearray()  # kept prefix of the current incomplete line
        self._line_len = 0  # full length of the current incomplete line

    @property
    def buffered_bytes(self) -> int:
        return len(self._line)

    def last_boundary(self, chunk: bytes) -> int | None:
        n = len(chunk)
        if n == 0:
            return None
        if not self._whole_line and not self._opens:
            # cri fast path: no partial line in this chunk => every line ends an event.
            last = chunk.rfind(b"\n")
            head = bytes(self._line) + chunk[:CRI_HEAD_BYTES] if self._line_len else chunk[:0]
            if (
                last >= 0
                and b"stdout P" not in chunk
                and b"stderr P" not in chunk
                and b"stdout P" not in head
                and b"stderr P" not in head
            ):
                base = self._offset
                first = chunk.find(b"\n")
                end = base + last + 1
                m = self.max_event_size
                if base + first + 1 - self._start <= m and last - first <= m and base + n - end < m:
                    self._offset = base + n
                    self._start = end
                    self._line = bytearray(chunk[last + 1 : last + 1 + CRI_HEAD_BYTES])
                    self._line_len = n - last - 1
                    return end
        ends: list[int] = []
        self._scan(chunk, ends)
        return ends[-1] if ends else None

    def _line_of(self, data: bytes, pos: int, end: int) -> bytes | None:
        """What the classifier sees of the line ending at data[end-1]."""
        if self._whole_line:
            if self._line_len + end - pos > self.max_event_size:
                return None
            return bytes(self._line) + data[pos:end] if self._line_len else data[pos:end]
        if self._line_len:
            head = bytes(self._line) + data[pos : min(end, pos + CRI_HEAD_BYTES)]
            return head[:CRI_HEAD_BYTES]
        return data[pos : min(end, pos + CRI_HEAD_BYTES)]

    def _all_lines_end_events(self, data: bytes, ends: list[int]) -> bool:
        """cri bulk path: with no stream open and no `P` tag in the chunk, every line
        ends an event; take them all at C speed unless a cut could be needed."""
        if self._whole_line or self._opens:
            return False
        if b"stdout P" in data or b"stderr P" in data:
            return False
        if self._line_len:  # the line begun in an earlier chunk
            head = bytes(self._line) + data[:CRI_HEAD_BYTES]
            if b"stdout P" in head or b"stderr P" in head:
                return False
        line_ends = [match.end() for match in _NEWLINE.finditer(data)]
        if not line_ends:
            return False
        n = len(data)
        base = self._offset
        m = self.max_event_size
        last = line_ends[-1]
        longest = max(map(operator.sub, line_ends[1:], line_ends), default=0)
        if base + line_ends[0] - self._start > m or longest > m or n - last >= m:
            return False
        ends.extend([base + e for e in line_ends])
        self._start = base + last
        self._offset = base + n
        self._line = bytearray(data[last : last + CRI_HEAD_BYTES])
        self._line_len = n - last
        return True

    def _scan(self, chunk: bytes, ends: list[int]) -> None:
        data = bytes(chunk)
        if self._all_lines_end_events(data, ends):
            return
        n = len(data)
        base = self._offset
        m = self.max_event_size
        start = self._start
        opens = self._opens
        classify = self._classify
        find = data.find
        pos = 0
        while True:
            nl = find(b"\n", pos)
            if nl < 0:
                break
            end_rel = nl + 1
            end = base + end_rel
            while start + m < end:
                start += m
                ends.append(start)
                self.split_count += 1
                opens = 0
            cls = classify(self._line_of(data, pos, end_rel))
            if cls:
                if cls & _PARTIAL:
                    opens |= cls & 3
                else:
                    opens &= ~cls
            if not opens:
                start = end
                ends.append(end)
            elif start + m == end:
                start = end
                ends.append(end)
                self.split_count += 1
                opens = 0
            if self._line_len:
                self._line.clear()
                self._line_len = 0
            pos = end_rel
        if pos < n:
            self._line_len += n - pos
            if self._whole_line and self._line_len > m:
                self._line.clear()  # too long to classify: it is malformed anyway
            elif (room := self._keep - len(self._line)) > 0:
                self._line += data[pos : pos + room]
        self._offset = base + n
        while start + m <= self._offset:
            start += m
            ends.append(start)
            self.split_count += 1
            opens = 0
        self._start = start
        self._opens = opens


def make_framer(
    fmt: str, delimiter: bytes = b"\n", max_event_size: int = DEFAULT_MAX_EVENT_SIZE
) -> Framer:
    """A fresh framer for `fmt` (raw | cri | json-file); cri/json-file ignore `delimiter`."""
    if fmt == "raw":
        return RawFramer(delimiter, max_event_size)
    if fmt == "cri":
        return LineFramer(classify_cri_line, whole_line=False, max_event_size=max_event_size)
    if fmt == "json-file":
        return LineFramer(classify_json_line, whole_line=True, max_event_size=max_event_size)
    raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")


def iter_events(chunks: Iterable[bytes], framer: Framer) -> Iterator[bytes]:
    """Whole events (including their delimiter) of a chunked stream; a trailing partial is dropped.

    The framer must be at an event boundary (e.g. fresh). Holds at most one
    incomplete event (<= max_event_size) plus one chunk.
    """
    if framer.pending:
        raise ValueError("iter_events needs a framer at an event boundary (pending == 0)")
    buf = b""
    buf_start = framer.offset  # absolute offset of buf[0]
    for chunk in chunks:
        if not chunk:
            continue
        ends = framer.feed(chunk)
        data = buf + chunk if buf else bytes(chunk)
        prev = 0
        for end in ends:
            rel = end - buf_start
            yield data[prev:rel]
            prev = rel
        buf = data[prev:]
        buf_start += prev


#: Bytes read per call of `read_at` by the backward search.
BACKWARD_BLOCK = 1 << 16


def _read_exact(read_at: Callable[[int, int], bytes], offset: int, size: int) -> bytes:
    data = read_at(offset, size)
    if len(data) != size:
        raise ValueError(
            f"short read at offset {offset}: wanted {size} bytes, got {len(data)}"
            " (did the file shrink?)"
        )
    return data


def _forward_last(
    read_at: Callable[[int, int], bytes],
    begin: int,
    end: int,
    fmt: str,
    delimiter: bytes,
    max_event_size: int,
) -> int | None:
    """Last event end in (begin, end] framing forward from `begin`, a known boundary."""
    framer = make_framer(fmt, delimiter, max_event_size)
    last: int | None = None
    pos = begin
    while pos < end:
        size = min(BACKWARD_BLOCK, end - pos)
        found = framer.last_boundary(_read_exact(read_at, pos, size))
        if found is not None:
            last = begin + found
        pos += size
    return last


def _occurrences_backward(
    read_at: Callable[[int, int], bytes], start: int, end: int, d: bytes
) -> Iterator[int]:
    """Start offsets of every occurrence of `d` inside [start, end), last first."""
    dlen = len(d)
    block = max(BACKWARD_BLOCK, 2 * dlen)
    hi = end
    while hi - start >= dlen:
        lo = max(start, hi - block)
        buf = _read_exact(read_at, lo, hi - lo)
        p = len(buf)
        while True:
            i = buf.rfind(d, 0, p)
            if i < 0:
                break
            yield lo + i
            p = i + dlen - 1  # earlier occurrences may overlap this one
        if lo == start:
            return
        hi = lo + dlen - 1


def _raw_certified_boundary(
    read_at: Callable[[int, int], bytes], start: int, end: int, d: bytes, max_event_size: int
) -> int:
    """The last delimiter end in (start, end] that is surely a boundary, else `start`.

    Single byte: every delimiter ends an event. Multi-byte: an occurrence at x
    that no earlier occurrence overlaps ("free") is reached by the scan in its
    searching state; it is matched unless a cut falls inside it. Any free
    occurrence x_p before x leaves the last boundary at >= x_p + 1 once
    processed, so if x + len(d) - (x_p + 1) <= max_event_size no cut can fall
    inside x's occurrence and x + len(d) is a boundary. Walk back over chain
    heads until one is certified; `start` itself always is.
    """
    dlen = len(d)
    occurrences = _occurrences_backward(read_at, start, end, d)
    if dlen == 1:
        last = next(occurrences, None)
        return start if last is None else last + 1

    def heads() -> Iterator[int]:
        head: int | None = None
        for i in occurrences:
            if head is not None and i <= head - dlen:
                yield head
            head = i
        if head is not None:
            yield head

    chain_heads = heads()
    cur = next(chain_heads, None)
    while cur is not None:
        prev = next(chain_heads, None)
        lower = start if prev is None else prev + 1
        if cur + dlen - lower <= max_event_size:
            return cur + dlen
        cur = prev
    return start


def _lines_backward(
    read_at: Callable[[int, int], bytes], start: int, end: int, *, whole: bool, limit: int
) -> Iterator[tuple[int, bytes | None]]:
    """(line end, what the classifier sees) for each complete line in [start, end), last first.

    The classifier sees the first CRI_HEAD_BYTES bytes (whole=False) or the
    whole line if it is at most `limit` bytes long (whole=True, else None),
    exactly as the forward LineFramer does.
    """
    hi = end
    line_end: int | None = None
    acc = b""  # the part of the current line already read (its tail)
    acc_len = 0
    while hi > start:
        lo = max(start, hi - BACKWARD_BLOCK)
        buf = _read_exact(read_at, lo, hi - lo)
        p = len(buf)
        while True:
            i = buf.rfind(b"\n", 0, p)
            if i < 0:
                break
            if line_end is not None:
                yield line_end, _join_view(buf[i + 1 : p], acc, acc_len, whole, limit)
            line_end = lo + i + 1
            acc, acc_len = b"", 0
            p = i
        if line_end is not None and p:
            if whole:
                acc_len += p
                acc = buf[:p] + acc if acc_len <= limit else b""
            else:
                acc = (buf[: min(p, CRI_HEAD_BYTES)] + acc)[:CRI_HEAD_BYTES]
                acc_len += p
        hi = lo
    if line_end is not None:
        yield line_end, _join_view(b"", acc, acc_len, whole, limit)


def _join_view(front: bytes, acc: bytes, acc_len: int, whole: bool, limit: int) -> bytes | None:
    if whole:
        if len(front) + acc_len > limit:
            return None
        return front + acc
    if len(front) >= CRI_HEAD_BYTES:
        return front[:CRI_HEAD_BYTES]
    return (front + acc)[:CRI_HEAD_BYTES]


def _line_certified_boundary(
    read_at: Callable[[int, int], bytes],
    start: int,
    end: int,
    classify: Callable[[bytes | None], int],
    *,
    whole: bool,
    max_event_size: int,
) -> int:
    """The last line end in (start, end] that is surely a boundary, else `start`.

    A line end b is a boundary iff no stream is open after its line. The line's
    own stream is closed by a full line; another stream is surely closed if its
    latest line before b is full, or absent since `start`, or ended at p with
    b - p >= max_event_size (an event that long was cut, and a cut closes every
    partial). A partial within the window leaves b uncertain (a cut might have
    closed it), so b is skipped. Candidates wait, grouped by the streams they
    still need, while the scan walks back; the largest certified one wins.
    """
    m = max_event_size
    waiting: dict[int, list[int]] = {_STDOUT: [], _STDERR: [], _STDOUT | _STDERR: []}
    best: int | None = None
    for line_end, view in _lines_backward(read_at, start, end, whole=whole, limit=m):
        # Candidates whose window lies entirely after this line are certified.
        for group in waiting.values():
            while group and group[0] - line_end >= m:
                b = group.pop(0)
                best = b if best is None or b > best else best
        cls = classify(view)
        stream = cls & 3
        if stream:
            for key in (k for k in (_STDOUT | _STDERR, _STDOUT, _STDERR) if k & stream):
                group = waiting[key]
                if not group:
                    continue
                waiting[key] = []
                if cls & _PARTIAL:
                    continue  # all of them may be open: uncertain
                rest = key & ~stream
                if rest:
                    waiting[rest] = sorted(waiting[rest] + group, reverse=True)
                else:
                    b = group[0]
                    best = b if best is None or b > best else best
        if best is None and not (cls & _PARTIAL):
            waiting[(_STDOUT | _STDERR) & ~stream].append(line_end)
        top = max((g[0] for g in waiting.values() if g), default=None)
        if best is not None and (top is None or top < best):
            return best
    top = max((g[0] for g in waiting.values() if g), default=None)
    if top is not None and (best is None or top > best):
        best = top
    return start if best is None else best


def last_boundary_backward(
    read_at: Callable[[int, int], bytes],
    start: int,
    end: int,
    fmt: str,
    delimiter: bytes = b"\n",
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> int | None:
    """Offset of the last event end in (start, end] of a file, reading backwards in blocks.

    `start` must be an event boundary (the committed offset); the answer is the
    one a fresh framer fed [start, end) forward would give last, or None when
    no event ends in the range. `read_at(offset, size)` returns exactly `size`
    bytes (a short read raises ValueError).

    Reading backwards finds a line end / delimiter that is certainly a
    boundary whatever happened before it (see the _certified helpers; this is
    what makes self-overlapping delimiters and max_event_size cuts unambiguous),
    then frames forward from it to `end`. The work is bounded by the distance
    back to that boundary: for cri/json-file up to about max_event_size plus the
    last lines, for raw up to the last delimiter.
    """
    if not 0 <= start <= end:
        raise ValueError(f"bad range [{start}, {end})")
    if start == end:
        return None
    if fmt == "raw":
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        _check_max(max_event_size, len(delimiter))
        base = _raw_certified_boundary(read_at, start, end, bytes(delimiter), max_event_size)
    elif fmt in ("cri", "json-file"):
        _check_max(max_event_size, 1)
        whole = fmt == "json-file"
        classify = classify_json_line if whole else classify_cri_line
        base = _line_certified_boundary(
            read_at, start, end, classify, whole=whole, max_event_size=max_event_size
        )
    else:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")
    last = _forward_last(read_at, base, end, fmt, delimiter, max_event_size)
    if last is not None:
        return last
    return base if base > start else None


def event_boundaries_in(
    data: bytes, fmt: str, delimiter: bytes = b"\n", max_event_size: int = DEFAULT_MAX_EVENT_SIZE
) -> list[int]:
    """Event ends in `data` (offsets into it), framing from its first byte."""
    return make_framer(fmt, delimiter, max_event_size).feed(data)
