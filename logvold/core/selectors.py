"""Kubernetes label and field selectors (`kubectl get pods -l app=web`, `--field-selector
metadata.name=web-0`) as the API server parses them, for logvold's pod and namespace
lists. Stdlib only.

Label selectors: comma-separated requirements `key`, `!key`, `key=v`, `key==v`, `key!=v`,
`key in (a,b)`, `key notin (a,b)`, `key>n`, `key<n` (all must hold). Field selectors:
`field=v`, `field==v`, `field!=v` over the fields the caller supports (others are a
"field label not supported" error, as the API server answers). Both are bounded: a
client controls them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from logvold.errors import SelectorError as SelectorError

MAX_SELECTOR_LENGTH = 4096
MAX_REQUIREMENTS = 64
_KEY_RE = re.compile(
    r"(?:[A-Za-z0-9][-A-Za-z0-9_.]{0,252}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}"
    r"[A-Za-z0-9])?"
)
_VALUE_RE = re.compile(r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector."""

    key: str
    op: str
    """exists | !exists | = | != | in | notin | gt | lt"""
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return has
        if self.op == "!exists":
            return not has
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if not has or not re.fullmatch(r"-?[0-9]{1,18}", value):
            return False
        bound = int(self.values[0])
        return int(value) > bound if self.op == "gt" else int(value) < bound


@dataclass(frozen=True)
class LabelSelector:
    """All requirements must hold; an empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text[:64]!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError(f"unbalanced '(' in selector {text[:64]!r}")
    parts.append(text[start:])
    return parts


def _check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise SelectorError(
            f"invalid label key {key[:64]!r}: a qualified name like app or example.com/tier"
        )
    return key


def _check_value(value: str) -> str:
    if not _VALUE_RE.fullmatch(value):
        raise SelectorError(
            f"invalid label value {value[:64]!r}: at most 63 characters of "
            "letters, digits, '-', '_' and '.', starting and ending with an "
            "alphanumeric"
        )
    return value


_SET_RE = re.compile(r"\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*", re.S)
_CMP_RE = re.compile(r"\s*([^\s=!<>]+)\s*(==|!=|=|>|<)\s*(.*?)\s*", re.S)


def parse_label_selector(text: str) -> LabelSelector:
    """The LabelSelector of `labelSelector=` text; SelectorError with the reason."""
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(f"label selector longer than {MAX_SELECTOR_LENGTH} characters")
    if not text.strip():
        return LabelSelector()
    parts = _split_top_level(text)
    if len(parts) > MAX_REQUIREMENTS:
        raise SelectorError(f"more than {MAX_REQUIREMENTS} requirements in a label selector")
    reqs = []
    for part in parts:
        if not part.strip():
            raise SelectorError(f"empty requirement in label selector {text[:64]!r}")
        m = _SET_RE.fullmatch(part)
        if m:
            values = tuple(_check_value(v.strip()) for v in m.group(3).split(","))
            reqs.append(Requirement(_check_key(m.group(1)), m.group(2), values))
            continue
        m = _CMP_RE.fullmatch(part)
        if m:
            key, op, value = m.group(1), m.group(2), m.group(3)
            if op in (">", "<"):
                if not re.fullmatch(r"-?[0-9]{1,18}", value):
                    raise SelectorError(f"{key}{op}{value[:32]}: {op} needs an integer")
                reqs.append(Requirement(_check_key(key), "gt" if op == ">" else "lt", (value,)))
            else:
                reqs.append(
                    Requirement(
                        _check_key(key), "!=" if op == "!=" else "=", (_check_value(value),)
                    )
                )
            continue
        bare = part.strip()
        if bare.startswith("!"):
            reqs.append(Requirement(_check_key(bare[1:].strip()), "!exists"))
        else:
            reqs.append(Requirement(_check_key(bare), "exists"))
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True)
class FieldSelector:
    """(field, op, value) terms, all must hold; op is `=` or `!=`."""

    terms: tuple[tuple[str, str, str], ...] = ()

    def matches(self, get: Callable[[str], str]) -> bool:
        return all((get(f) == v) == (op == "=") for f, op, v in self.terms)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_field_selector(text: str, supported: tuple[str, ...]) -> FieldSelector:
    """The FieldSelector of `fieldSelector=` text over `supported` field paths."""
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(f"field selector longer than {MAX_SELECTOR_LENGTH} characters")
    if not text.strip():
        return FieldSelector()
    parts = re.split(r"(?<!\\),", text)
    if len(parts) > MAX_REQUIREMENTS:
        raise SelectorError(f"more than {MAX_REQUIREMENTS} terms in a field selector")
    terms = []
    for part in parts:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.]+)\s*(==|!=|=)(.*)", part, re.S)
        if not m:
            raise SelectorError(
                f"invalid field selector term {part[:64]!r}: want field=value or field!=value"
            )
        field, op, value = m.group(1), m.group(2), _unescape(m.group(3).strip())
        if field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        terms.append((field, "!=" if op == "!=" else "=", value))
    return FieldSelector(tuple(terms))
