"""The `/logs/` listing on real directories: several streams of one directory share one
listing, any active file name (not only `*.log`) finds its segments, and pages are cut
in key order."""

from __future__ import annotations

from pathlib import Path

import pytest

from logvold.core.streams import StreamKey
from logvold.errors import BadListParam
from logvold.server.stream_list import describe_many, page_of, parse_page
from tests.support.streams import build_stream, make_events


def test_streams_of_one_directory_and_any_file_name(tmp_path: Path) -> None:
    shared = tmp_path / "vol"
    a = build_stream(
        shared, make_events(150, "raw"), base="access", key=StreamKey("default", "p", "access")
    )
    b = build_stream(
        shared,
        make_events(150, "raw"),
        base="b.log.log",
        layout=(("plain", 50),),
        key=StreamKey("default", "p", "b"),
    )
    rows = describe_many([b, a])
    assert [r["container"] for r in rows] == ["b", "access"]
    assert rows[0]["segments"]["count"] == 1
    assert rows[1]["segments"]["count"] == 3 and rows[1]["segments"]["compressed"] == 2
    assert rows[1]["activeFile"]["apparentBytes"] > 0


def test_pages_in_key_order_and_only_what_is_visible(tmp_path: Path) -> None:
    infos = [
        build_stream(
            tmp_path / f"d{i}",
            make_events(5, "raw"),
            layout=(),
            key=StreamKey("ns", f"pod{i}", "c"),
        )
        for i in range(7)
    ]
    hidden = {StreamKey("ns", "pod3", "c")}
    page = page_of(reversed(infos), visible=lambda i: i.key not in hidden, size=4, after=None)
    assert [r["pod"] for r in page.items] == ["pod0", "pod1", "pod2", "pod4"]
    assert page.total == 6 and page.next_after == StreamKey("ns", "pod4", "c")
    rest = page_of(infos, visible=lambda i: i.key not in hidden, size=4, after=page.next_after)
    assert [r["pod"] for r in rest.items] == ["pod5", "pod6"] and rest.next_after is None


@pytest.mark.parametrize(
    ("limit", "token"),
    [
        ("0", None),
        ("5001", None),
        ("²", None),
        ("9" * 5000, None),
        ("-1", None),
        (None, "a/b"),
        (None, "a//c"),
        (None, "x" * 2000),
    ],
)
def test_bad_page_params(limit: str | None, token: str | None) -> None:
    with pytest.raises(BadListParam):
        parse_page(limit, token)


def test_page_params() -> None:
    assert parse_page(None, None) == (500, None)
    assert parse_page("20", "ns/pod/c") == (20, StreamKey("ns", "pod", "c"))
