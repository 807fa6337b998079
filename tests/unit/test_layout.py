"""Segment names: parse/format round trips, time order, no collisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logvold.core.layout import (
    STATE_DIR_NAME,
    SegmentName,
    next_segment_name,
    parse_segment_name,
    segments_of,
    state_file_name,
)

T0 = datetime(2026, 11, 23, 11, 48, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            SegmentName(stamp=T0, seq=0, base="app.log"), "app.log.20261123-114800", id="plain"
        ),
        pytest.param(
            SegmentName(stamp=T0, seq=3, base="app.log"), "app.log.20261123-114800.0003", id="seq"
        ),
        pytest.param(
            SegmentName(stamp=T0, seq=0, base="app.log", compression="gz"),
            "app.log.20261123-114800.gz",
            id="gzip",
        ),
        pytest.param(
            SegmentName(stamp=T0, seq=12, base="app.log", compression="zst"),
            "app.log.20261123-114800.0012.zst",
            id="seq-zstd",
        ),
        pytest.param(
            SegmentName(stamp=T0, seq=10000, base="a.log"),
            "a.log.20261123-114800.10000",
            id="wide-seq",
        ),
    ],
)
def test_filename(name: SegmentName, expected: str) -> None:
    assert name.filename == expected
    assert parse_segment_name(name.base, expected) == name


def test_stem_is_stable_across_compression() -> None:
    plain = SegmentName(stamp=T0, seq=2, base="app.log")
    assert plain.with_compression("zst").stem == plain.stem
    assert plain.with_compression("zst").filename == plain.stem + ".zst"


@pytest.mark.parametrize(
    "filename",
    [
        pytest.param("app.log", id="active-file"),
        pytest.param("app.log.20261123-114800.tmp", id="temp-file"),
        pytest.param("app.log.20261123-114800.0000", id="seq-zero-is-never-written"),
        pytest.param("app.log.20261123-114800.12", id="seq-too-short"),
        pytest.param("app.log.20261323-114800", id="month-13"),
        pytest.param("app.log.20261123-114800.bz2", id="unknown-compression"),
        pytest.param("other.log.20261123-114800", id="other-stream"),
        pytest.param("app.log2.20261123-114800", id="base-prefix-only"),
        pytest.param("app.log.20261123114800", id="no-dash"),
    ],
)
def test_parse_rejects_non_segments(filename: str) -> None:
    assert parse_segment_name("app.log", filename) is None


def test_segments_of_filters_sorts_and_prefers_plain() -> None:
    names = [
        "app.log",
        "app.log.20261123-114801.gz",
        "app.log.20261123-114800.0002",
        "app.log.20261123-114800",
        "app.log.20261123-114800.0002.zst",  # crash mid-compression: plain copy wins
        "app.log.20261123-114800.0001.tmp",
        "web.log.20261123-114800",
        "app.log.20261123-114800.0001",
    ]
    got = segments_of("app.log", names)
    assert [s.filename for s in got] == [
        "app.log.20261123-114800",
        "app.log.20261123-114800.0001",
        "app.log.20261123-114800.0002",
        "app.log.20261123-114801.gz",
    ]


def test_hundred_rotations_in_one_second_never_collide_and_sort_in_order() -> None:
    now = T0 + timedelta(microseconds=250_000)
    made: list[SegmentName] = []
    for i in range(100):
        name = next_segment_name("app.log", now + timedelta(microseconds=i), made)
        # compress some of them, as the rotator would, and check order is still by stem
        made.append(name.with_compression("gz" if i % 3 == 0 else ""))
    filenames = [s.filename for s in made]
    assert len(set(filenames)) == 100
    stems = [f.removesuffix(".gz").removesuffix(".zst") for f in filenames]
    assert stems == sorted(stems)
    assert [s.seq for s in made] == list(range(1, 101))
    assert segments_of("app.log", reversed(filenames)) == made


def test_new_names_always_carry_the_sequence_so_ls_order_is_time_order() -> None:
    """`ls` sorts bytewise: without a number, `<stamp>.gz` sorted after the same second's
    `<stamp>.0001.gz` although it is older. Every new name is numbered, so sorting the
    file names (compressed or not) gives the same order as the parsed names."""
    made: list[SegmentName] = []
    for i in range(30):
        now = T0 + timedelta(seconds=i // 3, microseconds=i)
        name = next_segment_name("app.log", now, made)
        made.append(name.with_compression(("", "gz", "zst")[i % 3]))
    assert made[0].filename == "app.log.20261123-114800.0001"
    assert all(s.seq >= 1 for s in made)
    filenames = [s.filename for s in made]
    assert sorted(filenames) == filenames  # ls order == time order
    assert segments_of("app.log", sorted(filenames, reverse=True)) == made


def test_old_names_without_a_sequence_still_read_and_sort_first_in_their_second() -> None:
    names = [
        "app.log.20261123-114800.0001.gz",
        "app.log.20261123-114800.gz",
        "app.log.20261123-114759.zst",
        "app.log.20261123-114800.0002",
    ]
    got = segments_of("app.log", names)
    assert [s.filename for s in got] == [
        "app.log.20261123-114759.zst",
        "app.log.20261123-114800.gz",
        "app.log.20261123-114800.0001.gz",
        "app.log.20261123-114800.0002",
    ]
    assert got[1].seq == 0 and got[1].stem == "app.log.20261123-114800"
    # after an old name of the same second, the next name is numbered after it
    nxt = next_segment_name("app.log", T0, got[:2])
    assert nxt.filename == "app.log.20261123-114800.0001"


def test_next_name_after_clock_steps_back_sorts_after_newest() -> None:
    existing = [SegmentName(stamp=T0, seq=4, base="app.log")]
    earlier = T0 - timedelta(hours=1)
    name = next_segment_name("app.log", earlier, existing)
    assert name > existing[0]
    assert name.filename == "app.log.20261123-114800.0005"


def test_next_name_uses_utc_and_drops_microseconds() -> None:
    berlin = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 23, 12, 48, 0, 999_999, tzinfo=berlin)
    assert next_segment_name("app.log", local, []).filename == "app.log.20261123-114800.0001"


def test_state_file_lives_in_hidden_dir() -> None:
    assert STATE_DIR_NAME.startswith(".")
    assert state_file_name("app.log") == "app.log.state.json"
    assert parse_segment_name("app.log", state_file_name("app.log")) is None


_stamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))
_names = st.builds(
    SegmentName,
    stamp=_stamps,
    seq=st.integers(min_value=0, max_value=99_999),
    base=st.from_regex(r"[a-z][a-z0-9_-]{0,20}\.log", fullmatch=True),
    compression=st.sampled_from(["", "gz", "zst"]),
)


@settings(deadline=None)  # CI machines share cores: judge results, not timing
@given(_names)
def test_parse_round_trips_every_name(name: SegmentName) -> None:
    assert parse_segment_name(name.base, name.filename) == name


@settings(deadline=None)  # CI machines share cores: judge results, not timing
@given(st.lists(_names.map(lambda n: n.with_compression("")), min_size=2, max_size=20, unique=True))
def test_lexical_order_of_stems_is_time_order(names: list[SegmentName]) -> None:
    same_base = [SegmentName(stamp=n.stamp, seq=n.seq, base="app.log") for n in names]
    unique = list(dict.fromkeys(same_base))
    by_time = sorted(unique)
    seq_capped = [n for n in by_time if n.seq < 10_000]  # 4-digit padding: order holds below 10k
    assert sorted(seq_capped, key=lambda n: n.stem) == seq_capped


@settings(deadline=None)  # CI machines share cores: judge results, not timing
@given(
    st.lists(st.integers(min_value=-5_000_000, max_value=5_000_000), min_size=1, max_size=60),
)
def test_next_name_is_always_newest_whatever_the_clock_does(offsets_us: list[int]) -> None:
    made: list[SegmentName] = []
    for offset in offsets_us:
        name = next_segment_name("app.log", T0 + timedelta(microseconds=offset), made)
        assert all(name > old for old in made)
        assert name.filename not in {old.filename for old in made}
        made.append(name)
