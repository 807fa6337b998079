"""A list-less static volume holding more `*.log` files than its cap, on a real directory:
the first names win and keep their place, the rest are refused in one log line per
episode and in `logvold_streams_over_cap`, and nothing is stat'ed per refused file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from logvold.core.policy import Config, VolumeSpec
from logvold.core.streams import StreamRegistry
from logvold.sources.static import StaticSource
from logvold.telemetry.metrics import Metrics


def over_cap(metrics: Metrics, volume: str) -> float | None:
    return metrics.registry.get_sample_value("logvold_streams_over_cap", {"volume": volume})


def create(directory: Path, names: list[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def make(config: Config) -> tuple[StaticSource, StreamRegistry, Metrics]:
    registry = StreamRegistry()
    metrics = Metrics()
    source = StaticSource(registry, metrics)
    source.set_config(config)
    return source, registry, metrics


def containers(registry: StreamRegistry) -> list[str]:
    return [i.key.container for i in registry.snapshot()]


def test_cap_keeps_first_names_and_reports_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    create(vol, [f"c{i:04d}.log" for i in range(2000)])
    config = Config(
        volumes=(
            VolumeSpec(name="big", path=str(vol)),
            VolumeSpec(name="small", path=str(tmp_path / "small")),
        ),
        max_streams_per_volume=50,
    )
    (tmp_path / "small").mkdir()
    source, registry, metrics = make(config)
    assert over_cap(metrics, "big") == 0 and over_cap(metrics, "small") == 0  # exist at 0
    with caplog.at_level(logging.INFO, logger="logvold.sources.static"):
        for _ in range(3):
            source.scan()
    assert containers(registry) == [f"c{i:04d}" for i in range(50)]
    assert over_cap(metrics, "big") == 1950
    assert source.over_cap() == {"big": 1950}
    over_lines = [r for r in caplog.records if "stream cap" in r.getMessage()]
    assert len(over_lines) == 1, [r.getMessage() for r in over_lines]
    # A smaller name appearing later does not push a managed stream out.
    create(vol, ["a-first.log"])
    source.scan()
    assert "a-first" not in containers(registry)
    assert "c0049" in containers(registry)
    # A managed stream going away frees its place for the next name in order.
    (vol / "c0000.log").unlink()
    source.scan()
    assert "c0000" not in containers(registry) and "a-first" in containers(registry)
    assert len(registry) == 50
    # Back under the cap: the gauge drops to 0 and one line says so.
    for i in range(1, 2000):
        (vol / f"c{i:04d}.log").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="logvold.sources.static"):
        source.scan()
        source.scan()
    assert over_cap(metrics, "big") == 0
    assert len([r for r in caplog.records if "back under" in r.getMessage()]) == 1
    assert containers(registry) == ["a-first"]


def test_per_volume_key_overrides_the_node_default(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    create(vol, [f"s{i}.log" for i in range(10)])
    config = Config(
        volumes=(VolumeSpec(name="v", path=str(vol), max_streams=3),), max_streams_per_volume=100
    )
    source, registry, metrics = make(config)
    source.scan()
    assert len(registry) == 3 and over_cap(metrics, "v") == 7


def test_refused_symlinks_leave_their_place_to_the_next_name(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    for i in range(3):
        (vol / f"a{i}.log").symlink_to("/etc/passwd")
    create(vol, [f"b{i}.log" for i in range(5)])
    source, registry, metrics = make(
        Config(volumes=(VolumeSpec(name="v", path=str(vol)),), max_streams_per_volume=4)
    )
    report = source.scan()
    assert containers(registry) == ["b0", "b1", "b2", "b3"]
    assert sum(1 for p in report.problems if "symlink" in p) == 3
    assert over_cap(metrics, "v") == 1


def test_a_hundred_thousand_names_cost_no_stat_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    create(vol, [f"f{i:06d}.log" for i in range(100_000)])
    source, registry, metrics = make(Config(volumes=(VolumeSpec(name="v", path=str(vol)),)))
    calls = 0
    real_stat = os.stat

    def counting_stat(*args: object, **kwargs: object) -> os.stat_result:
        nonlocal calls
        calls += 1
        return real_stat(*args, **kwargs)  # type: ignore[arg-type]

    # Counting only (the real stat runs): the point is how many are made.
    monkeypatch.setattr(os, "stat", counting_stat)
    source.scan()
    monkeypatch.undo()
    assert len(registry) == 256
    assert calls <= 3 * 256 + 16, calls
    assert over_cap(metrics, "v") == 100_000 - 256


def test_file_events_list_an_over_cap_volume_at_most_every_few_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logvold.sources.static as static_source

    # A long interval, so the test does not depend on how fast the machine is.
    monkeypatch.setattr(static_source, "OVER_CAP_RESCAN_S", 3600.0)
    vol, calm = tmp_path / "vol", tmp_path / "calm"
    vol.mkdir()
    calm.mkdir()
    create(vol, [f"s{i}.log" for i in range(10)])
    config = Config(
        volumes=(
            VolumeSpec(name="v", path=str(vol), max_streams=3),
            VolumeSpec(name="calm", path=str(calm)),
        )
    )
    source, registry, _ = make(config)
    source.scan()
    assert containers(registry) == ["s0", "s1", "s2"]
    (vol / "s0.log").unlink()
    create(calm, ["new.log"])
    # A file-event rescan of both: the over-cap volume was listed just now and waits,
    # the calm one is listed at once.
    source.scan(["v", "calm"])
    assert containers(registry) == ["new", "s0", "s1", "s2"]
    # The periodic full scan lists everything.
    source.scan()
    assert containers(registry) == ["new", "s1", "s2", "s3"]
