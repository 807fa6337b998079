"""One value, one meaning: the YAML config, the flags of `logvold run` and the driver's
`binary://` pairs read delimiters and rotation periods through core.values, and the Go
boolean spellings are the same for flags and HTTP query parameters; a policy's time zone
resolves to the same zone (or the same refusal) in the config check, the scheduler and
the writer. Table-driven: every row is checked through every front end."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from multidict import MultiDict

from logvold.config.yaml_file import load_config_text
from logvold.core.policy import LogPolicy
from logvold.core.values import (
    decode_delimiter,
    needs_byte_escapes,
    parse_go_bool,
    parse_rotate,
    time_zone,
)
from logvold.daemon.scheduler import TriggerScheduler
from logvold.driver.args import parse_driver_args
from logvold.errors import BadRequest, ConfigError, FlagError
from logvold.fileio.rotating_writer import RotatingWriter
from logvold.runner import cli as runner_cli
from logvold.runner import goflags
from logvold.server.logs import parse_read_options

ENV = {"CONTAINER_ID": "abc123", "CONTAINER_NAMESPACE": "default"}


def _from_yaml(written: str) -> bytes:
    """`written` as it would appear in a config file (quotes included)."""
    config = load_config_text(f"defaults:\n  delimiter: {written}\n", "c.yaml")
    return config.defaults.delimiter


def _from_run_flags(text: str) -> bytes:
    parsed = goflags.parse(runner_cli.FLAGS, ["-format", "raw", "-delimiter", text, "true"])
    return runner_cli._policy(parsed.values).delimiter


def _from_driver(text: str) -> bytes:
    return parse_driver_args(["format", "raw", "delimiter", text], ENV).policy.delimiter


# (escaped text as typed on a command line / in single quotes, expected bytes)
DELIMITERS = [
    pytest.param("\\n", b"\n", id="newline"),
    pytest.param("\\n\\n", b"\n\n", id="blank-line"),
    pytest.param("\\x1e", b"\x1e", id="record-separator"),
    pytest.param("\\xe9", b"\xe9", id="high-byte-is-one-byte"),
    pytest.param("\\xff\\xfe", b"\xff\xfe", id="two-high-bytes"),
    pytest.param("\\e", b"\x1b", id="escape-ESC"),
    pytest.param("\\u2028", "\u2028".encode(), id="unicode-escape-is-utf8"),
    pytest.param("||", b"||", id="literal"),
    pytest.param("\\\\", b"\\", id="backslash"),
    pytest.param("\\r\\n", b"\r\n", id="crlf"),
]


@pytest.mark.parametrize(("text", "expected"), DELIMITERS)
def test_every_front_end_reads_a_delimiter_as_the_same_bytes(text: str, expected: bytes) -> None:
    assert decode_delimiter(text) == expected
    assert _from_run_flags(text) == expected
    assert _from_driver(text) == expected
    assert _from_yaml(f"'{text}'") == expected  # single-quoted: YAML leaves escapes alone
    if "\\\\" not in text:  # in double quotes YAML resolves `\\` itself first
        assert _from_yaml(f'"{text}"') == expected


def test_a_literal_non_ascii_character_is_utf8_everywhere() -> None:
    assert _from_yaml('"é"') == _from_run_flags("é") == _from_driver("é") == b"\xc3\xa9"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param("\\q", "unknown escape \\q", id="unknown-escape"),
        pytest.param("\\x1", "needs 2 hex digits", id="short-hex"),
        pytest.param("ab\\", "lone backslash", id="trailing-backslash"),
    ],
)
def test_every_front_end_refuses_the_same_delimiters(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        decode_delimiter(text)
    with pytest.raises(FlagError, match=re.escape(reason)):  # in Go's wording
        _from_run_flags(text)
    with pytest.raises(ValueError, match=re.escape(reason)):
        _from_driver(text)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("\\xe9", True), ("\\x7f", False), ("\\\\xe9", False), ("a\\n\\xA0", True), ("", False)],
)
def test_which_double_quoted_sources_need_byte_escapes(raw: str, expected: bool) -> None:
    assert needs_byte_escapes(raw) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hourly", "Hourly"),
        ("daily", "Daily"),
        ("NEVER", "Never"),
        ("", "Never"),
        ("15m", "900s"),
        ("1h30m", "5400s"),
    ],
)
def test_run_flags_and_driver_read_rotate_alike(text: str, expected: str) -> None:
    assert parse_rotate(text) == expected
    parsed = goflags.parse(runner_cli.FLAGS, ["-rotate", text, "true"])
    assert runner_cli._policy(parsed.values).rotate == expected
    assert parse_driver_args(["rotate", text], ENV).policy.rotate == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [(t, True) for t in ("1", "t", "T", "TRUE", "true", "True")]
    + [(f, False) for f in ("0", "f", "F", "FALSE", "false", "False")]
    + [(bad, None) for bad in ("yes", "on", "tRuE", "2")],
)
def test_go_booleans_mean_the_same_in_flags_and_http_parameters(
    text: str, expected: bool | None
) -> None:
    query = MultiDict({"follow": text})
    if expected is None:
        with pytest.raises(ValueError):
            parse_go_bool(text)
        with pytest.raises(ValueError):
            goflags.parse_bool(text)
        with pytest.raises(BadRequest):
            parse_read_options(query)
        return
    assert parse_go_bool(text) is expected
    assert goflags.parse_bool(text) is expected
    assert parse_read_options(query).follow is expected


@pytest.mark.parametrize(
    ("name", "known"),
    [
        ("UTC", True),
        ("Etc/UTC", True),
        ("Europe/Berlin", True),
        ("America/Argentina/Buenos_Aires", True),
        ("Z", False),  # the scheduler used to read "Z" and "" as UTC; no other copy did
        ("", False),
        ("Europe/Berln", False),
        ("../../etc/passwd", False),
        ("Europe", False),  # a directory of the tz database, not a zone
        ("Mars/Olympus_Mons", False),
    ],
)
def test_every_consumer_resolves_a_time_zone_alike(name: str, known: bool, tmp_path: Path) -> None:
    def wall() -> datetime:
        return datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

    policy = LogPolicy(rotate="Daily", timezone=name)
    scheduler: TriggerScheduler[str] = TriggerScheduler(wall, lambda: 0.0)
    quoted = '"' + name + '"'
    if not known:
        with pytest.raises(ValueError, match=f"unknown time zone {re.escape(repr(name))}"):
            time_zone(name)
        with pytest.raises(ValueError, match="unknown time zone"):
            scheduler.set_stream("s", policy)
        with pytest.raises(ValueError, match="unknown time zone"):
            RotatingWriter(str(tmp_path / "a.log"), policy, clock=wall, background=False)
        with pytest.raises(
            ConfigError, match=r"defaults\.timezone: (unknown time zone|must not be empty)"
        ):
            load_config_text(f"defaults:\n  timezone: {quoted}\n", "c.yaml")
        return
    zone = time_zone(name)
    assert zone is time_zone(name)  # cached: one object per name
    assert zone is UTC if name == "UTC" else zone == ZoneInfo(name)
    scheduler.set_stream("s", policy)
    assert "s" in scheduler
    writer = RotatingWriter(str(tmp_path / "a.log"), policy, clock=wall, background=False)
    writer.close()
    assert (
        load_config_text(f"defaults:\n  timezone: {quoted}\n", "c.yaml").defaults.timezone == name
    )
