"""A small tmpfs for disk-full tests (root only; the test is skipped with the reason
otherwise), and the free space of a directory as statvfs reports it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "8m") mounted at tmp_path/mnt, unmounted after."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to mount a {size} tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(d: Path) -> int:
    v = os.statvfs(d)
    return v.f_bavail * v.f_frsize
