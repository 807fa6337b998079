"""Static volumes -> registry on real directories, including the bad inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from logvold.core.policy import Config, ContainerSpec, LogPolicy, VolumeSpec
from logvold.core.streams import StreamKey, StreamRegistry
from logvold.sources.static import StaticSource
from logvold.telemetry.metrics import Metrics


def watch_errors(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("logvold_watch_errors_total", {"source": "static"})
    return value or 0.0


def make(
    tmp_path: Path, *volumes: VolumeSpec
) -> tuple[StaticSource, StreamRegistry, Metrics, list[tuple[str, str]]]:
    registry = StreamRegistry()
    events: list[tuple[str, str]] = []
    registry.subscribe(lambda action, info: events.append((action, str(info.key))))
    metrics = Metrics()
    source = StaticSource(registry, metrics)
    source.set_config(Config(volumes=volumes))
    return source, registry, metrics, events


def test_every_log_file_is_a_stream_and_scans_diff(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "app.log").write_bytes(b"x\n")
    (vol / "sidecar.log").write_bytes(b"")
    (vol / "notes.txt").write_bytes(b"")
    (vol / "old.log.20261123-100000.gz").write_bytes(b"")  # active file gone, segment kept
    source, registry, _, events = make(
        tmp_path, VolumeSpec(name="v", path=str(vol), pod="web", namespace="prod")
    )
    report = source.scan()
    assert (report.added, report.removed, report.problems) == (3, 0, [])
    assert [str(i.key) for i in registry.snapshot()] == [
        "prod/web/app",
        "prod/web/old",
        "prod/web/sidecar",
    ]
    assert registry.get(StreamKey("prod", "web", "app")).active_path == vol / "app.log"  # type: ignore[union-attr]
    (vol / "sidecar.log").unlink()
    (vol / "new.log").write_bytes(b"")
    report = source.scan()
    assert (report.added, report.updated, report.removed) == (1, 0, 1)
    assert events[-2:] == [("added", "prod/web/new"), ("removed", "prod/web/sidecar")]
    # An unchanged scan changes nothing and tells no listener.
    before = len(events)
    assert source.scan().added == 0
    assert len(events) == before


def test_reload_diff_updates_policy_and_removes_volumes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    source, registry, _, events = make(
        tmp_path,
        VolumeSpec(
            name="a",
            path=str(a),
            containers=(ContainerSpec(name="c1", policy=LogPolicy(max_size_bytes=100)),),
        ),
        VolumeSpec(
            name="b",
            path=str(b),
            containers=(ContainerSpec(name="c2", file="out.txt", policy=LogPolicy()),),
        ),
    )
    source.scan()
    assert len(registry) == 2  # explicit containers are streams before their file exists
    source.set_config(
        Config(
            volumes=(
                VolumeSpec(
                    name="a",
                    path=str(a),
                    containers=(ContainerSpec(name="c1", policy=LogPolicy(max_size_bytes=200)),),
                ),
            )
        )
    )
    report = source.scan()
    assert (report.added, report.updated, report.removed) == (0, 1, 1)
    info = registry.get(StreamKey("default", "a", "c1"))
    assert info is not None and info.policy.max_size_bytes == 200
    assert ("removed", "default/b/c2") in events


def test_bad_inputs_are_skipped_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret\n")
    (vol / "good.log").write_bytes(b"")
    (vol / "link.log").symlink_to(outside)
    (vol / "dir.log").mkdir()
    os.close(os.open(os.fsencode(vol) + b"/bad-\xff\xfe.log", os.O_CREAT | os.O_WRONLY, 0o644))
    missing = tmp_path / "missing"
    source, registry, metrics, _ = make(
        tmp_path,
        VolumeSpec(name="v", path=str(vol)),
        VolumeSpec(name="gone", path=str(missing)),
        VolumeSpec(
            name="esc",
            path=str(vol),
            containers=(ContainerSpec(name="x", policy=LogPolicy(sub_dir="../..")),),
        ),
    )
    report = source.scan()
    assert [i.key.container for i in registry.snapshot()] == ["good"]
    text = "\n".join(report.problems)
    assert "link.log is a symlink" in text
    assert "dir.log is a directory" in text
    assert "non-UTF-8" in text and "\\xff\\xfe" in text
    assert "cannot read" in text and "missing" in text
    assert "leaves the volume" in text
    assert watch_errors(metrics) == 5
    assert caplog.text.count("static volume problem") == 5
    # The same problems again are not logged or counted again...
    source.scan()
    assert watch_errors(metrics) == 5
    # ...but a fixed one that comes back is.
    (vol / "dir.log").rmdir()
    source.scan()
    (vol / "dir.log").mkdir()
    source.scan()
    assert watch_errors(metrics) == 6
    assert outside.read_bytes() == b"secret\n"


def test_unreadable_volume_keeps_its_streams(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "app.log").write_bytes(b"")
    source, registry, metrics, _ = make(tmp_path, VolumeSpec(name="v", path=str(vol)))
    source.scan()
    hidden = tmp_path / "hidden"
    vol.rename(hidden)
    report = source.scan()
    assert report.removed == 0 and len(registry) == 1  # a flapping mount does not drop streams
    assert watch_errors(metrics) == 1
    hidden.rename(vol)
    (vol / "app.log").unlink()
    assert source.scan().removed == 1
