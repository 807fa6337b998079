"""journalctl as a child process: which units a journal knows, and one query's output as chunks.

Always an argument list (never a shell); the child is killed and reaped however the caller stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

UNIT_CACHE_TTL_S = 10.0
"""How long a list of the journal's units stays fresh; units rarely appear, lookups are not free."""
UNIT_LOOKUP_TIMEOUT_S = 5.0
"""Longest wait for `journalctl --field=_SYSTEMD_UNIT` before treating the journal as absent."""
_UNIT_LIST_MAX_BYTES = 4 * 2**20
_STDERR_MAX_BYTES = 16 * 2**10
_CHUNK_BYTES = 64 * 2**10

_unit_cache: dict[str, tuple[float, frozenset[str] | None]] = {}


def journalctl_path() -> str | None:
    """The journalctl on PATH, or None on hosts without systemd's tools."""
    return shutil.which("journalctl")


def _child_env() -> dict[str, str]:
    # Plain, uncoloured, unpaged output in a stable locale.
    env = dict(os.environ)
    env.update({"SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "PAGER": "cat", "LC_ALL": "C.UTF-8"})
    return env


async def _read_capped(stream: asyncio.StreamReader, cap_bytes: int) -> bytes:
    """All up to EOF, keeping the first `cap_bytes`; draining the rest keeps the child going."""
    kept = bytearray()
    while chunk := await stream.read(_CHUNK_BYTES):
        if len(kept) < cap_bytes:
            kept += chunk[: cap_bytes - len(kept)]
    return bytes(kept)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    # Shielded so a cancelled caller still leaves no zombie behind.
    await asyncio.shield(proc.wait())


async def known_units(
    directory: str, *, timeout_s: float = UNIT_LOOKUP_TIMEOUT_S
) -> frozenset[str] | None:
    """Units with entries in the journal (`_SYSTEMD_UNIT` values); None if there is no journal.

    Cached per directory for UNIT_CACHE_TTL_S so a burst of queries runs journalctl once.
    """
    now = time.monotonic()
    cached = _unit_cache.get(directory)
    if cached is not None and now - cached[0] < UNIT_CACHE_TTL_S:
        return cached[1]
    units = await _list_units(directory, timeout_s)
    _unit_cache[directory] = (time.monotonic(), units)
    return units


def forget_units() -> None:
    """Drop cached unit lists (tests; a journal that just gained a unit)."""
    _unit_cache.clear()


async def _list_units(directory: str, timeout_s: float) -> frozenset[str] | None:
    program = journalctl_path()
    if program is None:
        return None
    args = [program, "--field=_SYSTEMD_UNIT"]
    if directory:
        args.append(f"--directory={directory}")
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=_child_env(),
        )
    except OSError as exc:
        log.warning("cannot run %s: %s", program, exc)
        return None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(max(timeout_s, 0.0)):
            output = await _read_capped(proc.stdout, _UNIT_LIST_MAX_BYTES)
            code = await proc.wait()
    except TimeoutError:
        log.warning("journalctl --field=_SYSTEMD_UNIT took over %.1fs: no journal", timeout_s)
        return None
    finally:
        await _reap(proc)
    if code != 0:
        return None
    lines = output.decode("utf-8", "replace").splitlines()
    return frozenset(line.strip() for line in lines if line.strip())


def is_known(service: str, units: frozenset[str]) -> bool:
    """Whether `service` names a unit with journal entries (`kubelet` or `kubelet.service`).

    Exact names, unlike the kubelet's substring test, so `let` does not match `kubelet.service`.
    """
    return service in units or f"{service}.service" in units


@dataclass
class JournalRun:
    """Exit status and stderr of a finished journalctl, for the caller to report."""

    returncode: int | None = None
    stderr: bytes = b""


async def stream_journal(args: Sequence[str], run: JournalRun) -> AsyncGenerator[bytes, None]:
    """Run `journalctl ARGS` and yield its stdout in chunks; fills `run` when it exits.

    Raises FileNotFoundError when journalctl is missing. If the consumer stops early (deadline,
    byte cap, client gone) the child is killed and reaped when this generator is closed.
    """
    program = journalctl_path()
    if program is None:
        raise FileNotFoundError("journalctl not found on PATH")
    proc = await asyncio.create_subprocess_exec(
        program,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(_read_capped(proc.stderr, _STDERR_MAX_BYTES))
    try:
        while chunk := await proc.stdout.read(_CHUNK_BYTES):
            yield chunk
        run.returncode = await proc.wait()
        run.stderr = await stderr_task
    finally:
        stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stderr_task
        await _reap(proc)
