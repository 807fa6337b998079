"""Reading a plain YAML tree (dicts, lists, scalars) with line marks: key paths, how a
value is shown in a message, and a reader that converts shapes and scalar values while
collecting every problem with its file, line and key.

Stdlib only. The sections of the config (policy, server, volumes, ...) are
`core.policy_reader`'s; this module knows values, not the document's layout.
"""

from __future__ import annotations

import difflib
import functools
import json
import posixpath
import re
import signal
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from logvold.core.policy import ROTATE_NAMES, ReopenAction
from logvold.core.units import parse_duration, parse_size
from logvold.core.values import decode_delimiter, rotate_period, time_zone
from logvold.errors import ConfigError, ConfigProblem

KeyPath = tuple[str | int, ...]
"""Where a value sits in the document: `("volumes", 0, "containers", 1, "name")`."""
LineMap = Mapping[KeyPath, int]
"""Key path -> 1-based line of the key (or list item) in the file."""

INVALID: Final = object()
"""A value already reported as a problem: the caller leaves the field out."""
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9_])?")
MAX_STREAM_CAP = 100_000
"""Highest `maxStreams` / `maxStreamsPerVolume` accepted: one bounded listing's worth."""


def format_key(path: KeyPath) -> str:
    """`volumes[0].containers[1].policy.logs.rotate`; odd keys quoted: `a["logvold.io/logs"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def describe_value(value: object) -> str:
    """A YAML value as a message shows it: `"weekly"`, `42`, `true`, `null`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


@functools.cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())  # scans the tz database: once per process


def _join_choices(choices: Sequence[str]) -> str:
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def _suggest(word: str, known: Iterable[str]) -> str | None:
    candidates = list(known)
    for candidate in candidates:
        if candidate.lower() == word.lower():
            return candidate
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


