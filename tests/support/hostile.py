"""What a hostile pod plants in its volume, and how tests check that nothing escaped.

A canary is a root-only file outside the volume: its bytes, mode and allocated blocks
must never change and its marker must never appear in a segment, a state file or a
response. The stream is read back the way a foreign reader of the files would (regular
files only, never through a symlink), independently of logvold's reader.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import zstandard

from logvold.core.layout import segments_of
from logvold.fileio.state import load_state, state_path

MARKER = b"CANARY-ROOT-ONLY-SECRET"


@dataclass(frozen=True)
class Canary:
    """A 0600 file outside every volume and what it must still be at the end."""

    path: Path
    data: bytes
    mode: int
    blocks: int

    @classmethod
    def make(cls, directory: Path, name: str = "secret", size: int = 64 * 1024) -> Canary:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        data = (MARKER + b" line of a file only root may read\n") * (size // 60 + 1)
        path.write_bytes(data)
        path.chmod(0o600)
        st = path.stat()
        return cls(path, data, stat.S_IMODE(st.st_mode), st.st_blocks)

    def assert_unchanged(self) -> None:
        st = self.path.lstat()
        assert stat.S_ISREG(st.st_mode), f"{self.path} was replaced"
        assert stat.S_IMODE(st.st_mode) == self.mode, f"{self.path} mode changed"
        assert st.st_blocks == self.blocks, f"{self.path} blocks changed (punched?)"
        assert self.path.read_bytes() == self.data, f"{self.path} bytes changed"


def plant(path: Path, kind: str, target: Path) -> None:
    """Put a `kind` (symlink | fifo | socket | directory) at `path`, replacing what is there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    elif kind == "directory":
        path.mkdir()
    else:
        raise ValueError(kind)


def plant_marker(directory: Path, base: str, intent: object) -> None:
    """Rewrite the step marker of `base`'s state file with any JSON value, as the pod that
    owns the volume can (the rest of the state stays as the rotator saved it)."""
    path = state_path(directory, base)
    tree = json.loads(path.read_bytes())
    tree["intent"] = intent
    tmp = path.with_name("planted.tmp")
    tmp.write_text(json.dumps(tree))
    tmp.replace(path)


def decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def regular_segments(directory: Path, base: str = "app.log") -> list[Path]:
    """The stream's segments that are regular files (a planted symlink is not read, and
    does not hide the compressed segment of the same stem)."""
    regular = [n for n in os.listdir(directory) if stat.S_ISREG((directory / n).lstat().st_mode)]
    return [directory / name.filename for name in segments_of(base, regular)]


def files_view(directory: Path, base: str = "app.log", *, via_state: bool) -> bytes:
    """The stream as its files hold it: every regular segment (decompressed), then the
    active file. `via_state`: from the committed offset the state file records (how
    logvold's readers place it); else the whole active file with its NUL bytes (holes,
    zeroed bytes) dropped, as any other reader of the files sees it."""
    parts = [decompressed(p) for p in regular_segments(directory, base)]
    active = directory / base
    if active.exists() and stat.S_ISREG(active.lstat().st_mode):
        data = active.read_bytes()
        if via_state:
            state = load_state(directory, base)
            st = active.stat()
            start = 0
            if state is not None and (state.device, state.inode) == (st.st_dev, st.st_ino):
                start = state.physical_committed
            parts.append(data[start:])
        else:
            parts.append(data.replace(b"\0", b""))
    return b"".join(parts)


def complete(data: bytes, delimiter: bytes) -> bytes:
    """`data` up to its last delimiter (a writer may be mid-event)."""
    end = data.rfind(delimiter)
    return data[: end + len(delimiter)] if end >= 0 else b""


def nul_bytes_in_segments(directory: Path, base: str = "app.log") -> int:
    return sum(decompressed(p).count(b"\0") for p in regular_segments(directory, base))


def marker_anywhere(directory: Path, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """Regular files under `directory` (segments decompressed, state files) holding the
    canary's marker: each one is a leak. `exclude`: names planted by the test itself."""
    found = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            p = Path(root) / name
            if name in exclude or not stat.S_ISREG(p.lstat().st_mode):
                continue
            try:
                data = decompressed(p)
            except (OSError, EOFError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile):
                data = p.read_bytes()
            if MARKER in data:
                found.append(str(p))
    return found
