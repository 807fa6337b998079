"""A private containerd for tests: its own config, root, state and socket under a temp dir
(no systemd), an OCI image assembled from busybox-static, and a cleanup that kills the
daemon and its shims by pid and unmounts what they left.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from logvold.core.layout import segments_of
from tests.support.events import (
    IntegrityReport,
    decode_cri,
    decode_json_file,
    make_event,
    split_raw,
    verify,
)

RUN_DIR = Path("/run/containerd")
"""Fixed in containerd 1.6 whatever the config says: shim sockets (s/), runc state (runc/<ns>)."""
PACKAGES = ("containerd", "runc", "busybox-static")
TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")
BUSYBOX = Path("/bin/busybox")
IMAGE_NAME = "docker.io/logvold/busybox:test"
APPLETS = ("sh", "cat", "head", "yes", "tr", "sleep", "wc", "printf", "true")
_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def unavailable_reason() -> str | None:
    """Why a real containerd cannot run here (None when it can), installing the distribution
    packages first if a tool is missing and we are root."""
    if os.geteuid() != 0:
        return "containerd tests need root (runc creates namespaces and mounts)"
    if _missing():
        apt = shutil.which("apt-get")
        if apt is None:
            return f"missing {', '.join(_missing())} and no apt-get to install {PACKAGES}"
        done = subprocess.run(
            [
                apt,
                "-o",
                "DPkg::Lock::Timeout=200",
                "install",
                "-y",
                "--no-install-recommends",
                *PACKAGES,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if done.returncode != 0 or _missing():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return f"cannot install {' '.join(PACKAGES)}: {tail[0]}"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} (busybox-static) is missing"
    return None


def _missing() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


# ------------------------------------------------------------------- image


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def build_busybox_image(out: Path, name: str = IMAGE_NAME) -> Path:
    """Write an OCI image layout tar (for `ctr image import`): one layer with /bin/busybox
    and applet symlinks, PATH=/bin."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    layer_tar = layer.getvalue()
    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, gzip.compress(layer_tar, compresslevel=1, mtime=0))
    arch = _ARCH.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()],
        },
    }
    config_desc = _blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
    }
    manifest_desc = _blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
                "platform": {"architecture": arch, "os": "linux"},
            }
        ],
    }
    with tarfile.open(out, "w") as tar:
        files = {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "index.json": json.dumps(index).encode(),
        }
        files.update({f"blobs/sha256/{d.split(':', 1)[1]}": b for d, b in blobs.items()})
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


# ---------------------------------------------------------------- instance