class TreeReader:
    """Walks a YAML tree, converting values and collecting every problem found."""

    def __init__(self, file: str, lines: LineMap) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[ConfigProblem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(
            ConfigProblem(
                file=self.file, line=self._line(path), key=format_key(path), message=message
            )
        )

    def _line(self, path: KeyPath) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def raise_if_problems(self) -> None:
        if self.problems:
            ordered = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0))
            raise ConfigError(ordered)

    # --- shapes ---------------------------------------------------------------------------

    def mapping(
        self, value: object, path: KeyPath, known: Iterable[str]
    ) -> dict[str, object] | None:
        """The entries of a mapping with known keys; an absent (null) block is empty."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping, got {describe_value(value)}")
            return None
        known = tuple(known)
        entries: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.problem(path, f"keys must be strings, got {describe_value(key)}")
            elif key not in known:
                hint = _suggest(key, known)
                self.problem(
                    (*path, key),
                    f"unknown key; did you mean {hint}?"
                    if hint
                    else f"unknown key; expected one of {', '.join(known)}",
                )
            else:
                entries[key] = item
        return entries

    def items(self, value: object, path: KeyPath) -> list[object] | None:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            self.problem(path, f"expected a list, got {describe_value(value)}")
            return None
        return list(value)

    # --- scalars --------------------------------------------------------------------------

    def string(self, value: object, path: KeyPath, *, required: bool = False) -> object:
        if not isinstance(value, str):
            self.problem(path, f"expected a string, got {describe_value(value)}")
            return INVALID
        if required and not value.strip():
            self.problem(path, "must not be empty")
            return INVALID
        return value

    def name(self, value: object, path: KeyPath) -> object:
        """A name served in `/logs/<namespace>/<pod>/<container>`."""
        text = self.string(value, path, required=True)
        if isinstance(text, str) and not _NAME.fullmatch(text):
            self.problem(
                path,
                f"expected a name of letters, digits, '.', '_' or '-' (it is part of a URL),"
                f" got {describe_value(text)}",
            )
            return INVALID
        return text

    def boolean(self, value: object, path: KeyPath) -> object:
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {describe_value(value)}")
            return INVALID
        return value

    def choice(self, value: object, path: KeyPath, choices: Sequence[str]) -> object:
        if isinstance(value, str) and value in choices:
            return value
        message = f"expected {_join_choices(choices)}, got {describe_value(value)}"
        if isinstance(value, str) and (hint := _suggest(value, choices)):
            message += f"; did you mean {hint}?"
        elif isinstance(value, bool):
            message += " (YAML reads unquoted yes/no/on/off as booleans; quote the value)"
        self.problem(path, message)
        return INVALID

    def rotate(self, value: object, path: KeyPath) -> object:
        """Hourly, Daily, Never, or a period as a duration of whole seconds (>= 1s)."""
        if isinstance(value, str) and value in ROTATE_NAMES:
            return value
        expected = "expected Hourly, Daily, Never or a period such as 15m"
        if isinstance(value, str) and (hint := _suggest(value, ROTATE_NAMES)):
            self.problem(path, f"{expected}, got {describe_value(value)}; did you mean {hint}?")
            return INVALID
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.problem(path, f"{expected}, got {describe_value(value)}")
            return INVALID
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.problem(path, f"{expected}, got {describe_value(value)}")
            return INVALID
        try:
            return rotate_period(seconds)
        except ValueError as exc:
            self.problem(path, f"{exc}, got {describe_value(value)}")
            return INVALID

    def count(self, value: object, path: KeyPath) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"expected a whole number, got {describe_value(value)}")
            return INVALID
        if value < 0:
            self.problem(path, f"must not be negative, got {value}")
            return INVALID
        return value

    def stream_cap(self, value: object, path: KeyPath, *, lowest: int = 1) -> object:
        count = self.count(value, path)
        if isinstance(count, int) and not lowest <= count <= MAX_STREAM_CAP:
            self.problem(path, f"expected {lowest} to {MAX_STREAM_CAP} streams, got {count}")
            return INVALID
        return count

    def size(self, value: object, path: KeyPath, *, positive: bool = False) -> object:
        if isinstance(value, float) and value.is_integer() and value >= 0:
            value = int(value)
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.problem(
                path, f"expected a size such as 10Mi, 512Ki or 1G, got {describe_value(value)}"
            )
            return INVALID
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return INVALID
        if positive and size == 0:
            self.problem(path, "must be greater than 0")
            return INVALID
        return size

    def duration(self, value: object, path: KeyPath, *, positive: bool = False) -> object:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.problem(
                path, f"expected a duration such as 90s, 6h or 7d, got {describe_value(value)}"
            )
            return INVALID
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return INVALID
        if positive and seconds == 0:
            self.problem(path, "must be greater than 0")
            return INVALID
        return seconds

    def relative_dir(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path)
        if not isinstance(text, str):
            return INVALID
        if not text:
            return ""
        normal = posixpath.normpath(text)
        if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
            self.problem(path, f"must be a directory inside the volume, got {describe_value(text)}")
            return INVALID
        return "" if normal == "." else normal

    def delimiter(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path)
        if not isinstance(text, str):
            return INVALID
        try:
            return decode_delimiter(text)  # the same bytes as from `logvold run` and the driver
        except ValueError as exc:
            self.problem(path, str(exc))
            return INVALID

    def timezone(self, value: object, path: KeyPath) -> object:
        text = self.string(value, path, required=True)
        if not isinstance(text, str):
            return INVALID
        try:
            time_zone(text)
        except ValueError:
            hint = _suggest(text, _known_timezones())
            self.problem(
                path,
                f"unknown time zone {describe_value(text)}"
                + (
                    f"; did you mean {hint}?"
                    if hint
                    else "; use an IANA name such as Europe/Berlin"
                ),
            )
            return INVALID
        return text

    def string_map(self, value: object, path: KeyPath) -> object:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping of strings, got {describe_value(value)}")
            return INVALID
        result: dict[str, str] = {}
        ok = True
        for key, item in value.items():
            if not isinstance(key, str):
                self.problem(path, f"keys must be strings, got {describe_value(key)}")
                ok = False
            elif not isinstance(item, str):
                self.problem(
                    (*path, key), f"expected a string, got {describe_value(item)} (quote it)"
                )
                ok = False
            else:
                result[key] = item
        return result if ok else INVALID

    def reopen(self, value: object, path: KeyPath) -> object:
        if value is None:
            return None
        entries = self.mapping(value, path, ("signal", "pidFile", "command"))
        if entries is None:
            return INVALID
        before = len(self.problems)
        signal_name: str | None = None
        if "signal" in entries:
            signal_name = self._signal(entries["signal"], (*path, "signal"))
        pid_file = entries.get("pidFile")
        if "pidFile" in entries and not isinstance(
            self.string(pid_file, (*path, "pidFile"), required=True), str
        ):
            pid_file = None
        command: tuple[str, ...] = ()
        if "command" in entries:
            argv = entries["command"]
            if (
                not isinstance(argv, list | tuple)
                or not argv
                or not all(isinstance(a, str) and a for a in argv)
            ):
                self.problem(
                    (*path, "command"),
                    f"expected a non-empty list of arguments such as [nginx, -s, reopen]"
                    f" (no shell), got {describe_value(argv)}",
                )
            else:
                command = tuple(str(a) for a in argv)
        if "signal" in entries and "command" in entries:
            self.problem(path, "set either signal (with pidFile) or command, not both")
        elif "signal" in entries and "pidFile" not in entries:
            self.problem(path, "signal needs pidFile: the file holding the writer's pid")
        elif "pidFile" in entries and "signal" not in entries:
            self.problem(path, "pidFile needs signal, e.g. signal: HUP")
        elif "signal" not in entries and "command" not in entries:
            self.problem(path, "set signal and pidFile, or command")
        if len(self.problems) > before:
            return INVALID
        return ReopenAction(
            signal=signal_name,
            pid_file=pid_file if isinstance(pid_file, str) else None,
            command=command,
        )

    def _signal(self, value: object, path: KeyPath) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return signal.Signals(value).name.removeprefix("SIG")
            except ValueError:
                pass
        elif isinstance(value, str):
            name = value.strip().upper().removeprefix("SIG")
            if "SIG" + name in signal.Signals.__members__:
                return name
        self.problem(
            path, f"expected a signal name such as HUP or USR1, got {describe_value(value)}"
        )
        return None
