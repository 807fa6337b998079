"""What a pod plants in its volume never makes the reader (or `/logs`) serve a file
outside it: symlinked subDir (to a /var/log-like directory, to another pod's emptyDir),
symlinked / FIFO / hard-linked active files and segments, an oversized or symlinked
state file; a writer's O_TRUNC under a follower; a read while a step marker is pending.

Real files, the real rotator, a real HTTP server on 127.0.0.1; every stream carries
sequence-numbered checksummed events (0 lost, 0 duplicated, 0 split), and every outside
canary keeps its bytes, mode and blocks.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey, StreamRegistry
from logvold.fileio.reader import ReadOptions, StreamReader
from logvold.fileio.rotator import StreamRotator
from logvold.fileio.safedir import UnsafeFile
from logvold.telemetry.metrics import Metrics
from tests.support.api_server import RunningServer, get
from tests.support.events import parse_event, split_raw, verify
from tests.support.streams import make_events

SECRET = b"TOP-SECRET-CANARY-OUTSIDE-THE-VOLUME"


@dataclass(frozen=True)
class Canary:
    """A file outside every volume: its bytes, mode and blocks must never change."""

    path: Path
    data: bytes
    mode: int
    blocks: int

    @classmethod
    def plant(cls, path: Path, data: bytes) -> Canary:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600)
        st = path.stat()
        return cls(path, data, st.st_mode, st.st_blocks)

    def unchanged(self) -> None:
        st = self.path.stat()
        assert self.path.read_bytes() == self.data
        assert (st.st_mode, st.st_blocks) == (self.mode, self.blocks)


def raw(start: int, n: int) -> bytes:
    return b"".join(e.encoded for e in make_events(n, "raw", start=start, seed=start + 3))


def info_at(root: Path, directory: Path, key: StreamKey, **policy: object) -> StreamInfo:
    return StreamInfo(
        key=key,
        directory=directory,
        base="app.log",
        policy=LogPolicy(**policy),  # type: ignore[arg-type]
        volume="logs",
        source="kubernetes",
        root=root,
    )


def seqs_of(data: bytes, *, tail: bool = False) -> list[int]:
    """Sequence numbers of whole, intact events, each once, no gap (`tail`: after the
    first one served)."""
    bodies = list(split_raw([data]))
    report = verify(bodies, allow_missing_prefix=tail)
    assert report.ok, report.summary()
    return [s for s in (parse_event(b) for b in bodies) if s is not None]


def read_all(info: StreamInfo, refused: list[UnsafeFile] | None = None, **opts: object) -> bytes:
    on_refused: Callable[[UnsafeFile], None] = print
    if refused is not None:
        on_refused = refused.append
    reader = StreamReader(
        info,
        ReadOptions(**opts),  # type: ignore[arg-type]
        poll_interval_s=0.01,
        on_refused=on_refused,
    )
    return b"".join(reader.read_all())


@dataclass
class Node:
    """A fake kubelet directory: two pods' emptyDirs and a /var/log-like outside dir."""

    kubelet: Path
    var_log: Path
    canaries: list[Canary]

    def volume(self, pod: str) -> Path:
        return self.kubelet / "pods" / pod / "volumes" / "kubernetes.io~empty-dir" / "logs"

    def all_unchanged(self) -> None:
        for canary in self.canaries:
            canary.unchanged()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    kubelet = tmp_path / "kubelet"
    var_log = tmp_path / "var-log"
    canaries = [
        Canary.plant(var_log / "app.log", SECRET + b" syslog\n" + raw(0, 30)),
        Canary.plant(var_log / "app.log.20200101-000000", SECRET + b" old\n"),
    ]
    n = Node(kubelet, var_log, canaries)
    victim = n.volume("victim-uid")
    victim.mkdir(parents=True)
    n.canaries.append(Canary.plant(victim / "app.log", b"VICTIM-POD-LOG\n" + raw(0, 20)))
    n.volume("attacker-uid").mkdir(parents=True)
    return n


# -- the safety root: a symlinked subDir is refused ---------------------------------------


