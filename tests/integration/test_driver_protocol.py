"""`logvold driver` spawned exactly as containerd's shim spawns a binary:// logger:
stdout pipe on fd 3, stderr pipe on fd 4, ready pipe on fd 5, CONTAINER_ID /
CONTAINER_NAMESPACE, the URI's query pairs as argv, SIGTERM when the task is deleted."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from logvold.driver.args import parse_driver_args
from tests.e2e.serve_support import free_port, http_get, read_segment, running, write_config
from tests.support.containerd import (
    EVENT_DELIMITER,
    check_driver_output,
    driver_events,
    stream_files,
)
from tests.support.events import split_raw, verify

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(sys.executable).parent / "logvold-driver"
O_CLOEXEC = 0o2000000


@dataclass
class Shim:
    """Our side of the protocol: the container's pipe ends and the ready pipe."""

    proc: subprocess.Popen[bytes]
    stdout_w: int
    stderr_w: int
    ready_r: int

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        ready, _, _ = select.select([self.ready_r], [], [], timeout_s)
        assert ready, "the driver did not close the ready pipe (fd 5)"
        assert os.read(self.ready_r, 1) == b""

    def close_container_ends(self) -> None:
        for fd in (self.stdout_w, self.stderr_w):
            if fd >= 0:
                os.close(fd)
        self.stdout_w = self.stderr_w = -1

    def delete_task(self, timeout_s: float = 10.0) -> tuple[int, str]:
        """What the shim does on task delete: close its ends, SIGTERM, wait."""
        self.close_container_ends()
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, err.decode(errors="replace")


def spawn_like_shim(
    argv: Sequence[str],
    *,
    container_id: str,
    namespace: str,
    command: Sequence[str] = (str(DRIVER),),
) -> Shim:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def place_fds() -> None:  # in the child, like Go's exec.Cmd.ExtraFiles
        high = [os.dup2(fd, 100 + i) for i, fd in enumerate((out_r, err_r, ready_w))]
        for target, fd in zip((3, 4, 5), high, strict=True):
            os.dup2(fd, target)
            os.close(fd)

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "CONTAINER_ID": container_id,
        "CONTAINER_NAMESPACE": namespace,
    }
    try:
        proc = subprocess.Popen(
            [*command, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=place_fds,
        )
    finally:
        for fd in (out_r, err_r, ready_w):  # the shim keeps only its own ends
            os.close(fd)
    return Shim(proc=proc, stdout_w=out_w, stderr_w=err_w, ready_r=ready_r)


@pytest.fixture
def shims() -> Iterator[list[Shim]]:
    started: list[Shim] = []
    yield started
    for shim in started:
        shim.close_container_ends()
        os.close(shim.ready_r)
        if shim.proc.poll() is None:
            shim.proc.kill()
        shim.proc.communicate(timeout=10)


def write_all(fd: int, data: bytes, seed: int) -> None:
    """Write in random chunks that cross event boundaries, like a real process."""
    rng = random.Random(seed)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[: rng.randint(1, 64 * 1024)]) :]


def read_stream(log_path: Path) -> tuple[bytes, int]:
    """The whole stream (segments oldest first, then the active file) and its file count."""
    files = stream_files(log_path)
    return b"".join(read_segment(path) for path in files), len(files)