@dataclass
class Containerd:
    """A running private containerd; `ctr(...)` talks to it in `namespace`."""

    base: Path
    socket: Path
    process: subprocess.Popen[bytes]
    namespace: str
    run_dir_existed: bool
    """Whether /run/containerd (the shims' sockets, runc's state) was there before us."""

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "-a", str(self.socket), "-n", self.namespace, *args]

    def ctr(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ctr_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def import_image(self, image_tar: Path) -> None:
        done = self.ctr("image", "import", str(image_tar))
        if done.returncode != 0:
            raise RuntimeError(f"ctr image import failed: {done.stderr.strip()}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        log = self.base / "containerd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _write_config(base: Path, socket: Path) -> Path:
    config = base / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{base}/root"\n'
        f'state = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "[grpc]\n"
        f'  address = "{socket}"\n'
        "[ttrpc]\n"
        f'  address = "{socket}.ttrpc"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n'
        "  restrict_oom_score_adj = true\n"
    )
    return config


CGROUP_ROOT = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def private_containerd(base: Path, namespace: str = "logvold-test") -> Iterator[Containerd]:
    """Start containerd under `base` (short path: the socket name must fit 107 bytes);
    on exit delete what is left, kill the daemon and every shim it started, unmount."""
    base.mkdir(parents=True, exist_ok=True)
    socket = base / "c.sock"
    config = _write_config(base, socket)
    with (base / "containerd.log").open("wb") as log:
        process = subprocess.Popen(
            ["containerd", "--config", str(config), "--log-level", "info"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    instance = Containerd(
        base=base,
        socket=socket,
        process=process,
        namespace=namespace,
        run_dir_existed=RUN_DIR.exists(),
    )
    try:
        deadline = time.monotonic() + 20
        while instance.ctr("version", timeout_s=5).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{instance.log_tail()}")
            time.sleep(0.05)
        yield instance
    finally:
        _cleanup(instance)


def shim_pids(socket: Path) -> list[int]:
    """Pids of containerd-shim processes started for the daemon listening on `socket`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and os.fsencode(socket) in argv:
            pids.append(int(entry.name))
    return pids


def _cleanup(instance: Containerd) -> None:
    with contextlib.suppress(Exception):
        listed = instance.ctr("task", "ls", "-q", timeout_s=10).stdout.split()
        for task in listed:
            instance.ctr("task", "kill", "-s", "SIGKILL", task, timeout_s=10)
            instance.ctr("task", "delete", "-f", task, timeout_s=10)
        for container in instance.ctr("container", "ls", "-q", timeout_s=10).stdout.split():
            instance.ctr("container", "delete", container, timeout_s=10)
    shims = shim_pids(instance.socket)
    for pid in [instance.process.pid, *shims]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        instance.process.wait(timeout=10)
    _unmount_below(instance.base)
    leftovers = [RUN_DIR / "runc" / instance.namespace]
    if not instance.run_dir_existed:
        leftovers += [RUN_DIR / "runc", RUN_DIR / "s", RUN_DIR]
    for directory in leftovers:
        with contextlib.suppress(OSError):  # only ever empty directories
            directory.rmdir()
    _remove_cgroups(instance.namespace)


def _remove_cgroups(namespace: str) -> None:
    """runc made /sys/fs/cgroup/<controller>/<namespace>/<container> for each container;
    with the tasks gone they are empty and rmdir removes them (a cgroup still in use
    refuses with EBUSY, and stays)."""
    for controller in CGROUP_ROOT.glob("*"):
        top = controller / namespace
        if not top.is_dir():
            continue
        for child in [p for p in top.iterdir() if p.is_dir()]:
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _unmount_below(base: Path) -> None:
    prefix = str(base.resolve())
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# ------------------------------------------------------- driver output checks

EVENT_DELIMITER = b"\x1e\n"
"""Events span several lines; the line ending in RS ends one (so a log line is not an event)."""
STREAM_TAGS = {"stdout": "O", "stderr": "R"}


def driver_events(count: int, *, stream: str, seed: int, long_every: int = 0) -> bytes:
    """`count` multi-line events for `stream` (tagged O / R), every `long_every`-th with
    lines well past containerd's 16 KiB CRI line limit."""
    rng = random.Random(seed)
    out = bytearray()
    for seq in range(count):
        long = bool(long_every) and seq % long_every == long_every // 2
        out += make_event(
            seq,
            rng,
            delimiter=EVENT_DELIMITER,
            tag=STREAM_TAGS[stream],
            multiline=True,
            min_len=60_000 if long else 20,
            max_len=90_000 if long else 400,
        )
    return bytes(out)


@dataclass
class DriverOutput:
    """What a driver's log (segments + active file, in order) holds, per stream."""

    reports: dict[str, IntegrityReport]
    lines: int
    partial_lines: int
    longest_line_message: int


def check_driver_output(data: bytes, fmt: str, counts: dict[str, int]) -> DriverOutput:
    """Decode cri / json-file lines per stream, rejoin them into the bytes the container
    wrote, and verify every event of each stream (tag checks the stream) exactly once."""
    lines = [line for line in data.split(b"\n") if line]
    partial = 0
    longest = 0
    if fmt == "cri":
        for line in lines:
            _ts, _stream, tag, msg = line.split(b" ", 3)
            partial += tag == b"P"
            longest = max(longest, len(msg))
        decoded = decode_cri(lines)
    else:
        for line in lines:
            log = json.loads(line)["log"]
            partial += not log.endswith("\n")
            longest = max(longest, len(log.encode("utf-8", "surrogateescape")))
        decoded = decode_json_file(lines)
    written: dict[str, bytearray] = {name: bytearray() for name in STREAM_TAGS}
    for name, message in decoded:
        written[name] += message + b"\n"
    reports = {
        name: verify(
            split_raw([bytes(written[name])], EVENT_DELIMITER),
            tag=STREAM_TAGS[name],
            expected=range(counts[name]),
        )
        for name in STREAM_TAGS
    }
    return DriverOutput(
        reports=reports, lines=len(lines), partial_lines=partial, longest_line_message=longest
    )


def stream_files(path: Path) -> list[Path]:
    """The closed segments of the log at `path`, oldest first, then its active file."""
    names = os.listdir(path.parent)
    segments = [path.parent / s.filename for s in segments_of(path.name, names)]
    return [*segments, *([path] if path.exists() else [])]
