"""One manager per directory: `flock` on `<dir>/.logvold/lock`, taken through the safe
walk (a planted `.logvold` symlink, lock symlink, FIFO or hard link never steers root
to another file), held by the daemon for static volumes and discovered streams alike,
released when a stream goes, and a reload onto a locked directory rejected.

The daemon runs in-process with a fake rotator (what it decides is checked here; the
real two-daemon race is `tests/e2e/test_hostile_discovery.py`)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from logvold.config.serve_settings import ServeOptions
from logvold.core.policy import Config, LogPolicy, VolumeSpec
from logvold.core.streams import StreamInfo, StreamKey
from logvold.daemon.lifecycle import Daemon
from logvold.fileio.dirlock import DirectoryLocked, DirectoryLocks, lock_directory
from logvold.fileio.safedir import UnsafeFile
from logvold.telemetry.metrics import Metrics
from tests.integration.test_daemon_wiring import Fakes, until

SECRET = b"root-only canary\n"


def canary(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def unchanged(path: Path) -> None:
    assert path.read_bytes() == SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_second_lock_names_the_holder_and_a_drop_releases_it(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    locks = DirectoryLocks()
    locks.hold("a", vol, vol)
    locks.hold("b", tmp_path, vol)  # the same directory under another owner: shared
    assert len(locks) == 1
    with pytest.raises(DirectoryLocked, match=rf"managed by another logvold \(pid {os.getpid()}\)"):
        lock_directory(vol, vol)
    locks.drop("a")
    with pytest.raises(DirectoryLocked):
        lock_directory(vol, vol)
    locks.drop("b")
    held = lock_directory(vol, vol)
    os.close(held.fd)
    assert (vol / ".logvold" / "lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("plant", ["symlink", "fifo", "hardlink"])
def test_a_planted_lock_file_is_replaced_never_opened(tmp_path: Path, plant: str) -> None:
    secret = canary(tmp_path)
    vol = tmp_path / "vol"
    (vol / ".logvold").mkdir(parents=True)
    lock = vol / ".logvold" / "lock"
    if plant == "symlink":
        lock.symlink_to(secret)
    elif plant == "fifo":
        os.mkfifo(lock)
    else:
        os.link(secret, lock)
    held = lock_directory(vol, vol)
    try:
        st = lock.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        assert (st.st_dev, st.st_ino) == (os.fstat(held.fd).st_dev, os.fstat(held.fd).st_ino)
    finally:
        os.close(held.fd)
    unchanged(secret)


def test_a_symlinked_state_directory_or_subdir_is_refused(tmp_path: Path) -> None:
    secret = canary(tmp_path)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / ".logvold").symlink_to(secret.parent)
    with pytest.raises(UnsafeFile) as e:
        lock_directory(vol, vol)
    assert e.value.kind == "symlink"
    (vol / "y").symlink_to(secret.parent)
    with pytest.raises(UnsafeFile):
        lock_directory(vol, vol / "y")
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret"]
    unchanged(secret)


def _discovered(pod_volume: Path, directory: Path, container: str) -> StreamInfo:
    return StreamInfo(
        key=StreamKey("team-a", "pod", container),
        directory=directory,
        base="app.log",
        policy=LogPolicy(),
        volume="logs",
        source="kubernetes",
        root=pod_volume,
    )


@pytest.mark.asyncio
async def test_the_daemon_locks_static_and_discovered_directories_and_keeps_its_config(
    tmp_path: Path,
) -> None:
    secret = canary(tmp_path)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "a.log").write_bytes(b"x\n")
    pod_volume = tmp_path / "pods" / "uid" / "logs"
    pod_volume.mkdir(parents=True)
    (pod_volume / "app.log").write_bytes(b"y\n")
    (pod_volume / "evil").symlink_to(secret.parent)
    other = tmp_path / "other"
    other.mkdir()
    base = Config(volumes=(VolumeSpec(name="v", path=str(vol)),), rescan_interval_s=60.0)
    bigger = Config(
        volumes=(VolumeSpec(name="v", path=str(vol)), VolumeSpec(name="o", path=str(other))),
        rescan_interval_s=60.0,
    )
    fakes = Fakes()

    daemon = Daemon(
        base,
        ServeOptions(serve_http=False),
        metrics=Metrics(),
        rotator_factory=fakes.factory,
        load_config=lambda _: bigger,
    )
    await daemon.start()
    task = asyncio.create_task(daemon.run())
    try:
        assert daemon.workers is not None
        workers = daemon.workers
        with pytest.raises(DirectoryLocked):
            lock_directory(vol, vol)
        # A discovered stream: locked when first managed, released when removed.
        good = _discovered(pod_volume, pod_volume, "app")
        daemon.registry.put(good)
        await until(lambda: good.key in set(workers))
        with pytest.raises(DirectoryLocked):
            lock_directory(pod_volume, pod_volume)
        # Its symlinked subDir: never managed, nothing created outside.
        evil = _discovered(pod_volume, pod_volume / "evil", "evil")
        daemon.registry.put(evil)
        await until(
            lambda: (
                daemon.metrics.registry.get_sample_value(
                    "logvold_unsafe_files_refused_total", {"kind": "symlink"}
                )
                == 1
            )
        )
        assert evil.key not in set(workers)
        daemon.registry.remove(good.key)  # the pod went: finalised, still managed
        await until(
            lambda: (daemon.registry.get(good.key) or good).source == "kubernetes-terminated"
        )
        with pytest.raises(DirectoryLocked):
            lock_directory(pod_volume, pod_volume)
        daemon.registry.remove(good.key)  # its maxAge passed: removed for good
        await until(lambda: good.key not in set(workers))
        os.close(lock_directory(pod_volume, pod_volume).fd)  # released
        # A reload adding a directory another manager holds is rejected.
        holder = lock_directory(other, other)
        try:
            assert not await daemon.reload()
            assert daemon.config is base and daemon.reloads_failed == 1
        finally:
            os.close(holder.fd)
        with pytest.raises(DirectoryLocked):
            lock_directory(vol, vol)  # the old config's locks are still held
        assert await daemon.reload()
        with pytest.raises(DirectoryLocked):
            lock_directory(other, other)
    finally:
        daemon.request_stop()
        assert await task == 0
        await daemon.stop()
    os.close(lock_directory(vol, vol).fd)  # stopped: released
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret"]
    unchanged(secret)


def test_a_config_reaching_one_directory_twice_names_the_file_and_line(tmp_path: Path) -> None:
    from logvold.config.yaml_file import load_config_text
    from logvold.errors import ConfigError

    (tmp_path / "x" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "x")
    text = (
        f"volumes:\n"
        f"  - name: one\n    path: {tmp_path / 'x'}\n"
        f"    containers: [{{name: app, policy: {{logs: {{subDir: a}}}}}}]\n"
        f"  - name: two\n    path: {tmp_path / 'link' / 'a'}\n"
        f"  - name: three\n    path: {tmp_path / 'elsewhere'}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "cfg.yaml")
    [problem] = e.value.problems
    assert (problem.file, problem.line, problem.key) == ("cfg.yaml", 6, "volumes[1].path")
    assert f"is the same directory as {tmp_path / 'x' / 'a'} of volumes[0]" in problem.message
    # Distinct directories (and paths that do not exist yet) are fine.
    load_config_text(
        text.replace(str(tmp_path / "link" / "a"), str(tmp_path / "x" / "b")), "cfg.yaml"
    )