def test_cri_rotates_drains_both_pipes_and_splits_long_lines(
    tmp_path: Path, shims: list[Shim]
) -> None:
    counts = {"stdout": 4000, "stderr": 6000}
    out = driver_events(counts["stdout"], stream="stdout", seed=1, long_every=700)
    err = driver_events(counts["stderr"], stream="stderr", seed=2, long_every=900)
    shim = spawn_like_shim(
        ["root", str(tmp_path), "max-size", "64Ki", "max-file", "1000"],
        container_id="c1",
        namespace="k8s.io",
    )
    shims.append(shim)
    shim.wait_ready()
    # All of stderr (several pipe capacities) before a byte of stdout: only a
    # driver that drains fd 4 while fd 3 is silent lets this finish.
    t0 = time.monotonic()
    writer = threading.Thread(target=write_all, args=(shim.stderr_w, err, 3), daemon=True)
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive(), "stderr blocked while stdout was silent"
    write_all(shim.stdout_w, out, 4)
    code, stderr = shim.delete_task()
    assert (code, stderr) == (0, "")
    elapsed = time.monotonic() - t0

    log_path = tmp_path / "k8s.io" / "c1" / "c1.log"
    data, files = read_stream(log_path)
    result = check_driver_output(data, "cri", counts)
    for name, report in result.reports.items():
        assert report.ok, f"{name}: {report.summary()}"
        assert report.seen == counts[name]
    assert files > 20, f"max-size 64Ki over {len(data)} bytes should rotate, got {files} files"
    assert result.partial_lines > 0, "lines past 16 KiB become P pieces"
    assert result.longest_line_message <= 16 * 1024
    closed = stream_files(log_path)[:-1]
    # A segment ends at an event end (an F line with no other stream's P open), so it
    # may pass max-size by one whole event: at most 90,000 bytes of message here,
    # plus the CRI prefix of each of its 16 KiB pieces.
    assert max(p.stat().st_size for p in closed) < 64 * 1024 + 90_000 + 6 * 64
    for segment in closed:
        last_line = read_segment(segment).rstrip(b"\n").rsplit(b"\n", 1)[-1]
        assert last_line.split(b" ", 3)[2] == b"F", f"{segment.name} ends inside an event"
    assert elapsed < 30


def test_json_file_rotates_through_write_behind_with_every_event_whole(
    tmp_path: Path, shims: list[Shim]
) -> None:
    """json-file output goes through the write-behind thread (a FIFO of writes and
    segment closes): with many size cuts, no event is lost, duplicated or split, and
    every closed segment ends with a whole event."""
    counts = {"stdout": 3000, "stderr": 3000}
    out = driver_events(counts["stdout"], stream="stdout", seed=21, long_every=800)
    err = driver_events(counts["stderr"], stream="stderr", seed=22)
    shim = spawn_like_shim(
        ["root", str(tmp_path), "format", "json-file", "max-size", "64Ki", "max-file", "1000"],
        container_id="c1",
        namespace="k8s.io",
    )
    shims.append(shim)
    shim.wait_ready()
    writer = threading.Thread(target=write_all, args=(shim.stderr_w, err, 3), daemon=True)
    writer.start()
    write_all(shim.stdout_w, out, 4)
    writer.join(timeout=60)
    assert not writer.is_alive()
    code, stderr = shim.delete_task()
    assert (code, stderr) == (0, "")

    log_path = tmp_path / "k8s.io" / "c1" / "c1.log"
    data, files = read_stream(log_path)
    result = check_driver_output(data, "json-file", counts)
    for name, report in result.reports.items():
        assert report.ok, f"{name}: {report.summary()}"
        assert report.seen == counts[name]
    assert files > 20, f"max-size 64Ki over {len(data)} bytes should rotate, got {files} files"
    for segment in stream_files(log_path)[:-1]:
        last = json.loads(read_segment(segment).rstrip(b"\n").rsplit(b"\n", 1)[-1])
        assert last["log"].endswith("\n"), f"{segment.name} ends inside an event"


def test_sigterm_while_the_container_still_writes_drains_the_rest(
    tmp_path: Path, shims: list[Shim]
) -> None:
    counts = {"stdout": 3000, "stderr": 3000}
    out = driver_events(counts["stdout"], stream="stdout", seed=5, long_every=1000)
    err = driver_events(counts["stderr"], stream="stderr", seed=6)
    shim = spawn_like_shim(
        [
            "format",
            "json-file",
            "log-path",
            str(tmp_path / "{namespace}-{id}.json"),
            "max-size",
            "128Ki",
            "max-file",
            "100",
            "compress",
            "true",
        ],
        container_id="c2",
        namespace="default",
    )
    shims.append(shim)
    shim.wait_ready()
    half_out, half_err = len(out) // 2, len(err) // 2
    write_all(shim.stdout_w, out[:half_out], 7)
    write_all(shim.stderr_w, err[:half_err], 8)
    shim.proc.send_signal(signal.SIGTERM)  # early: the output after it must still arrive
    time.sleep(0.2)
    assert shim.proc.poll() is None, "exited on SIGTERM while the pipes were still open"
    write_all(shim.stdout_w, out[half_out:], 9)
    write_all(shim.stderr_w, err[half_err:], 10)
    code, stderr = shim.delete_task()
    assert (code, stderr) == (0, "")

    log_path = tmp_path / "default-c2.json"
    data, files = read_stream(log_path)
    result = check_driver_output(data, "json-file", counts)
    for name, report in result.reports.items():
        assert report.ok, f"{name}: {report.summary()}"
    assert files > 3
    assert result.partial_lines > 0, "docker splits lines past 16 KiB too"
    assert result.longest_line_message <= 16 * 1024 + 1
    assert any(p.name.endswith(".gz") for p in stream_files(log_path)), "compress true = gzip"


