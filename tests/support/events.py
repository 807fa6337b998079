"""Generated events that prove integrity: sequence numbers and checksums.

An event body is `<tag>#<seq> <crc32> <payload>` followed by the delimiter;
the payload may span several lines when the delimiter is not a newline. The
verifier below is deliberately independent of logvold's own framing code, so
a bug there cannot hide itself.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+/"
TO_ALPHABET = bytes(_ALPHABET[b % len(_ALPHABET)] for b in range(256))
"""Maps any byte to a payload character (a little uneven; the payload only needs variety)."""


def make_event(
    seq: int,
    rng: random.Random,
    *,
    delimiter: bytes = b"\n",
    tag: str = "E",
    min_len: int = 20,
    max_len: int = 300,
    multiline: bool | None = None,
) -> bytes:
    """One whole event (body + delimiter) carrying `seq` and a CRC of its body.

    With a delimiter other than a single newline, the payload contains
    newlines (multi-line records) unless `multiline=False`.
    """
    if multiline is None:
        multiline = delimiter != b"\n"
    n = rng.randint(min_len, max_len)
    payload = bytearray(rng.randbytes(n).translate(TO_ALPHABET))  # C speed: tests make millions
    if multiline and n > 10:
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(1, n - 1)] = 0x0A
    # Never let a generated payload contain the delimiter (or its first byte,
    # which could combine with following bytes into one).
    for b in set(delimiter) - {0x0A} if multiline else set(delimiter):
        payload = payload.replace(bytes([b]), b"x")
    if multiline and delimiter.startswith(b"\n"):
        # No "\n\n"-like runs that would look like the delimiter.
        while delimiter in payload or payload.endswith(delimiter[:1]):
            payload = payload.replace(delimiter, b"\nx").rstrip(b"\n") + b"x"
    head = f"{tag}#{seq:010d} ".encode()
    crc = zlib.crc32(head + bytes(payload)) & 0xFFFFFFFF
    return head + f"{crc:08x} ".encode() + bytes(payload) + delimiter


def event_stream(count: int, *, seed: int = 1, start: int = 0, **kwargs: object) -> Iterator[bytes]:
    """`count` events with consecutive sequence numbers from `start`."""
    rng = random.Random(seed)
    for seq in range(start, start + count):
        yield make_event(seq, rng, **kwargs)  # type: ignore[arg-type]


def chunked(
    events: Iterable[bytes], rng: random.Random, *, min_chunk: int = 1, max_chunk: int = 8192
) -> Iterator[bytes]:
    """Re-cut a byte stream into random chunks that freely cross event boundaries."""
    buf = bytearray()
    for ev in events:
        buf += ev
        while len(buf) >= max_chunk:
            n = rng.randint(min_chunk, max_chunk)
            yield bytes(buf[:n])
            del buf[:n]
    while buf:
        n = rng.randint(min_chunk, max_chunk)
        yield bytes(buf[:n])
        del buf[:n]


@dataclass
class IntegrityReport:
    """What a verifier found; `ok` means 0 lost, 0 duplicated, 0 split, in order."""

    seen: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    corrupt: list[bytes] = field(default_factory=list)
    out_of_order: int = 0
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.corrupt or self.out_of_order)

    def summary(self) -> str:
        return (
            f"seen={self.seen} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"split/corrupt={len(self.corrupt)} out_of_order={self.out_of_order} "
            f"range=[{self.first_seq},{self.last_seq}]"
            + (f" first_lost={self.lost[:5]}" if self.lost else "")
            + (f" first_dup={self.duplicated[:5]}" if self.duplicated else "")
            + (f" first_corrupt={self.corrupt[:2]!r}" if self.corrupt else "")
        )


def parse_event(body: bytes, *, tag: str = "E") -> int | None:
    """The sequence number of a whole, intact event body (delimiter stripped), else None."""
    prefix = f"{tag}#".encode()
    if not body.startswith(prefix) or len(body) < len(prefix) + 20:
        return None
    head_end = len(prefix) + 11
    head = body[:head_end]
    crc_text = body[head_end : head_end + 8]
    if body[head_end + 8 : head_end + 9] != b" ":
        return None
    try:
        seq = int(head[len(prefix) : -1])
        crc = int(crc_text, 16)
    except ValueError:
        return None
    payload = body[head_end + 9 :]
    if zlib.crc32(head + payload) & 0xFFFFFFFF != crc:
        return None
    return seq


def verify(
    bodies: Iterable[bytes],
    *,
    expected: Iterable[int] | None = None,
    tag: str = "E",
    allow_missing_prefix: bool = False,
) -> IntegrityReport:
    """Check event bodies (delimiter stripped): each intact, each seq once, ascending.

    `expected`: the sequence numbers that must all be present (e.g. those the
    retention policy keeps). With `allow_missing_prefix`, only a gap at the
    start (oldest events truncated away) is tolerated, not in the middle.
    """
    report = IntegrityReport()
    counts: Counter[int] = Counter()
    previous = -1
    for body in bodies:
        seq = parse_event(body, tag=tag)
        if seq is None:
            report.corrupt.append(body[:120])
            continue
        report.seen += 1
        counts[seq] += 1
        if seq <= previous and counts[seq] == 1:
            report.out_of_order += 1
        previous = max(previous, seq)
        report.first_seq = seq if report.first_seq is None else min(report.first_seq, seq)
        report.last_seq = seq if report.last_seq is None else max(report.last_seq, seq)
    report.duplicated = sorted(s for s, c in counts.items() if c > 1)
    if expected is not None:
        report.lost = [s for s in expected if s not in counts]
    elif counts:
        lo = min(counts) if allow_missing_prefix else 0
        report.lost = [s for s in range(lo, max(counts) + 1) if s not in counts]
    return report


def split_raw(data: Iterable[bytes], delimiter: bytes = b"\n") -> Iterator[bytes]:
    """Event bodies of a raw byte stream (any chunking); a trailing partial is yielded too
    (so a verifier counts it as corrupt unless the caller drops it on purpose)."""
    buf = b""
    for chunk in data:
        buf += chunk
        parts = buf.split(delimiter)
        buf = parts.pop()
        yield from parts
    if buf:
        yield buf


def decode_cri(lines: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """(stream, message) per whole CRI event: P fragments joined with the next line
    of the same stream. Independent of logvold.core.formats on purpose."""
    pending: dict[str, bytearray] = {}
    for line in lines:
        if not line:
            continue
        _ts, stream, tag, msg = line.split(b" ", 3)
        assert tag in (b"P", b"F"), line[:80]
        name = stream.decode()
        pending.setdefault(name, bytearray()).extend(msg)
        if tag == b"F":
            yield name, bytes(pending.pop(name))


def decode_json_file(lines: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """(stream, message without trailing newline) per whole docker json-file event."""
    pending: dict[str, bytearray] = {}
    for line in lines:
        if not line:
            continue
        entry = json.loads(line)
        name = entry["stream"]
        pending.setdefault(name, bytearray()).extend(
            entry["log"].encode("utf-8", "surrogateescape")
        )
        if entry["log"].endswith("\n"):
            yield name, bytes(pending.pop(name))[:-1]
