"""Parse the sizes and durations operators write in config files and flags.

Three dialects meet here: our YAML (`10Mi`, `512Ki`, `1G`, `90s`, `7d`),
Kubernetes resource.Quantity (kube-log-runner's -log-file-size) and Go's
time.ParseDuration (kube-log-runner's -log-file-age, -flush-interval).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from decimal import Decimal

#: Largest size that fits an off_t: offsets and fallocate lengths are signed 64-bit.
MAX_SIZE_BYTES = 2**63 - 1

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def _reject_ambiguous_suffix(number: str, suffix: str, value: object) -> None:
    """`10MB`, `1GB`, `512kb`: people mean MiB as often as MB, and Kubernetes'
    resource.Quantity (which kube-log-runner's -log-file-size takes) rejects them.
    Guessing either way is wrong by 5% to 15%: ask, naming both spellings."""
    if len(suffix) != 2 or suffix[1] not in "bB" or suffix[0].upper() not in _DECIMAL:
        return
    letter = suffix[0].upper()
    decimal = "k" if letter == "K" else letter
    binary = f"{letter}i"
    from decimal import Decimal

    as_binary = Decimal(number) * _BINARY[binary]
    as_decimal = Decimal(number) * _DECIMAL[letter]
    raise ValueError(
        f"size {str(value).strip()} is ambiguous: did you mean {number}{binary} "
        f"({_whole(as_binary)} bytes) or {number}{decimal} ({_whole(as_decimal)} bytes)?"
    )


def _whole(amount: Decimal) -> str:
    return f"{int(amount):,}" if amount == amount.to_integral_value() else f"{amount:,f}"


def parse_size(value: str | int) -> int:
    """Bytes from `10Mi`, `512Ki`, `1G`, `1.5Gi`, `1e6` or a plain integer.

    Accepts resource.Quantity suffixes (binary Ki..Ei, decimal k/K..E) plus the
    unambiguous `B`/`KiB`-style spellings people paste from `ls -h`. SI-style
    `kB`/`MB`/`GB` are refused with a did-you-mean (see _reject_ambiguous_suffix).
    Raises ValueError with a message that shows the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 10Mi, 512Ki or 1G, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        if value > MAX_SIZE_BYTES:
            raise ValueError(f"size {value} is larger than the largest file offset (8Ei)")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a size such as 10Mi, 512Ki, 1G or 1048576, got {value!r}")
    number, suffix = m.group(1), m.group(2)
    _reject_ambiguous_suffix(number, suffix, value)
    if suffix.endswith("B") and suffix not in ("B",):
        suffix = suffix[:-1]  # KiB -> Ki
    elif suffix == "B":
        suffix = ""
    if suffix and suffix not in _BINARY and suffix not in _DECIMAL:
        raise ValueError(
            f"unknown size suffix {suffix!r} in {value!r}; use Ki, Mi, Gi, Ti or k, M, G, T"
        )
    multiplier = _BINARY.get(suffix) or _DECIMAL.get(suffix) or 1
    if number.isdigit():  # `10Mi`, `1048576`: exact as an int (no decimal at start-up)
        size = int(number) * multiplier
    else:
        from decimal import Decimal, InvalidOperation

        try:
            amount = Decimal(number) * multiplier
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
            raise ValueError(f"expected a size, got {value!r}") from exc
        if amount != amount.to_integral_value():
            raise ValueError(f"size {value!r} is not a whole number of bytes")
        size = int(amount) if amount <= MAX_SIZE_BYTES else MAX_SIZE_BYTES + 1
    if size > MAX_SIZE_BYTES:
        raise ValueError(f"size {value!r} is larger than the largest file offset (8Ei)")
    return size


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d|w)")


def _parse_parts(text: str, units: set[str], original: str, example: str) -> float:
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m or m.group(2) not in units:
            raise ValueError(f"expected a duration such as {example}, got {original!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not math.isfinite(total):
        raise ValueError(f"duration {original!r} is too large")
    return total


def parse_duration(value: str | int | float) -> float:
    """Seconds from `90s`, `6h`, `7d`, `1h30m`, `500ms` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 90s, 6h or 7d, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {value}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    text = str(value).strip()
    if not text:
        raise ValueError("expected a duration such as 90s, 6h or 7d, got an empty string")
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        seconds = float(text)
        if not math.isfinite(seconds):
            raise ValueError(f"duration {value!r} is too large")
        return seconds
    return _parse_parts(text, set(_DURATION_UNITS), str(value), "90s, 6h or 7d")


def parse_go_duration(value: str) -> float:
    """Seconds from a Go time.ParseDuration string (`168h`, `1h2m3.5s`, `300ms`, `0`).

    Go has no `d` unit and requires a unit on every non-zero number; so do we,
    so that flags copied from kube-log-runner mean exactly the same here.
    """
    text = value.strip()
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f"invalid duration {value!r}")
    go_units = {"ns", "us", "\u00b5s", "\u03bcs", "ms", "s", "m", "h"}
    try:
        return sign * _parse_parts(text, go_units, value, "168h, 90m or 30s")
    except ValueError:
        raise ValueError(
            f"invalid duration {value!r}: expected a Go duration such as 168h, 90m or 30s"
        ) from None


def format_size(num_bytes: int) -> str:
    """Shortest exact binary spelling (`10Mi`), for messages and config dumps."""
    for suffix, mult in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        if num_bytes and num_bytes % mult == 0:
            return f"{num_bytes // mult}{suffix}"
    return str(num_bytes)


def format_duration(seconds: float) -> str:
    """Shortest exact spelling (`7d`, `6h`, `90s`), for messages and config dumps."""
    for suffix, mult in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds and seconds % mult == 0:
            return f"{int(seconds // mult)}{suffix}"
    if not seconds:
        return "0s"
    # Positional notation of the shortest repr: parse_duration reads no exponents.
    from decimal import Decimal

    return f"{Decimal(repr(float(seconds))):f}s"