@pytest.mark.parametrize("target", ["var-log", "other-pod"])
def test_symlinked_subdir_of_a_discovered_pod_is_never_read_or_served(
    node: Node, target: str
) -> None:
    root = node.volume("attacker-uid")
    outside = node.var_log if target == "var-log" else node.volume("victim-uid")
    (root / "y").symlink_to(outside)
    info = info_at(root, root / "y", StreamKey("attacker", "pod", "app"))
    refused: list[UnsafeFile] = []
    assert read_all(info, refused) == b""
    assert refused and refused[0].kind == "symlink"
    # Deeper: a subDir whose middle component is the symlink.
    (outside / "deeper").mkdir(exist_ok=True)
    deep = info_at(root, root / "y" / "deeper", StreamKey("attacker", "pod", "deep"))
    assert read_all(deep, []) == b""
    registry = StreamRegistry()
    registry.put(info)
    metrics = Metrics()
    with RunningServer(registry, metrics=metrics) as srv:
        status, body, _ = get(f"{srv.base}/logs/attacker/pod/app")
        assert status == 403 and b"not a regular file inside its volume" in body
        assert SECRET not in body and b"VICTIM" not in body
        assert str(outside).encode() not in body  # no host path told to the client
        status, body, _ = get(f"{srv.base}/logs/attacker/pod/app?follow=true")
        assert status == 403
        status, body, _ = get(f"{srv.base}/logs/")
        item = json.loads(body)["items"][0]
        assert item["activeFile"]["apparentBytes"] == 0 and item["segments"]["count"] == 0
        _, text, _ = get(f"{srv.base}/metrics")
        assert b'logvold_unsafe_files_refused_total{kind="symlink"}' in text
    node.all_unchanged()


# -- planted files in a real stream ------------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[StreamInfo, Canary, Path]]:
    """A stream rotated by the real rotator (segments, a punched active file), then
    symlinks, a FIFO and a hard link planted at segment names older than the real ones."""
    outside = Canary.plant(tmp_path / "outside" / "secret.log", SECRET + b"\n" + raw(900, 5))
    root = tmp_path / "vol"
    root.mkdir()
    info = info_at(root, root, StreamKey("ns", "pod", "app"), max_size_bytes=4096, compress="none")
    rot = StreamRotator(info)
    active = root / "app.log"
    seq = 0
    for _ in range(3):
        with active.open("ab") as f:
            f.write(raw(seq, 40))
        seq += 40
        assert rot.rotate("size") is not None
    with active.open("ab") as f:
        f.write(raw(seq, 10))
    (root / "app.log.20200101-000000").symlink_to(outside.path)
    (root / "app.log.20200101-000001.gz").symlink_to(outside.path)
    os.mkfifo(root / "app.log.20200101-000002")
    os.link(outside.path, root / "app.log.20200101-000003")
    yield info, outside, root
    os.unlink(root / "app.log.20200101-000003")


def test_symlinked_fifo_and_hardlinked_segments_are_skipped_never_served(
    planted: tuple[StreamInfo, Canary, Path],
) -> None:
    info, outside, _ = planted
    refused: list[UnsafeFile] = []
    started = time.monotonic()
    data = read_all(info, refused)  # a FIFO opened for reading would block forever
    assert time.monotonic() - started < 60
    assert SECRET not in data
    assert seqs_of(data) == list(range(130))
    assert {e.kind for e in refused} == {"symlink", "not-regular", "hardlink"}
    assert seqs_of(read_all(info, [], tail_events=5), tail=True) == list(range(125, 130))
    # The hard link is refused, not "cleaned": the outside file keeps its bytes and link.
    assert outside.path.stat().st_nlink == 2
    registry = StreamRegistry()
    registry.put(info)
    with RunningServer(registry) as srv:
        status, body, _ = get(f"{srv.base}/logs/ns/pod/app")
        assert status == 200 and SECRET not in body and seqs_of(body) == list(range(130))
        status, body, _ = get(f"{srv.base}/logs/ns/pod/app?tailLines=200&timestamps=true")
        assert status == 200 and SECRET not in body
    outside.unchanged()


