"""Label and field selectors parse like the API server's and stay bounded."""

from __future__ import annotations

import pytest

from logvold.core.selectors import (
    MAX_REQUIREMENTS,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

WEB = {"app": "web", "tier": "front", "version": "3"}
DB = {"app": "db"}


@pytest.mark.parametrize(
    ("text", "web", "db", "none"),
    [
        ("", True, True, True),
        ("app=web", True, False, False),
        ("app==web", True, False, False),
        ("app!=web", False, True, True),
        ("tier", True, False, False),
        ("!tier", False, True, True),
        ("app in (web, db)", True, True, False),
        ("app notin (web)", False, True, True),
        ("app in (db,web),tier!=front", False, True, False),
        ("version>2", True, False, False),
        ("version<3", False, False, False),
        ("example.com/team", False, False, False),
    ],
)
def test_label_selector_matches(text: str, web: bool, db: bool, none: bool) -> None:
    sel = parse_label_selector(text)
    assert (sel.matches(WEB), sel.matches(DB), sel.matches({})) == (web, db, none)


@pytest.mark.parametrize(
    "text",
    [
        "app in (web",
        "app)",
        "app=web,,tier",
        "app=we b",
        "-app=x",
        "app=" + "x" * 64,
        "version>abc",
        ",".join(["a=b"] * (MAX_REQUIREMENTS + 1)),
        "a=" + "b" * 5000,
    ],
)
def test_label_selector_rejects(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(text)


def test_field_selector() -> None:
    fields = ("metadata.name", "metadata.namespace")
    obj = {"metadata.name": "web-0", "metadata.namespace": "shop"}
    sel = parse_field_selector("metadata.name=web-0,metadata.namespace!=default", fields)
    assert sel.matches(obj.__getitem__)
    assert not parse_field_selector("metadata.name==web-1", fields).matches(obj.__getitem__)
    assert parse_field_selector(r"metadata.name=a\,b", fields).terms == (
        ("metadata.name", "=", "a,b"),
    )
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.hostIP"):
        parse_field_selector("spec.hostIP=1.2.3.4", fields)
    with pytest.raises(SelectorError, match=r"want field=value"):
        parse_field_selector("metadata.name", fields)