def test_protocol_fds_ready_pipe_closed_and_nothing_inheritable(
    tmp_path: Path, shims: list[Shim]
) -> None:
    shim = spawn_like_shim(["root", str(tmp_path)], container_id="c3", namespace="ns")
    shims.append(shim)
    shim.wait_ready()
    fd_dir = Path(f"/proc/{shim.proc.pid}/fd")
    ready_pipe = os.readlink(f"/proc/self/fd/{shim.ready_r}")
    held = {int(fd.name): os.readlink(fd) for fd in fd_dir.iterdir() if fd.name.isdigit()}
    assert ready_pipe not in held.values(), "the driver still holds the ready pipe"
    for fd in (3, 4):
        assert held[fd] == os.readlink(f"/proc/self/fd/{(shim.stdout_w, shim.stderr_w)[fd - 3]}")
        flags = next(
            line
            for line in Path(f"/proc/{shim.proc.pid}/fdinfo/{fd}").read_text().splitlines()
            if line.startswith("flags:")
        )
        assert int(flags.split()[1], 8) & O_CLOEXEC, f"fd {fd} would leak into a child"
    os.write(shim.stdout_w, b"no newline at the end")
    code, _ = shim.delete_task()
    assert code == 0
    line = (tmp_path / "ns" / "c3" / "c3.log").read_bytes()
    assert line.endswith(b" stdout F no newline at the end\n"), line


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["max-size", "1Mi", "bogus", "1"], {}, "unknown key 'bogus'"),
        (["max-size"], {}, "pairs"),
        (["format", "xml"], {}, "format 'xml'"),
        (["max-file", "1"], {}, "max-file '1'"),
        (["format", "cri", "delimiter", "\\x1e"], {}, "delimiter must be"),
        (["path", "relative/{id}.log"], {}, "must be absolute"),
        (["path", "/x/{pod}.log"], {}, "only {root}"),
        ([], {"CONTAINER_ID": "../etc"}, "CONTAINER_ID"),
    ],
    ids=[
        "unknown-key",
        "odd-argv",
        "format",
        "max-file",
        "delimiter",
        "relative",
        "placeholder",
        "id-escapes",
    ],
)
def test_bad_pairs_exit_2_and_never_hold_the_container(
    tmp_path: Path, shims: list[Shim], argv: list[str], env: dict[str, str], message: str
) -> None:
    shim = spawn_like_shim(
        ["root", str(tmp_path), *argv], container_id=env.get("CONTAINER_ID", "c4"), namespace="ns"
    )
    shims.append(shim)
    shim.wait_ready()
    _, err = shim.proc.communicate(timeout=10)
    assert shim.proc.returncode == 2
    assert message in err.decode()
    assert list(tmp_path.iterdir()) == []