@pytest.mark.parametrize("plant", ["symlink", "fifo", "hardlink", "directory"])
def test_unsafe_active_file_is_a_403_and_never_read(tmp_path: Path, plant: str) -> None:
    outside = Canary.plant(tmp_path / "outside" / "secret.log", SECRET + b"\n")
    root = tmp_path / "vol"
    root.mkdir()
    active = root / "app.log"
    if plant == "symlink":
        active.symlink_to(outside.path)
    elif plant == "fifo":
        os.mkfifo(active)
    elif plant == "hardlink":
        os.link(outside.path, active)
    else:
        active.mkdir()
    info = info_at(root, root, StreamKey("ns", "pod", "app"))
    registry = StreamRegistry()
    registry.put(info)
    metrics = Metrics()
    with RunningServer(registry, metrics=metrics) as srv:
        for query in ("", "?follow=true", "?tailLines=1"):
            status, body, _ = get(f"{srv.base}/logs/ns/pod/app{query}", timeout=30)
            assert status == 403, (query, body)
            assert b"active file is not a regular file inside its volume" in body
            assert SECRET not in body
        _, text, _ = get(f"{srv.base}/metrics")
        assert b"logvold_unsafe_files_refused_total{kind=" in text
    assert read_all(info, []) == b""
    if plant == "hardlink":
        os.unlink(active)
    outside.unchanged()


def test_oversized_or_symlinked_state_file_is_ignored_not_read(tmp_path: Path) -> None:
    outside = Canary.plant(tmp_path / "outside" / "state.json", b'{"version": 1}')
    root = tmp_path / "vol"
    (root / ".logvold").mkdir(parents=True)
    (root / "app.log").write_bytes(raw(0, 50))
    info = info_at(root, root, StreamKey("ns", "pod", "app"))
    bomb = root / ".logvold" / "app.log.state.json"
    with bomb.open("wb") as f:
        f.truncate(3 * 2**30)  # sparse: reading it whole would take 3 GiB
    refused: list[UnsafeFile] = []
    assert seqs_of(read_all(info, refused)) == list(range(50))
    assert [e.kind for e in refused] == ["too-big"]
    bomb.unlink()
    bomb.symlink_to(outside.path)
    refused.clear()
    assert seqs_of(read_all(info, refused)) == list(range(50))
    assert [e.kind for e in refused] == ["symlink"]
    # `.logvold` itself swapped for a symlink: its state is not read either.
    bomb.unlink()
    (root / ".logvold").rmdir()
    (root / ".logvold").symlink_to(outside.path.parent)
    assert seqs_of(read_all(info, [])) == list(range(50))
    outside.unchanged()


# -- followers ----------------------------------------------------------------------------


def test_writer_truncating_its_own_file_under_a_follower_is_a_new_generation(
    tmp_path: Path,
) -> None:
    root = tmp_path / "vol"
    root.mkdir()
    info = info_at(root, root, StreamKey("ns", "pod", "app"), max_size_bytes=4096)
    rot = StreamRotator(info)
    active = root / "app.log"
    now = [0.0]
    reader = StreamReader(info, ReadOptions(follow=True), clock=lambda: now[0])
    chunks = reader.chunks()
    got = bytearray()

    def drain() -> None:
        idle = 0
        for _ in range(10_000):  # bounded: a replay loop fails here instead of hanging
            chunk = next(chunks)
            if chunk:
                got.extend(chunk)
                assert len(got) < 2**20, "the follower replays old events"
            elif reader.more_ready:
                reader.more_ready = False
            else:
                idle += 1
                if idle == 2:
                    return
        raise AssertionError("the follower never caught up")

    with active.open("ab") as f:
        f.write(raw(0, 60))
    drain()
    assert rot.rotate("size") is not None  # committed, punched: the state names segments
    with active.open("ab") as f:
        f.write(raw(60, 5))
    drain()
    # The writer restarts with `> app.log`: O_TRUNC, then new events.
    os.close(os.open(active, os.O_WRONLY | os.O_TRUNC))
    with active.open("ab") as f:
        f.write(raw(65, 5))
    drain()
    assert seqs_of(bytes(got)) == list(range(70))
    with active.open("ab") as f:
        f.write(raw(70, 80))
    rot.rotate("size")  # the rotator notices the truncation: a new state from 0
    drain()
    with active.open("ab") as f:
        f.write(raw(150, 60))
    assert rot.rotate("size") is not None
    with active.open("ab") as f:
        f.write(raw(210, 10))
    drain()
    assert seqs_of(bytes(got)) == list(range(220))
    # Truncated again while the follower is caught up, and refilled past its offset.
    os.close(os.open(active, os.O_WRONLY | os.O_TRUNC))
    with active.open("ab") as f:
        f.write(raw(220, 200))
    drain()
    assert seqs_of(bytes(got)) == list(range(420))


