"""Command-line flags parsed exactly like Go's `flag` package, and its usage text.

kube-log-runner is a Go program; operators' manifests pass it `-flag=value`,
`--flag value` and bare booleans, so `logvold run` must accept the same
spellings, stop at the same place and fail with the same messages. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from logvold.core.values import parse_go_bool
from logvold.errors import FlagError, HelpRequested

Kind = Literal["bool", "string", "duration", "int", "value"]


@dataclass(frozen=True, kw_only=True)
class FlagSpec:
    """One flag: its name, kind, default (as Go prints it) and usage line."""

    name: str
    kind: Kind
    default: str
    """The default in its command-line spelling (`"true"`, `"0s"`, `""`, `"none"`)."""
    usage: str
    zero: str = ""
    """What the kind's zero value prints as: Go omits `(default ...)` when they match."""
    check: Callable[[str], object] | None = None
    """Validates a value (raises ValueError); Go reports `invalid value ... : <message>`."""

    def is_bool(self) -> bool:
        return self.kind == "bool"


@dataclass(frozen=True)
class ParsedFlags:
    """Values by flag name (all flags, defaults filled in) and the remaining arguments."""

    values: dict[str, str]
    args: list[str]
    set_flags: frozenset[str] = field(default_factory=frozenset)
    """Names given on the command line (Go's flag.Visit)."""


parse_bool = parse_go_bool
"""Go's strconv.ParseBool (core.values, shared with HTTP query parameters)."""


def parse(specs: Sequence[FlagSpec], argv: Sequence[str]) -> ParsedFlags:
    """Parse `argv` like flag.FlagSet.Parse: flags first, stop at the first non-flag or `--`.

    Raises FlagError with Go's message, or HelpRequested for an undefined -h/-help.
    """
    by_name = {s.name: s for s in specs}
    values = {s.name: s.default for s in specs}
    seen: set[str] = set()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if len(arg) < 2 or arg[0] != "-":
            break
        num_minuses = 1
        if arg[1] == "-":
            num_minuses = 2
            if len(arg) == 2:  # "--" terminates the flags
                i += 1
                break
        name = arg[num_minuses:]
        if not name or name[0] == "-" or name[0] == "=":
            raise FlagError(f"bad flag syntax: {arg}")
        i += 1
        has_value, value = False, ""
        if "=" in name[1:]:
            eq = name.index("=", 1)
            name, value, has_value = name[:eq], name[eq + 1 :], True
        spec = by_name.get(name)
        if spec is None:
            if name in ("help", "h"):
                raise HelpRequested()
            raise FlagError(f"flag provided but not defined: -{name}")
        if spec.is_bool():
            if has_value:
                try:
                    parse_bool(value)
                except ValueError:
                    raise FlagError(
                        f"invalid boolean value {_go_quote(value)} for -{name}: parse error"
                    ) from None
            else:
                value = "true"
        else:
            if not has_value:
                if i >= len(args):
                    raise FlagError(f"flag needs an argument: -{name}")
                value = args[i]
                i += 1
            if spec.check is not None:
                try:
                    spec.check(value)
                except ValueError as exc:
                    raise FlagError(
                        f"invalid value {_go_quote(value)} for flag -{name}: {exc}"
                    ) from None
        values[name] = value
        seen.add(name)
    return ParsedFlags(values=values, args=args[i:], set_flags=frozenset(seen))


def usage(prog: str, specs: Sequence[FlagSpec]) -> str:
    """The text flag.PrintDefaults prints after `Usage of <prog>:`, flags sorted by name."""
    lines = [f"Usage of {prog}:"]
    for spec in sorted(specs, key=lambda s: s.name):
        type_name, text = _unquote_usage(spec)
        head = f"  -{spec.name}"
        if type_name:
            head += f" {type_name}"
        # Go: a one-letter boolean flag keeps its usage on the same line.
        sep = "\t" if len(head) <= 4 else "\n    \t"
        text = text.replace("\n", "\n    \t")
        line = head + sep + text
        if spec.default != spec.zero:
            shown = _go_quote(spec.default) if spec.kind == "string" else spec.default
            line += f" (default {shown})"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _unquote_usage(spec: FlagSpec) -> tuple[str, str]:
    """Go's flag.UnquoteUsage: a back-quoted word in the usage names the value."""
    text = spec.usage
    start = text.find("`")
    if start >= 0:
        end = text.find("`", start + 1)
        if end >= 0:
            name = text[start + 1 : end]
            return name, text[:start] + name + text[end + 1 :]
    names: dict[Kind, str] = {
        "bool": "",
        "string": "string",
        "duration": "duration",
        "int": "int",
        "value": "value",
    }
    return names[spec.kind], text


def _go_quote(text: str) -> str:
    """strconv.Quote for the printable-ASCII-and-escapes cases that matter in messages."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
