"""Shared pieces of the rotator integration tests and benchmarks/rotator_crash.py:
stream infos, writer processes, and reading a stream back (segments + active file)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from logvold.core.layout import segments_of
from logvold.core.policy import LogPolicy
from logvold.core.streams import StreamInfo, StreamKey
from logvold.fileio.state import load_state

ROOT = Path(__file__).resolve().parents[2]


def make_info(directory: Path, base: str = "app.log", **policy: object) -> StreamInfo:
    return StreamInfo(
        key=StreamKey("default", "pod", base.removesuffix(".log")),
        directory=directory,
        base=base,
        policy=LogPolicy(**policy),  # type: ignore[arg-type]
        volume="logs",
    )


def start_writer(
    path: Path,
    *,
    mode: str = "append",
    count: int = 10**7,
    delimiter: str = "\\n\\n",
    rate: float = 0.0,
    max_chunk: int = 8192,
    seed: int = 1,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.writer",
            "--path",
            str(path),
            "--mode",
            mode,
            "--count",
            str(count),
            "--delimiter",
            delimiter,
            "--max-chunk",
            str(max_chunk),
            "--rate",
            str(rate),
            "--seed",
            str(seed),
            *extra,
        ],
        cwd=ROOT,
    )


def _decompressed(path: Path) -> bytes:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as r:
            return r.read()
    return path.read_bytes()


def stream_chunks(directory: Path, base: str = "app.log") -> Iterator[bytes]:
    """The stream as a reader sees it: every segment in order, then the active file from the
    committed physical offset (holes before it are never read)."""
    for name in segments_of(base, os.listdir(directory)):
        yield _decompressed(directory / name.filename)
    active = directory / base
    if not active.exists():
        return
    state = load_state(directory, base)
    st = active.stat()
    start = 0
    if state is not None and (state.device, state.inode) == (st.st_dev, st.st_ino):
        start = state.physical_committed
    with active.open("rb") as f:
        f.seek(start)
        while chunk := f.read(1 << 20):
            yield chunk


def whole_stream(directory: Path, base: str = "app.log", delimiter: bytes = b"\n\n") -> bytes:
    """All stream bytes up to the last delimiter (a writer may be mid-event)."""
    data = b"".join(stream_chunks(directory, base))
    end = data.rfind(delimiter)
    return data[: end + len(delimiter)] if end >= 0 else b""


def leftovers(directory: Path) -> list[str]:
    """Temporary files that must not survive a recovery."""
    return sorted(n for n in os.listdir(directory) if n.endswith((".tmp", ".trim")))
