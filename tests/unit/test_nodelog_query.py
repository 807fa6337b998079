"""Node log query validation: the kubelet's rules and limits, 400 to parse, 406 to validate."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest

from logvold.core.nodelog_query import (
    MAX_SERVICE_NAME_BYTES,
    MAX_SERVICES,
    MAX_TAIL_LINES,
    NodeLogQuery,
    NodeLogQueryError,
    journal_time,
    journalctl_args,
)
from logvold.server.nodelog import files as nodelog_files
from logvold.server.nodelog.handler import _accepts_gzip, compile_pattern, parse_node_log_query

Q = dict[str, list[str]]


def q(**params: str | list[str]) -> Q:
    return {k: v if isinstance(v, list) else [v] for k, v in params.items()}


ACCEPTED = [
    pytest.param(q(query="kubelet"), NodeLogQuery(services=("kubelet",)), id="one-service"),
    pytest.param(
        q(query=["kubelet", "containerd.service", "a@b:c_d-e"]),
        NodeLogQuery(services=("kubelet", "containerd.service", "a@b:c_d-e")),
        id="services-with-every-allowed-char",
    ),
    pytest.param(
        q(query=["a", "b", "c", "d"]),
        NodeLogQuery(services=("a", "b", "c", "d")),
        id="four-services",
    ),
    pytest.param(
        q(query=["kubelet", "  "]), NodeLogQuery(services=("kubelet",)), id="blank-value-dropped"
    ),
    pytest.param(
        q(query="x" * MAX_SERVICE_NAME_BYTES), NodeLogQuery(services=("x" * 256,)), id="256-bytes"
    ),
    pytest.param(q(query="/kubelet.log"), NodeLogQuery(file="/kubelet.log"), id="file-slash"),
    pytest.param(q(query="..\\x"), NodeLogQuery(file="..\\x"), id="backslash-is-file"),
    pytest.param(
        q(query="a/b.log", tailLines="3", pattern="err"),
        NodeLogQuery(file="a/b.log", tail_lines=3, pattern="err"),
        id="file-with-tail-and-pattern-beyond-kubelet",
    ),
    pytest.param(
        q(query="k", sinceTime="2026-11-20T10:00:00Z", untilTime="2026-11-20T10:00:00Z"),
        NodeLogQuery(
            services=("k",),
            since=datetime(2026, 11, 20, 10, tzinfo=UTC),
            until=datetime(2026, 11, 20, 10, tzinfo=UTC),
        ),
        id="since-equals-until-inclusive",
    ),
    pytest.param(
        q(query="k", sinceTime="2026-11-20T12:00:00+02:00"),
        NodeLogQuery(services=("k",), since=datetime(2026, 11, 20, 10, tzinfo=UTC)),
        id="offset-converted-to-utc",
    ),
    pytest.param(
        q(
            query="k",
            sinceTime="2026-11-20T10:00:00.0000001Z",
            untilTime="2026-11-20T10:00:00.9999999Z",
        ),
        NodeLogQuery(
            services=("k",),
            since=datetime(2026, 11, 20, 10, 0, 0, 1, tzinfo=UTC),
            until=datetime(2026, 11, 20, 10, 0, 0, 999999, tzinfo=UTC),
        ),
        id="nanoseconds-since-up-until-down",
    ),
    pytest.param(
        q(query="k", tailLines="0"), NodeLogQuery(services=("k",), tail_lines=0), id="tail-0"
    ),
    pytest.param(
        q(query="k", tailLines=str(MAX_TAIL_LINES)),
        NodeLogQuery(services=("k",), tail_lines=100000),
        id="tail-100000",
    ),
    pytest.param(
        q(query="k", tailLines="+7"),
        NodeLogQuery(services=("k",), tail_lines=7),
        id="tail-plus-sign",
    ),
    pytest.param(q(query="k", boot="0"), NodeLogQuery(services=("k",), boot=0), id="boot-0"),
    pytest.param(
        q(query="k", boot="-3"), NodeLogQuery(services=("k",), boot=-3), id="boot-negative"
    ),
    pytest.param(
        q(query="k", tailLines=["2", "x"]),
        NodeLogQuery(services=("k",), tail_lines=2),
        id="first-value",
    ),
    pytest.param(
        q(query="k", pattern="err(or)?"),
        NodeLogQuery(services=("k",), pattern="err(or)?"),
        id="re2",
    ),
    pytest.param({}, NodeLogQuery(), id="nothing-is-listing"),
    pytest.param(
        q(pattern="", tailLines="", boot=""), NodeLogQuery(), id="empty-values-are-listing"
    ),
    pytest.param(q(follow="true"), NodeLogQuery(), id="unknown-params-ignored"),
]


@pytest.mark.parametrize(("params", "expected"), ACCEPTED)
def test_accepted(params: Q, expected: NodeLogQuery) -> None:
    assert parse_node_log_query(params) == expected


REFUSED = [
    # 400: a value that does not parse, as the kubelet's newNodeLogQuery.
    pytest.param(q(query="   "), 400, "query cannot be empty", id="blank-query"),
    pytest.param(q(query=""), 400, "query cannot be empty", id="empty-query"),
    pytest.param(
        q(query="k", sinceTime="yesterday"), 400, "sinceTime: Invalid value", id="since-word"
    ),
    pytest.param(q(query="k", sinceTime="2026-11-20 10:00:00Z"), 400, "sinceTime", id="since-no-T"),
    pytest.param(
        q(query="k", sinceTime="2026-11-20T10:00:00"), 400, "sinceTime", id="since-no-zone"
    ),
    pytest.param(
        q(query="k", sinceTime="2026-11-20T10:00:00+0000"),
        400,
        "sinceTime",
        id="since-offset-no-colon",
    ),
    pytest.param(
        q(query="k", sinceTime="2026-13-20T10:00:00Z"), 400, "sinceTime", id="since-month-13"
    ),
    pytest.param(
        q(query="k", sinceTime="2026-02-30T10:00:00Z"), 400, "sinceTime", id="since-feb-30"
    ),
    pytest.param(
        q(query="k", untilTime="2026-11-20T24:00:00Z"), 400, "untilTime", id="until-hour-24"
    ),
    pytest.param(
        q(query="k", untilTime="2026-11-20T10:00:00+24:00"), 400, "untilTime", id="until-bad-offset"
    ),
    pytest.param(
        q(query="k", tailLines="ten"), 400, 'tailLines: Invalid value: "ten"', id="tail-word"
    ),
    pytest.param(q(query="k", tailLines="1.5"), 400, "tailLines", id="tail-float"),
    pytest.param(q(query="k", tailLines=" 5"), 400, "tailLines", id="tail-space"),
    pytest.param(q(query="k", tailLines="1_000"), 400, "tailLines", id="tail-underscore"),
    pytest.param(
        q(query="k", tailLines="9223372036854775808"), 400, "tailLines", id="tail-int64-overflow"
    ),
    pytest.param(q(query="k", boot="last"), 400, "boot: Invalid value", id="boot-word"),
    pytest.param(
        q(query="k", boot="-1", tailLines="x"), 400, "tailLines", id="parse-beats-validate"
    ),
    # 406: parsed but breaking a rule, as the kubelet's validate().
    pytest.param(
        q(tailLines="5"),
        406,
        "query: Required value: cannot be empty with options",
        id="options-only",
    ),
    pytest.param(q(pattern="x"), 406, "cannot be empty with options", id="pattern-only"),
    pytest.param(q(query="kube let"), 406, "unsupported characters", id="space-in-service"),
    pytest.param(q(query="k;rm -rf"), 406, "unsupported characters", id="shell-chars"),
    pytest.param(q(query="k$x"), 406, "unsupported characters", id="dollar"),
    pytest.param(q(query="kübelet"), 406, "unsupported characters", id="non-ascii"),
    pytest.param(q(query=" kubelet"), 406, "unsupported characters", id="padded-service"),
    pytest.param(q(query="x" * 257), 406, "no more than 256 bytes", id="257-bytes"),
    pytest.param(
        q(query=["a", "b", "c", "d", "e"]),
        406,
        "Too many: 5: must have at most 4",
        id="five-services",
    ),
    pytest.param(
        q(query=["a/b", "svc"]), 406, "cannot specify a file and service", id="file-and-service"
    ),
    pytest.param(q(query=["a/b", "c/d"]), 406, "cannot specify more than one file", id="two-files"),
    pytest.param(
        q(query="a/b", sinceTime="2026-11-20T10:00:00Z"),
        406,
        "file with sinceTime",
        id="file-since",
    ),
    pytest.param(q(query="a/b", boot="0"), 406, "file with boot", id="file-boot"),
    pytest.param(
        q(query="k", sinceTime="2026-11-20T10:00:01Z", untilTime="2026-11-20T10:00:00Z"),
        406,
        "untilTime: Invalid value",
        id="since-after-until",
    ),
    pytest.param(
        q(query="k", boot="1"), 406, "boot: Invalid value: 1: must be less than 1", id="boot-1"
    ),
    pytest.param(
        q(query="k", tailLines="-1"), 406, "must be between 0 and 100000", id="tail-negative"
    ),
    pytest.param(
        q(query="k", tailLines="100001"), 406, "tailLines: Invalid value: 100001", id="tail-100001"
    ),
    pytest.param(
        q(query="k", pattern="(unclosed"), 406, "pattern: Invalid value", id="pattern-paren"
    ),
    pytest.param(
        q(query="k", pattern="(?=lookahead)"), 406, "error parsing regexp", id="pattern-not-re2"
    ),
    pytest.param(q(query="k", pattern="a{1001}"), 406, "pattern", id="pattern-repeat-too-big"),
]


@pytest.mark.parametrize(("params", "status", "reason"), REFUSED)
def test_refused(params: Q, status: int, reason: str) -> None:
    with pytest.raises(NodeLogQueryError) as caught:
        parse_node_log_query(params)
    assert caught.value.status == status
    assert reason in caught.value.reason


def test_every_problem_is_reported_in_one_aggregate() -> None:
    with pytest.raises(NodeLogQueryError) as caught:
        parse_node_log_query(q(query=["a b", "c", "d", "e", "f"], boot="2", tailLines="-1"))
    err = caught.value
    assert err.status == 406
    assert len(err.problems) == 4
    assert err.reason.startswith("[") and err.reason.endswith("]")


def test_limits_are_the_kubelets() -> None:
    assert (MAX_SERVICES, MAX_SERVICE_NAME_BYTES, MAX_TAIL_LINES) == (4, 256, 100_000)


def test_journalctl_args_order_and_utc_times() -> None:
    query = parse_node_log_query(
        q(
            query=["kubelet", "containerd"],
            sinceTime="2026-11-20T12:00:00+02:00",
            untilTime="2026-11-20T10:00:05.5Z",
            tailLines="2",
            pattern="error",
            boot="-1",
        )
    )
    assert journalctl_args(query, query.services, directory="/j") == [
        "--utc",
        "--no-pager",
        "--directory=/j",
        "--since=2026-11-20 10:00:00.000000",
        "--until=2026-11-20 10:00:05.500000",
        "--pager-end",
        "--lines=2",
        "--unit=kubelet",
        "--unit=containerd",
        "--grep=error",
        "--boot",
        "-1",
        "--output=short-precise",
    ]
    assert journalctl_args(NodeLogQuery(services=("k",)), ["k"]) == [
        "--utc",
        "--no-pager",
        "--unit=k",
        "--output=short-precise",
    ]
    assert (
        journal_time(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2026-01-02 03:04:05.000006"
    )


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("identity", False),
        ("", False),
        ("*", True),
    ],
)
def test_accepts_gzip(header: str, accepted: bool) -> None:
    assert _accepts_gzip(header) is accepted


def test_pattern_case_follows_journalctl_smart_case() -> None:
    assert compile_pattern("error").search(b"ERROR here") is not None
    assert compile_pattern("Error").search(b"ERROR here") is None
    assert compile_pattern("Error").search(b"an Error") is not None


# --- file tail and filter (the pure-ish readers the handler runs in a thread) ---


def _lines_of(content: bytes) -> list[bytes]:
    parts = content.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    return out + ([parts[-1]] if parts[-1] else [])


def _open(tmp_path: object, content: bytes) -> int:
    path = os.path.join(str(tmp_path), "f.log")
    with open(path, "wb") as f:
        f.write(content)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\nb\n", b"\n\n\nx\n\n", b"one\ntwo\nthree\nfour\n" * 50],
    ids=["empty", "newline", "no-newline", "one", "last-open", "two", "blanks", "many"],
)
@pytest.mark.parametrize("count", [0, 1, 2, 3, 1000])
def test_read_tail_matches_a_reference(
    tmp_path: object, content: bytes, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodelog_files, "BLOCK_BYTES", 5)  # force many backward blocks
    tail = nodelog_files.read_tail(
        _open(tmp_path, content), count, None, time.monotonic() + 10, 1 << 20
    )
    assert tail.lines == (_lines_of(content)[-count:] if count else [])
    assert not tail.truncated


def test_read_tail_with_pattern_and_byte_budget(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodelog_files, "BLOCK_BYTES", 16)
    content = b"".join(
        b"line %03d %s\n" % (i, b"error" if i % 3 == 0 else b"ok") for i in range(100)
    )
    deadline = time.monotonic() + 10
    tail = nodelog_files.read_tail(
        _open(tmp_path, content), 3, compile_pattern("error"), deadline, 1 << 20
    )
    assert tail.lines == [b"line 093 error\n", b"line 096 error\n", b"line 099 error\n"]
    small = nodelog_files.read_tail(
        _open(tmp_path, content), 3, compile_pattern("error"), deadline, 30
    )
    assert small.lines == [b"line 096 error\n", b"line 099 error\n"] and small.truncated


def test_iter_forward_filters_lines_and_keeps_an_open_last_line(tmp_path: object) -> None:
    content = b"a error\nb ok\nc error\nd error-without-newline"
    chunks = nodelog_files.iter_forward(
        _open(tmp_path, content), compile_pattern("error"), time.monotonic() + 10
    )
    assert b"".join(chunks) == b"a error\nc error\nd error-without-newline"


def test_readers_stop_at_the_deadline(tmp_path: object) -> None:
    with pytest.raises(nodelog_files.DeadlineExceeded):
        list(nodelog_files.iter_forward(_open(tmp_path, b"x\n"), None, time.monotonic() - 1))
    with pytest.raises(nodelog_files.DeadlineExceeded):
        nodelog_files.read_tail(_open(tmp_path, b"x\n"), 1, None, time.monotonic() - 1, 100)


@pytest.mark.parametrize(
    "pattern",
    [
        "error",
        "^b",
        "a$",
        "^$",
        r"a\sb",
        "(?s)a.b",
        "b*",
        r"\bab\b",
        r"\Aa",
        r"b\z",
        "(?-m)^a",
        "[^a]",
        "a[^q]*b",  # a match over a newline that swallows the next line's own match
        r"\Bb",
        r"r\s*$",
    ],
)
def test_block_scan_finds_exactly_the_per_line_matches(pattern: str) -> None:
    import random

    rng = random.Random(pattern)
    matcher = compile_pattern(pattern)
    for _ in range(300):
        lines = [bytes(rng.choice(b"ab error") for _ in range(rng.randint(0, 6))) for _ in range(8)]
        buf = b"\n".join(lines) + b"\n"
        per_line = [line for line in lines if matcher.search(line) is not None]
        assert [buf[s:e] for s, e in matcher.spans(buf)] == per_line, (pattern, lines)
        kept, newest = matcher.filter(lines)
        assert kept == per_line and newest == (matcher.search(lines[-1]) is not None)
