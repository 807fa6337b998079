"""Which streams a capped volume keeps: bounded memory, stable choice."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logvold.core.stream_caps import SmallestNames, choose_streams


@given(
    st.lists(st.text(alphabet="abcxyz.", min_size=1, max_size=6), max_size=300), st.integers(0, 40)
)
def test_smallest_names_matches_sorting_everything(names: list[str], keep: int) -> None:
    collector = SmallestNames(keep)
    for name in names:
        collector.add(name)
    assert collector.result() == sorted(set(names))[:keep]


def test_smallest_names_memory_stays_bounded() -> None:
    collector = SmallestNames(10)
    names = [f"f{i:06d}.log" for i in range(100_000)]
    random.Random(7).shuffle(names)
    for name in names:
        collector.add(name)
        assert len(collector._names) < 20  # the bound is the point
    assert collector.result() == [f"f{i:06d}.log" for i in range(10)]


@pytest.mark.parametrize(
    ("existing", "new", "cap", "want"),
    [
        pytest.param([], ["a", "b", "c"], 2, ["a", "b"], id="new-in-name-order"),
        pytest.param(["z"], ["a", "b"], 2, ["z", "a"], id="managed-keep-their-place"),
        pytest.param(["y", "z", "x"], ["a"], 2, ["x", "y"], id="lowered-cap-cuts-by-name"),
        pytest.param(["b"], ["a", "b", "c"], 3, ["b", "a", "c"], id="no-duplicates"),
        pytest.param([], [], 5, [], id="empty"),
    ],
)
def test_choose_streams(existing: list[str], new: list[str], cap: int, want: list[str]) -> None:
    assert choose_streams(existing, new, cap) == want