def test_read_without_follow_ends_while_a_step_marker_stays_pending(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    root.mkdir()
    info = info_at(root, root, StreamKey("ns", "pod", "app"), max_size_bytes=4096)
    rot = StreamRotator(info)
    active = root / "app.log"
    with active.open("ab") as f:
        f.write(raw(0, 60))
    assert rot.rotate("size") is not None
    with active.open("ab") as f:
        f.write(raw(60, 5))
    state_file = root / ".logvold" / "app.log.state.json"
    tree = json.loads(state_file.read_bytes())
    tree["intent"] = {  # well formed: a forged one is dropped, not pending
        "op": "punch",
        "stem": "app.log.20261130-120000.0001",
        "start": tree["committed_offset"],
        "end": tree["committed_offset"] + 100,
    }
    state_file.write_text(json.dumps(tree))  # a step marker a crash left behind
    reader = StreamReader(info, ReadOptions(), poll_interval_s=0.01, busy_limit_s=1.0)
    started = time.monotonic()
    data = b"".join(reader.read_all())
    assert time.monotonic() - started < 60
    seqs = seqs_of(data)
    assert seqs == list(range(len(seqs))) and len(seqs) >= 40  # the committed events, once
    registry = StreamRegistry()
    registry.put(info)
    with RunningServer(registry) as srv:
        started = time.monotonic()
        status, body, _ = get(f"{srv.base}/logs/ns/pod/app", timeout=60)
        assert time.monotonic() - started < 60
        assert status == 200 and seqs_of(body) == seqs
    assert stat.S_ISREG(active.stat().st_mode)


# -- static volumes ------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_static_symlinked_subdir_is_refused_not_managed(tmp_path: Path, target: str) -> None:
    from logvold.core.policy import Config, ContainerSpec, VolumeSpec
    from logvold.sources.static import StaticSource

    outside = Canary.plant(tmp_path / "var-log" / "app.log", SECRET + b"\n")
    vol = tmp_path / "vol"
    (vol / "real").mkdir(parents=True)
    (vol / "real" / "app.log").write_bytes(raw(0, 5))
    # Even a symlink back inside the volume is refused: it can be re-pointed later.
    (vol / "y").symlink_to(outside.path.parent if target == "outside" else vol / "real")
    registry = StreamRegistry()
    metrics = Metrics()
    source = StaticSource(registry, metrics)
    source.set_config(
        Config(
            volumes=(
                VolumeSpec(
                    name="v",
                    path=str(vol),
                    containers=(ContainerSpec(name="app", policy=LogPolicy(sub_dir="y")),),
                ),
                VolumeSpec(
                    name="w",
                    path=str(vol),
                    pod="w",
                    containers=(ContainerSpec(name="app", policy=LogPolicy(sub_dir="y/deeper")),),
                ),
            )
        )
    )
    report = source.scan()
    assert registry.snapshot() == []
    assert sum("leaves the volume (symlink)" in p for p in report.problems) == 2
    assert (
        metrics.registry.get_sample_value("logvold_unsafe_files_refused_total", {"kind": "symlink"})
        == 2
    )
    outside.unchanged()
