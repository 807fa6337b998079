"""The kubelet node log query (KEP-2258) of `GET /logs/?query=`: parsing, checks, journalctl args.

Pure and stdlib only. Mirrors the kubelet's split: a value that cannot be parsed is a 400, a parsed
query that breaks a rule is a 406, each with a reason in the kubelet's field-error wording.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from logvold.core.formats import rfc3339nano_ns
from logvold.errors import NodeLogQueryError as NodeLogQueryError

MAX_SERVICES = 4
"""Services one query may name, as in the kubelet."""
MAX_SERVICE_NAME_BYTES = 256
"""Longest service name in bytes, as in the kubelet (the longest unit name systemd allows)."""
MAX_TAIL_LINES = 100_000
"""Largest `tailLines`, as in the kubelet."""
QUERY_PARAMS = frozenset({"query", "pattern", "sinceTime", "untilTime", "tailLines", "boot"})
"""Parameters that make `GET /logs/` a node log query rather than the stream listing."""

_SERVICE_NAME = re.compile(r"[A-Za-z0-9._:@-]+")
_GO_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, kw_only=True)
class NodeLogQuery:
    """One parsed and validated node log query."""

    services: tuple[str, ...] = ()
    """Service (unit) names, in request order; never together with `file`."""
    file: str | None = None
    """A path relative to the log dir (a `query` value containing `/` or `\\`)."""
    since: datetime | None = None
    """Inclusive lower bound, UTC, rounded up to the microsecond (the journal's resolution)."""
    until: datetime | None = None
    """Inclusive upper bound, UTC, rounded down to the microsecond."""
    tail_lines: int | None = None
    """Only the last N lines (entries for the journal), 0..100000."""
    boot: int | None = None
    """Journal boot offset: 0 = current, -1 = previous, ...; journal only."""
    pattern: str = ""
    """RE2 pattern a line must contain a match of; "" = every line."""

    @property
    def is_empty(self) -> bool:
        """No recognised parameter had a value: serve the plain listing, as the kubelet does."""
        return self == NodeLogQuery()

    @property
    def journal_only_options(self) -> tuple[str, ...]:
        """The given options only the journal can apply (files carry no timestamps)."""
        names = (("sinceTime", self.since), ("untilTime", self.until), ("boot", self.boot))
        return tuple(name for name, value in names if value is not None)


def _quote(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _invalid(field: str, value: object, detail: str) -> str:
    return f"{field}: Invalid value: {_quote(value)}: {detail}"


def _first(params: Mapping[str, Sequence[str]], name: str) -> str:
    # Go's url.Values.Get: the first value, "" when absent.
    values = params.get(name)
    return values[0] if values else ""


def _parse_time(value: str, *, round_up: bool) -> datetime | None:
    """RFC 3339 as Go's time.Parse reads it (the codec's grammar); None if it does not parse.

    The journal keeps microseconds: a lower bound rounds up, an upper bound down, so
    neither takes in an entry outside the asked-for nanosecond range.
    """
    ns = rfc3339nano_ns(value.encode("ascii", "replace"))
    if ns is None:
        return None
    micros = -(-ns // 1000) if round_up else ns // 1000
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    except OverflowError:  # an offset or a round-up beyond years 1..9999
        return None


def _parse_int(value: str) -> int | None:
    """An integer as Go's strconv.Atoi reads it (optional sign, decimal digits, int64)."""
    if _GO_INT.fullmatch(value) is None:
        return None
    number = int(value)
    return number if -_INT64_MAX - 1 <= number <= _INT64_MAX else None


def _service_problem(name: str) -> str | None:
    if len(name.encode("utf-8", "surrogatepass")) > MAX_SERVICE_NAME_BYTES:
        return f"must be no more than {MAX_SERVICE_NAME_BYTES} bytes"
    if _SERVICE_NAME.fullmatch(name) is None:
        return "input contains unsupported characters"
    return None


def parse_node_log_query(
    params: Mapping[str, Sequence[str]],
    *,
    pattern_problem: Callable[[str], str | None] = lambda _pattern: None,
) -> NodeLogQuery:
    """Parse then validate the query parameters of `GET /logs/`.

    `pattern_problem` returns why a pattern does not compile (None if it does); the server
    passes RE2's, so a pattern accepted here is one the server can run. Raises
    NodeLogQueryError(400) for values that do not parse and NodeLogQueryError(406) for a
    parsed query that breaks a rule; returns an empty NodeLogQuery when no recognised
    parameter has a value.
    """
    parse_problems: list[str] = []
    services: list[str] = []
    files: list[str] = []
    queries = list(params.get("query", ()))
    for q in queries:
        # As in the kubelet: a separator makes it a file; blank values are dropped.
        if "/" in q or "\\" in q:
            files.append(q)
        elif q.strip():
            services.append(q)
    if "query" in params and not services and not files:
        parse_problems.append(_invalid("query", queries, "query cannot be empty"))

    times: dict[str, datetime | None] = {"sinceTime": None, "untilTime": None}
    for name in times:
        raw = _first(params, name)
        if raw:
            times[name] = _parse_time(raw, round_up=name == "sinceTime")
            if times[name] is None:
                parse_problems.append(_invalid(name, raw, "invalid time format, want RFC 3339"))

    ints: dict[str, int | None] = {"boot": None, "tailLines": None}
    for name in ints:
        raw = _first(params, name)
        if raw:
            ints[name] = _parse_int(raw)
            if ints[name] is None:
                parse_problems.append(_invalid(name, raw, "not an integer"))

    if parse_problems:
        raise NodeLogQueryError(400, parse_problems)

    query = NodeLogQuery(
        services=tuple(services),
        file=files[0] if files else None,
        since=times["sinceTime"],
        until=times["untilTime"],
        tail_lines=ints["tailLines"],
        boot=ints["boot"],
        pattern=_first(params, "pattern"),
    )
    if query.is_empty and not files:
        return query
    problems = _validation_problems(query, files, pattern_problem)
    if problems:
        raise NodeLogQueryError(406, problems)
    return query


def _validation_problems(
    query: NodeLogQuery, files: list[str], pattern_problem: Callable[[str], str | None]
) -> list[str]:
    problems: list[str] = []
    for name in query.services:
        problem = _service_problem(name)
        if problem is not None:
            problems.append(_invalid("query", name, problem))
    if len(query.services) > MAX_SERVICES:
        count = len(query.services)
        problems.append(f"query: Too many: {count}: must have at most {MAX_SERVICES} items")

    if not files and not query.services:
        problems.append("query: Required value: cannot be empty with options")
    elif files and query.services:
        both = f"{files}, {list(query.services)}"
        problems.append(_invalid("query", both, "cannot specify a file and service"))
    elif len(files) > 1:
        problems.append(_invalid("query", str(files), "cannot specify more than one file"))
    elif files and query.journal_only_options:
        # The kubelet refuses every option on a file; tailLines and pattern we can apply.
        options = ", ".join(query.journal_only_options)
        problems.append(_invalid("query", str(files), f"cannot specify file with {options}"))

    if query.since is not None and query.until is not None and query.since > query.until:
        until = query.until.isoformat()
        problems.append(_invalid("untilTime", until, "must not be before `sinceTime`"))
    if query.boot is not None and query.boot > 0:
        problems.append(_invalid("boot", query.boot, "must be less than 1"))
    if query.tail_lines is not None and not 0 <= query.tail_lines <= MAX_TAIL_LINES:
        detail = f"must be between 0 and {MAX_TAIL_LINES}, inclusive"
        problems.append(_invalid("tailLines", query.tail_lines, detail))
    if query.pattern:
        problem = pattern_problem(query.pattern)
        if problem is not None:
            problems.append(_invalid("pattern", query.pattern, problem))
    return problems


def journal_time(moment: datetime) -> str:
    """A UTC instant as journalctl --utc accepts it (systemd 252 rejects `+0000` suffixes)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def journalctl_args(query: NodeLogQuery, units: Sequence[str], *, directory: str = "") -> list[str]:
    """The argument list (no program name) that answers `query` for `units` from the journal.

    The kubelet's order and flags, plus `--directory` for a journal outside the system one.
    """
    args = ["--utc", "--no-pager"]
    if directory:
        args.append(f"--directory={directory}")
    if query.since is not None:
        args.append(f"--since={journal_time(query.since)}")
    if query.until is not None:
        args.append(f"--until={journal_time(query.until)}")
    if query.tail_lines is not None:
        args += ["--pager-end", f"--lines={query.tail_lines}"]
    args += [f"--unit={unit}" for unit in units]
    if query.pattern:
        args.append(f"--grep={query.pattern}")
    if query.boot is not None:
        args += ["--boot", str(query.boot)]
    args.append("--output=short-precise")
    return args
