"""One parser per kind of value an operator writes, shared by every front end: the YAML
config (core.config_tree), the Go-style flags of `logvold run` / `kube-log-runner`
(runner/cli.py) and the containerd driver's `binary://` pairs (driver/args.py), so one
spelling means the same thing wherever it is written.

Stdlib only. Each parser raises ValueError with the reason; the front end says where
(file:line and key, the flag, the pair). Sizes and durations are core.units'.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, tzinfo

from logvold.core.units import parse_go_duration, parse_size

GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
"""Go's strconv.ParseBool spellings: flags, HTTP query parameters and driver pairs."""

ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "e": "\x1b",
    "\\": "\\",
    '"': '"',
    "'": "'",
    " ": " ",
    "/": "/",
}
"""Named backslash escapes, as YAML's double-quoted style has them (`\\e` is ESC)."""
HEX_ESCAPE_LEN = {"x": 2, "u": 4, "U": 8}
ROTATE_NAMES = {"hourly": "Hourly", "daily": "Daily", "never": "Never"}


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool: 1 t T TRUE true True / 0 f F FALSE false False."""
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    raise ValueError("parse error")


def _escape_pieces(text: str) -> Iterator[tuple[str, bool]]:
    """(character, is_byte) pairs of `text` with its backslash escapes resolved;
    is_byte marks a `\\xHH` escape, which names a BYTE, not a character."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            yield ch, False
            i += 1
            continue
        if i + 1 >= len(text):
            raise ValueError("a lone backslash ends the string; write \\\\ for a backslash")
        code = text[i + 1]
        if code in ESCAPES:
            yield ESCAPES[code], False
            i += 2
        elif code in HEX_ESCAPE_LEN:
            digits = text[i + 2 : i + 2 + HEX_ESCAPE_LEN[code]]
            if len(digits) != HEX_ESCAPE_LEN[code] or not all(
                c in "0123456789abcdefABCDEF" for c in digits
            ):
                need = HEX_ESCAPE_LEN[code]
                raise ValueError(f"\\{code} needs {need} hex digits, got {digits!r}")
            point = int(digits, 16)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:  # beyond Unicode, or a surrogate
                raise ValueError(f"\\{code}{digits} is not a valid character")
            yield chr(point), code == "x"
            i += 2 + len(digits)
        else:
            raise ValueError(f"unknown escape \\{code}; use \\n, \\r, \\t, \\0, \\\\ or \\xHH")


def decode_escapes(text: str) -> str:
    """Resolve backslash escapes (`\\n`, `\\t`, `\\e`, `\\x1e`, `\\u2028`, `\\\\`) to characters."""
    return "".join(ch for ch, _ in _escape_pieces(text))


def decode_delimiter(text: str) -> bytes:
    """The bytes of an event delimiter written with escapes, the same from every front end:
    `\\xHH` is the byte HH (`\\xe9` is e9, never UTF-8's c3 a9), `\\uHHHH`, `\\UHHHHHHHH` and
    plain characters are UTF-8, named escapes (`\\n`, `\\e`, ...) their ASCII byte."""
    out = bytearray()
    for ch, is_byte in _escape_pieces(text):
        if is_byte:
            out.append(ord(ch))
        else:
            try:
                out += ch.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("contains a lone surrogate, which has no UTF-8 encoding") from None
    if not out:
        raise ValueError('must not be empty; the default is "\\n"')
    return bytes(out)


def needs_byte_escapes(raw: str) -> bool:
    """True if a double-quoted YAML scalar's source text has a `\\xHH` escape of a byte
    above 0x7f: YAML would make it the character U+00HH (UTF-8: two bytes), so the config
    reader hands such a delimiter to decode_delimiter undecoded."""
    i = 0
    while i < len(raw) - 1:
        if raw[i] == "\\":
            if raw[i + 1] == "x" and raw[i + 2 : i + 3] in tuple("89abcdefABCDEF"):
                return True
            i += 2
        else:
            i += 1
    return False


def rotate_period(seconds: float) -> str:
    """The Rotate value of a fixed period; ValueError unless it is whole seconds >= 1."""
    if seconds < 1 or not float(seconds).is_integer():
        raise ValueError("a rotation period must be whole seconds, at least 1s")
    return f"{int(seconds)}s"


def parse_rotate(value: str) -> str:
    """Hourly, Daily, Never (any case; empty is Never) or a fixed period as a Go duration
    (`15m`): the `--log-file-rotate` flag and the driver's `rotate` pair."""
    if value.lower() in ROTATE_NAMES or not value:
        return ROTATE_NAMES.get(value.lower(), "Never")
    try:
        seconds = parse_go_duration(value)
    except ValueError:
        raise ValueError("use Hourly, Daily, Never or a period such as 15m") from None
    return rotate_period(seconds)


def choice(options: Sequence[str]) -> Callable[[str], object]:
    """A checker that accepts exactly one of `options`."""

    def check(value: str) -> object:
        if value not in options:
            raise ValueError(f"use one of {', '.join(options)}")
        return value

    return check


def parse_positive_size(value: str) -> int:
    """A size (`10Mi`, `500k`, bytes) above zero."""
    size = parse_size(value)
    if size <= 0:
        raise ValueError("must be more than 0 bytes")
    return size


@functools.lru_cache(maxsize=256)  # bounded: names come from pod annotations too
def time_zone(name: str) -> tzinfo:
    """The tzinfo of IANA zone `name` (`UTC` without a lookup); ValueError naming the zone.

    The one place a policy's `timezone` becomes a tzinfo: the config check, the
    scheduler, the rotator and the writer all resolve it here, so a name means the same
    zone (or the same error) everywhere. Only IANA names: `Z` or an empty name is not
    a zone (the tz database has `UTC`, `Etc/UTC`, `Zulu`).
    """
    if name == "UTC":
        return UTC
    import zoneinfo  # here: only a zone other than UTC needs the tz database

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name[:80]!r}; use an IANA name such as Europe/Berlin"
        ) from None