def test_subcommand_flat_layout_is_served_by_the_daemon(tmp_path: Path, shims: list[Shim]) -> None:
    """`logvold driver` with path {root}/{namespace}/{id}.log: a static volume at
    <root>/<namespace> serves each container as /logs/<namespace>/<pod>/<id>."""
    counts = {"stdout": 2000, "stderr": 500}
    logs = tmp_path / "logs"
    shim = spawn_like_shim(
        [
            "root",
            str(logs),
            "path",
            "{root}/{namespace}/{id}.log",
            "max-size",
            "32Ki",
            "max-file",
            "1000",
        ],
        container_id="web-1",
        namespace="shop",
        command=(sys.executable, "-m", "logvold", "driver"),
    )
    shims.append(shim)
    shim.wait_ready()
    write_all(shim.stdout_w, driver_events(counts["stdout"], stream="stdout", seed=11), 1)
    write_all(shim.stderr_w, driver_events(counts["stderr"], stream="stderr", seed=12), 2)
    code, stderr = shim.delete_task()
    assert (code, stderr) == (0, "")

    port = free_port()
    config = write_config(
        tmp_path / "config.yaml",
        logs / "shop",
        listen=f"127.0.0.1:{port}",
        policy={"format": "cri", "maxSize": 0, "maxFiles": 0},
        volume_extra="\n    namespace: shop",
    )
    with running(["--config", str(config)], tmp_path / "daemon.log"):
        for name in ("stdout", "stderr"):
            status, body = http_get(f"http://127.0.0.1:{port}/logs/shop/p/web-1?stream={name}")
            assert status == 200, body[:200]
            report = verify(
                split_raw([body], EVENT_DELIMITER),
                tag="O" if name == "stdout" else "R",
                expected=range(counts[name]),
            )
            assert report.ok, f"{name}: {report.summary()}"


def test_raw_keeps_each_streams_events_whole_in_the_shared_file(
    tmp_path: Path, shims: list[Shim]
) -> None:
    """Both pipes written at once in small chunks: in raw format the two streams share one
    file, and no event may have the other stream's bytes inside it, even across rotation."""
    counts = {"stdout": 4000, "stderr": 4000}
    shim = spawn_like_shim(
        ["root", str(tmp_path), "format", "raw", "delimiter", "\\x1e\\n",
         "max-size", "64Ki", "max-file", "1000"],
        container_id="c5", namespace="ns",
    )  # fmt: skip
    shims.append(shim)
    shim.wait_ready()
    writers = [
        threading.Thread(target=write_small_chunks, args=(fd, events, seed), daemon=True)
        for fd, events, seed in (
            (shim.stdout_w, driver_events(counts["stdout"], stream="stdout", seed=41), 1),
            (shim.stderr_w, driver_events(counts["stderr"], stream="stderr", seed=42), 2),
        )
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
        assert not writer.is_alive()
    code, stderr = shim.delete_task()
    assert (code, stderr) == (0, "")

    files = stream_files(tmp_path / "ns" / "c5" / "c5.log")
    assert len(files) > 10
    assert all(p.read_bytes().endswith(EVENT_DELIMITER) for p in files[:-1])
    bodies = list(split_raw([read_segment(p) for p in files], EVENT_DELIMITER))
    for name, tag in (("stdout", "O"), ("stderr", "R")):
        mine = [b for b in bodies if not b.startswith(b"R#" if tag == "O" else b"O#")]
        report = verify(mine, tag=tag, expected=range(counts[name]))
        assert report.ok, f"{name}: {report.summary()}"


def write_small_chunks(fd: int, data: bytes, seed: int) -> None:
    """Chunks of 1 B - 300 B with tiny pauses, so the two streams' reads interleave."""
    rng = random.Random(seed)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[: rng.randint(1, 300)]) :]
        if rng.random() < 0.01:
            time.sleep(0.0005)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"format": "cri", "max_size_bytes": 10 * 2**20, "max_files": 4,
              "max_event_size_bytes": 2**20, "compress": "none", "rotate": "Never"}),
        (["format", "json-file", "max-file", "3", "compress", "true", "max-size", "1M"],
         {"format": "json-file", "max_files": 2, "compress": "gzip", "max_size_bytes": 10**6,
          "max_event_size_bytes": 2**20}),
        (["format", "raw", "delimiter", "\\n\\n", "rotate", "hourly", "compress", "zstd"],
         {"format": "raw", "delimiter": b"\n\n", "rotate": "Hourly", "compress": "zstd",
          "max_event_size_bytes": 2**20}),
    ],
    ids=["defaults-like-the-kubelet", "nerdctl-json-file-names", "raw"],
)  # fmt: skip
def test_pairs_map_to_the_writer_policy(argv: list[str], expected: dict[str, object]) -> None:
    opts = parse_driver_args(argv, {"CONTAINER_ID": "abc", "CONTAINER_NAMESPACE": "k8s.io"})
    assert opts.path == "/var/log/logvold/k8s.io/abc/abc.log"
    assert {key: getattr(opts.policy, key) for key in expected} == expected
