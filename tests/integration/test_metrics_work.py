"""Every declared metric moves with the work it names: a foreign writer's bytes, events
and maxEventSize splits counted at each rotation; series at 0 before the first failure;
a removed stream's series gone; a follower's hang-up a 499; segments stamped with the
time of their last write."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from logvold.core.streams import StreamKey, StreamRegistry
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.state import load_state
from logvold.telemetry.metrics import ROTATION_ERRORS, Metrics
from tests.e2e.serve_support import wait_for
from tests.integration.rotator_kit import make_info, whole_stream
from tests.support.api_server import RunningServer
from tests.support.events import make_event, split_raw, verify
from tests.support.streams import build_stream, make_events


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition()[0].decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in _samples(metrics).items() if n == name and set(labels.items()) <= ls
    )


def test_foreign_writer_bytes_events_and_splits_counted_at_rotation(tmp_path: Path) -> None:
    metrics = Metrics()
    info = make_info(
        tmp_path, max_size_bytes=1, max_files=0, max_event_size_bytes=1024, delimiter=b"\n\n"
    )
    metrics.add_stream("default", "pod", "app")
    rot = StreamRotator(info, metrics)
    rng = random.Random(7)

    # events 25..44 are over maxEventSize (3000-3500 bytes: cut into pieces of <= 1 KiB)
    def event(i: int) -> bytes:
        if 25 <= i < 45:
            return make_event(i, rng, delimiter=b"\n\n", min_len=3000, max_len=3500)
        return make_event(i, rng, delimiter=b"\n\n")

    written = b"".join(event(i) for i in range(70))
    with (tmp_path / "app.log").open("ab") as f:
        for i in range(0, len(written), 4096):
            f.write(written[i : i + 4096])
            f.flush()
            rot.rotate("size")
    rot.rotate("size")
    assert whole_stream(tmp_path) == written
    assert verify(split_raw([written], b"\n\n")).ok
    assert _value(metrics, "logvold_bytes_written_total", container="app") == len(written)
    splits = _value(metrics, "logvold_events_split_total", container="app")
    events = _value(metrics, "logvold_events_written_total", container="app")
    # each huge event is cut 2 or 3 times (3000-3520 bytes in pieces of 1 KiB), none other
    assert 40 <= splits <= 60
    # the framer's events: whole ones plus the pieces of split ones (a cut can land on a
    # piece that a segment boundary already ended, so at most one piece per cut)
    assert 70 <= events <= 70 + splits
    assert events >= 70 + splits - 5


def test_segment_carries_its_last_write_time_in_state_and_mtime(tmp_path: Path) -> None:
    rot = StreamRotator(make_info(tmp_path, max_size_bytes=1, max_files=0), Metrics())
    active = tmp_path / "app.log"
    active.write_bytes(b"one\n")
    os.utime(active, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    first = rot.rotate("size")
    with active.open("ab") as f:
        f.write(b"two\n")
    os.utime(active, ns=(1_700_000_100_000_000_000, 1_700_000_100_000_000_000))
    second = rot.rotate("size")
    assert first is not None and second is not None
    assert (tmp_path / first.segment).stat().st_mtime_ns == 1_700_000_000_000_000_000
    assert (tmp_path / second.segment).stat().st_mtime_ns == 1_700_000_100_000_000_000
    state = load_state(tmp_path, "app.log")
    assert state is not None
    recs = {r.stem: r for r in state.segments}
    assert recs[first.segment].last_write_ns == 1_700_000_000_000_000_000
    assert recs[second.segment].first_write_ns == 1_700_000_000_000_000_000
    assert recs[second.segment].last_write_ns == 1_700_000_100_000_000_000


def test_stream_series_start_at_zero_and_go_with_the_stream() -> None:
    metrics = Metrics()
    metrics.add_stream("ns", "web", "app")
    metrics.add_stream("ns", "web", "sidecar")
    metrics.rotations.labels("ns", "web", "app", "size", "punch").inc()
    for error in ROTATION_ERRORS:
        assert (
            "logvold_rotation_failures_total",
            frozenset(
                {("namespace", "ns"), ("pod", "web"), ("container", "app"), ("error", error)}
            ),
        ) in _samples(metrics)
    assert _value(metrics, "logvold_config_reloads_total", result="error") == 0
    assert ("logvold_config_reloads_total", frozenset({("result", "error")})) in _samples(metrics)
    metrics.remove_stream("ns", "web", "app")
    text = metrics.exposition()[0].decode()
    assert 'container="app"' not in text
    assert 'container="sidecar"' in text
    assert "_created" not in text
    assert "process_resident_memory_bytes" in text and "python_info" in text


def test_follower_hang_up_is_499_never_5xx(tmp_path: Path) -> None:
    registry = StreamRegistry()
    registry.put(
        build_stream(
            tmp_path / "s",
            make_events(20, "raw"),
            fmt="raw",
            layout=(),
            key=StreamKey("default", "web", "app"),
        )
    )
    metrics = Metrics()
    with RunningServer(registry, metrics=metrics) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /logs/default/web/app?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while got.count(b"\n") < 15:
                chunk = s.recv(65536)
                assert chunk
                got += chunk
            assert got.startswith(b"HTTP/1.1 200")
        wait_for(
            lambda: _value(metrics, "logvold_http_requests_total", handler="logs", code="499") == 1,
            60,
            "the hang-up counted as 499",
        )
        wait_for(lambda: _value(metrics, "logvold_followers") == 0, 60, "follower gone")
        codes = {
            dict(ls).get("code")
            for (n, ls) in _samples(metrics)
            if n == "logvold_http_requests_total"
        }
        assert codes == {"499"}, codes


def test_rules_dashboard_and_rule_tests_name_only_label_values_the_code_emits() -> None:
    """`error="ENOSPC"` or `result="ok"` in a rule never matches anything: every literal
    label value in the shipped rules, the dashboard and the alert unit tests must be one
    logvold emits (or a scrape label: job, node, instance)."""
    import json
    import re

    from logvold.telemetry.metrics import (
        COMPRESSION_ALGORITHMS,
        FREED_REASONS,
        RELOAD_RESULTS,
        SERVING_HANDLERS,
        TRUNCATION_REASONS,
        WATCH_SOURCES,
    )

    root = Path(__file__).resolve().parents[2] / "manifests"
    emitted = {
        "error": set(ROTATION_ERRORS),
        "result": set(RELOAD_RESULTS),
        "source": set(WATCH_SOURCES),
        "algorithm": set(COMPRESSION_ALGORITHMS),
        "handler": set(SERVING_HANDLERS),
        "reason": set(TRUNCATION_REASONS) | set(FREED_REASONS),
        "job": {"logvold"},
    }
    texts = [
        (root / "rules" / "logvold.rules.yaml").read_text(),
        (root / "prometheusrule.yaml").read_text(),
        (root / "tests" / "alerts_test.yaml").read_text(),
        "\n".join(
            t["expr"]
            for p in json.loads((root / "grafana-dashboard.json").read_text())["panels"]
            for t in p.get("targets", [])
        ),
    ]
    seen = 0
    for text in texts:
        for name, value in re.findall(r'\b(\w+)=~?"([^"$]*)"', text):
            if name in emitted:
                seen += 1
                assert value in emitted[name], f'{name}="{value}" is never emitted'
    assert seen >= 8
